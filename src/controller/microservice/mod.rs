//! The Microservice reconciler: one function from a Microservice to its Deployment, Service and
//! status.
//!
//! Each pass applies the desired Deployment and Service with server-side apply (field manager
//! `microgate`, forced, so edits to our fields are taken back: drift repair), then computes the
//! status and writes it only if it changed. Deletion needs no finalizer: the owner references
//! let the garbage collector remove the Deployment and Service.

pub mod build;
pub mod status;

use std::sync::Arc;

use k8s_openapi::{
    api::{apps::v1::Deployment, core::v1::Service},
    jiff::Timestamp,
};
use kube::{
    Api, Resource, ResourceExt,
    api::{Patch, PatchParams},
    core::DeserializeGuard,
    runtime::{
        controller::Action,
        events::{Event, EventType},
    },
};
use serde_json::json;

use super::{
    Context,
    context::failure_key,
    error::{Error, Result},
};
use crate::api::{FIELD_MANAGER, Microservice, MicroserviceStatus};

/// How often an unchanged Microservice is looked at anyway, as a safety net for missed events.
const RESYNC: std::time::Duration = std::time::Duration::from_secs(600);

/// Reconciles one Microservice, or reports one the Rust types could not read.
pub async fn reconcile(guarded: Arc<DeserializeGuard<Microservice>>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.start("Microservice");
    match &guarded.0 {
        Ok(ms) => reconcile_valid(ms, &ctx).await,
        Err(invalid) => Err(Error::Malformed {
            object: format!(
                "{}/{}",
                guarded.namespace().unwrap_or_default(),
                guarded.name_any()
            ),
            kind: "Microservice",
            reason: invalid.error.clone(),
        }),
    }
}

async fn reconcile_valid(ms: &Microservice, ctx: &Context) -> Result<Action> {
    let name = ms.name_any();
    let namespace = ms.namespace().ok_or_else(|| missing(&name, "namespace"))?;
    let owner = ms
        .controller_owner_ref(&())
        .ok_or_else(|| missing(&name, "uid"))?;
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &namespace);
    let object = format!("{namespace}/{name}");

    let before = deployments.get_opt(&name).await.map_err(|source| Error::Read {
        what: format!("Deployment {object}"),
        source,
    })?;
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let applied = async {
        let deployment = deployments
            .patch(
                &name,
                &params,
                &Patch::Apply(build::deployment(ms, &name, &owner)),
            )
            .await
            .map_err(|source| Error::Apply {
                what: format!("Deployment {object}"),
                source,
            })?;
        services
            .patch(&name, &params, &Patch::Apply(build::service(ms, &name, &owner)))
            .await
            .map_err(|source| Error::Apply {
                what: format!("Service {object}"),
                source,
            })?;
        Ok::<_, Error>(deployment)
    }
    .await;

    let (deployment, apply_error) = match &applied {
        Ok(deployment) => (Some(deployment), None),
        Err(error) => (before.as_ref(), Some(error.api_message())),
    };
    let status = status::compute(ms, deployment, apply_error.as_deref(), Timestamp::now());
    if ms.status.as_ref() != Some(&status) {
        let api: Api<Microservice> = Api::namespaced(ctx.client.clone(), &namespace);
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(status_patch(&status)),
        )
        .await
        .map_err(|source| Error::Status {
            what: format!("Microservice {object}"),
            source,
        })?;
    }

    let applied = match applied {
        Ok(applied) => applied,
        Err(error) => {
            publish(
                ms,
                ctx,
                EventType::Warning,
                error.event_reason(),
                error.to_string(),
            )
            .await;
            return Err(error);
        }
    };
    publish_changes(ms, before.as_ref(), &applied, ctx).await;
    ctx.succeeded(&failure_key(ms));
    Ok(Action::requeue(RESYNC))
}

/// The status this reconciler owns, as a merge patch. `endpoints` and `readyEndpoints` are left
/// out: the endpoint publisher writes them, and this pass's copy of them may be older.
fn status_patch(status: &MicroserviceStatus) -> serde_json::Value {
    json!({"status": {
        "observedGeneration": status.observed_generation,
        "replicas": status.replicas,
        "readyReplicas": status.ready_replicas,
        "ready": status.ready,
        "selector": status.selector,
        "conditions": status.conditions,
    }})
}

/// Tells people, through Events on the Microservice, what this pass changed.
async fn publish_changes(ms: &Microservice, before: Option<&Deployment>, after: &Deployment, ctx: &Context) {
    let (reason, note) = match before {
        None => (
            "Created",
            format!("created Deployment and Service {}", ms.name_any()),
        ),
        Some(before) if before.metadata.generation != after.metadata.generation => {
            let spec_changed =
                ms.status.as_ref().and_then(|s| s.observed_generation) != ms.metadata.generation;
            if spec_changed {
                (
                    "Updated",
                    format!(
                        "updated Deployment {} to generation {:?} of the spec",
                        ms.name_any(),
                        ms.metadata.generation
                    ),
                )
            } else {
                (
                    "DriftCorrected",
                    format!(
                        "Deployment {} was changed outside microgate; its spec is restored",
                        ms.name_any()
                    ),
                )
            }
        }
        Some(_) => return,
    };
    publish(ms, ctx, EventType::Normal, reason, note).await;
}

async fn publish(ms: &Microservice, ctx: &Context, type_: EventType, reason: &str, note: String) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &ms.object_ref(&())).await {
        tracing::warn!(microservice = %ms.name_any(), %error, "could not publish an event");
    }
}

fn missing(name: &str, what: &'static str) -> Error {
    Error::MissingMetadata {
        object: name.to_owned(),
        what,
    }
}

/// A failed pass: count it, log it, and retry with exponential backoff.
pub fn error_policy(
    guarded: Arc<DeserializeGuard<Microservice>>,
    error: &Error,
    ctx: Arc<Context>,
) -> Action {
    let labels = crate::telemetry::ErrorLabels {
        kind: "Microservice",
        error: error.metric_label(),
    };
    ctx.metrics.failures.get_or_create(&labels).inc();
    let (name, namespace) = (guarded.name_any(), guarded.namespace().unwrap_or_default());
    tracing::warn!(%name, %namespace, %error, "Microservice reconcile failed");
    Action::requeue(ctx.backoff_after_failure(format!("Microservice/{namespace}/{name}")))
}
