//! One verdict per case and proxy, from what the client got back and what the recording backend
//! read.

use std::fmt;

use super::{
    client::Conversation,
    corpus::{Case, Expect},
    recorder::{Event, UNREADABLE},
    strict::StrictRequest,
};

/// What a proxy made of a case, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// Answered with an error of its own (4xx), nothing of the bad message forwarded.
    Refused,
    /// Forwarded as clean, strictly readable requests, exactly those the client sent.
    Clean,
    /// Forwarded with a header that must have been dropped (hop-by-hop, named by `Connection`,
    /// an `h2c` upgrade).
    Leaked,
    /// Forwarded something a strict reader refuses, or made a message of bytes that are none:
    /// someone had to guess.
    Guessed,
    /// The proxy and the backend (or the client) disagree about where a message ended.
    Desync,
}

impl Verdict {
    pub const ALL: [Verdict; 5] = [
        Verdict::Refused,
        Verdict::Clean,
        Verdict::Leaked,
        Verdict::Guessed,
        Verdict::Desync,
    ];

    /// Whether it lets something through that it should not have.
    pub fn is_lenient(self) -> bool {
        matches!(self, Verdict::Leaked | Verdict::Guessed | Verdict::Desync)
    }

    /// Whether a proxy's verdict meets what the case expects.
    pub fn meets(self, expect: Expect) -> bool {
        match expect {
            Expect::Refuse => self == Verdict::Refused,
            Expect::Forward => self == Verdict::Clean,
            Expect::Either => matches!(self, Verdict::Refused | Verdict::Clean),
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Refused => "refused",
            Verdict::Clean => "clean",
            Verdict::Leaked => "leaked",
            Verdict::Guessed => "guessed",
            Verdict::Desync => "desync",
        })
    }
}

#[derive(Clone, Debug)]
pub struct Outcome {
    pub verdict: Verdict,
    pub detail: String,
}

/// Headers that belong to one hop whatever the client's `Connection` says, and the two halves
/// of an `h2c` upgrade.
pub const MUST_DROP: [&str; 5] = [
    "keep-alive",
    "proxy-connection",
    "te",
    "upgrade",
    "http2-settings",
];

/// Fields that must never arrive as trailers: a backend that merges trailers into the head would
/// take them for the message's own.
const FRAMING: [&str; 4] = ["content-length", "transfer-encoding", "host", "connection"];

