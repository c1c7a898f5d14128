//! The controller's errors: each names what failed, and which metric label and Event reason it
//! is reported under.

/// A reconciliation failed; the object is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{object} has no {what} (the API server always sets it)")]
    MissingMetadata { object: String, what: &'static str },
    #[error("could not read {what}: {source}")]
    Read {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("could not apply {what}: {source}")]
    Apply {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("could not update the status of {what}: {source}")]
    Status {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("{object} could not be read as a {kind}: {reason}")]
    Malformed {
        object: String,
        kind: &'static str,
        reason: String,
    },
}

impl Error {
    /// The `error` label of `microgate_reconcile_failures_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::MissingMetadata { .. } => "missing_metadata",
            Error::Read { .. } => "read",
            Error::Apply { .. } => "apply",
            Error::Status { .. } => "status",
            Error::Malformed { .. } => "malformed",
        }
    }

    /// The reason of the Warning Event that reports it.
    pub fn event_reason(&self) -> &'static str {
        match self {
            Error::MissingMetadata { .. } => "MissingMetadata",
            Error::Read { .. } => "ReadFailed",
            Error::Apply { .. } => "ApplyFailed",
            Error::Status { .. } => "StatusUpdateFailed",
            Error::Malformed { .. } => "Malformed",
        }
    }

    /// The message of a kube API error alone (the API server's words), for conditions and
    /// Events, where the object's name is already known.
    pub fn api_message(&self) -> String {
        let source = match self {
            Error::Read { source, .. } | Error::Apply { source, .. } | Error::Status { source, .. } => source,
            other => return other.to_string(),
        };
        match source {
            kube::Error::Api(status) => status.message.clone(),
            other => other.to_string(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