fn outcome(verdict: Verdict, detail: impl Into<String>) -> Outcome {
    Outcome {
        verdict,
        detail: detail.into(),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The verdict for `case`, sent with `canary` (the target of the request that followed it, if
/// one did), given the client's `conversation` and the backend's `events`.
pub fn classify(case: &Case, canary: Option<&str>, conversation: &Conversation, events: &[Event]) -> Outcome {
    let requests: Vec<(u64, &StrictRequest)> = events
        .iter()
        .filter_map(|event| match event {
            Event::Request { serial, request, .. } => Some((*serial, request)),
            _ => None,
        })
        .collect();
    let is_canary = |request: &StrictRequest| canary.is_some_and(|c| request.target == c);
    let forwarded = requests.iter().filter(|(_, r)| !is_canary(r)).count();
    let canary_answered = conversation.answers.iter().any(|a| {
        canary.is_some_and(|c| {
            a.recorded
                .as_deref()
                .is_some_and(|r| r.ends_with(&format!(" {c}")))
        })
    });
    let refusal = conversation
        .answers
        .iter()
        .find(|a| a.recorded.is_none() && a.status >= 400);

    // Desync: a request the client never sent as one, or one the client sent swallowed.
    if let Some((_, smuggled)) = requests.iter().find(|(_, r)| r.target.contains("smuggled")) {
        return outcome(
            Verdict::Desync,
            format!(
                "a smuggled request reached the backend: {} {}",
                smuggled.method, smuggled.target
            ),
        );
    }
    if canary.is_some() {
        let swallowed = requests.iter().any(|(_, r)| contains(&r.body, b"__canary"))
            || events.iter().any(|event| match event {
                Event::Unreadable { bytes, .. } | Event::CutShort { bytes, .. } => {
                    contains(bytes, b"__canary") && !bytes.starts_with(b"GET /__canary")
                }
                Event::Request { .. } => false,
            });
        if swallowed {
            return outcome(
                Verdict::Desync,
                "the canary request became part of another message",
            );
        }
    }
    let answered: Vec<u64> = conversation
        .answers
        .iter()
        .filter_map(|a| a.recorded.as_deref())
        .filter(|r| *r != UNREADABLE)
        .filter_map(|r| r.split(' ').next()?.parse().ok())
        .collect();
    let read: Vec<u64> = requests.iter().map(|(serial, _)| *serial).collect();
    // An answer the client could not read as HTTP/1.x (an HTTP/0.9 one, bare body) is no
    // disagreement about where messages end: what was forwarded is judged below.
    let unreadable_answer = conversation.closed && !conversation.garbage.is_empty();
    if answered != read && !unreadable_answer {
        return outcome(
            Verdict::Desync,
            format!("the backend answered requests {read:?}, the client got the answers to {answered:?}"),
        );
    }
    if canary.is_some() && !conversation.closed && !canary_answered && refusal.is_none() && !case.incomplete {
        return outcome(
            Verdict::Desync,
            "the canary got no answer on an open connection: the proxy still reads an earlier message",
        );
    }

    // Guessed: what the backend could not read, or a message made of bytes that are none.
    if let Some(Event::Unreadable { reason, .. }) =
        events.iter().find(|e| matches!(e, Event::Unreadable { .. }))
    {
        return outcome(
            Verdict::Guessed,
            format!("the backend could not read what was forwarded: {reason}"),
        );
    }
    if case.expect == Expect::Refuse && forwarded > case.prefix {
        let (_, first) = requests[case.prefix.min(requests.len() - 1)];
        return outcome(
            Verdict::Guessed,
            format!(
                "forwarded what a strict server refuses, as {} {} ({} body bytes{})",
                first.method,
                first.target,
                first.body.len(),
                if first.chunked { ", chunked" } else { "" }
            ),
        );
    }

    if let Some(expected) = &case.body
        && let Some((_, first)) = requests.iter().filter(|(_, r)| !is_canary(r)).nth(case.prefix)
        && first.body != *expected
    {
        return outcome(
            Verdict::Guessed,
            format!(
                "forwarded a body of {} bytes where the message's is {} bytes: another framing was taken",
                first.body.len(),
                expected.len()
            ),
        );
    }
    if case.close && forwarded > case.prefix && canary_answered {
        return outcome(
            Verdict::Guessed,
            "kept the connection open after a message with two framings (RFC 9112 6.3 says close)",
        );
    }

    // Leaked: a header that must not have crossed.
    for (_, request) in &requests {
        if let Some((name, _)) = request
            .trailers
            .iter()
            .find(|(name, _)| FRAMING.contains(&name.as_str()))
        {
            return outcome(Verdict::Leaked, format!("a trailer {name} reached the backend"));
        }
        for (name, value) in request.headers.iter().chain(&request.trailers) {
            if case.drop.contains(name) || MUST_DROP.contains(&name.as_str()) {
                return outcome(Verdict::Leaked, format!("{name} reached the backend"));
            }
            if name == "connection" {
                let named = value
                    .split(|b| *b == b',')
                    .map(|t| String::from_utf8_lossy(t.trim_ascii()).to_ascii_lowercase())
                    .find(|t| !t.is_empty() && t != "close" && t != "keep-alive");
                if let Some(named) = named {
                    return outcome(
                        Verdict::Leaked,
                        format!("Connection: {named} reached the backend"),
                    );
                }
            }
        }
    }

    if let Some(refusal) = refusal
        && forwarded <= case.prefix
    {
        let reason = refusal
            .reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        let closed = if conversation.closed {
            "closed"
        } else {
            "kept open"
        };
        return outcome(Verdict::Refused, format!("{}{reason}, {closed}", refusal.status));
    }
    if case.incomplete && (forwarded > 0 || events.iter().any(|e| matches!(e, Event::CutShort { .. }))) {
        return outcome(Verdict::Clean, "forwarded as it arrived");
    }
    if case.incomplete && conversation.answers.is_empty() && !conversation.closed {
        return outcome(Verdict::Clean, "still waiting for the body");
    }
    if forwarded <= case.prefix && conversation.closed {
        return outcome(Verdict::Refused, "closed without an answer");
    }
    if forwarded == case.requests {
        let bodies: Vec<String> = requests
            .iter()
            .filter(|(_, r)| !is_canary(r))
            .map(|(_, r)| {
                format!(
                    "{} {} ({} B{})",
                    r.method,
                    r.target,
                    r.body.len(),
                    if r.chunked { " chunked" } else { "" }
                )
            })
            .collect();
        return outcome(Verdict::Clean, bodies.join("; "));
    }
    outcome(
        Verdict::Desync,
        format!(
            "the backend read {forwarded} requests where the client sent {}{}",
            case.requests,
            match refusal {
                Some(r) => format!(", then the proxy answered {}", r.status),
                None => String::new(),
            }
        ),
    )
}
