//! What a running gateway shows of itself on the admin port: the registry of the endpoints it
//! balances over ([`registry`]: a JSON document with a version, a blocking query and a stream of
//! Server-Sent Events), the whole live route table ([`config`]) and which route a request takes
//! and why ([`explain`]). [`admin`] serves them to the clients [`access`] admits.
//!
//! [`Live`] is what the gateway shares with them: its route table, and a version that moves on
//! whenever what the registry shows changes. Nothing polls: the gateway tells [`Live`] when it
//! swaps tables, the balancer when it ejects an endpoint, discovery when a Pod changes, and a
//! timer set for the end of the earliest ejection says when that one ends.

pub mod access;
pub mod admin;
pub mod config;
pub mod explain;
pub mod offline;
pub mod registry;

use std::{sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use tokio::sync::{Notify, watch};

use super::{balance::clock_us, table::RouteTable};
use crate::discovery::Registry;

/// The gateway's live route table and the version of what the registry API shows. Cheap to
/// clone; clones share everything.
#[derive(Clone, Debug)]
pub struct Live {
    table: Arc<ArcSwap<RouteTable>>,
    registry: Registry,
    swapped: Arc<Notify>,
    ejections: Arc<Notify>,
    version: Arc<watch::Sender<u64>>,
}

impl Live {
    /// An empty table, at version 1, following `registry`'s changes once [`Live::follow`] runs.
    pub fn new(registry: Registry) -> Self {
        Self {
            table: Arc::new(ArcSwap::from_pointee(RouteTable::default())),
            registry,
            swapped: Arc::new(Notify::new()),
            ejections: Arc::new(Notify::new()),
            version: Arc::new(watch::Sender::new(1)),
        }
    }

    /// The table the gateway serves (it stores each new one here).
    pub fn table(&self) -> &Arc<ArcSwap<RouteTable>> {
        &self.table
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Says that the gateway has just swapped in a new table.
    pub fn swapped(&self) {
        self.swapped.notify_one();
    }

    /// What the balancer tells of each ejection (see `TableBuilder::signal_ejections`).
    pub fn ejections(&self) -> Arc<Notify> {
        self.ejections.clone()
    }

    /// The version of what the registry API shows now.
    pub fn version(&self) -> u64 {
        *self.version.borrow()
    }

    /// Wakes on every new version.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Turns every change into a new version, for as long as the gateway runs: a table swap, a
    /// Pod's change in the registry (whose readiness the registry shows before the next table
    /// does), an ejection, and the end of one.
    pub async fn follow(&self) {
        let mut registry = self.registry.subscribe();
        loop {
            let ejection_ends = earliest_ejection_end(&self.table.load());
            let ejection_ended = async {
                match ejection_ends {
                    Some(after) => tokio::time::sleep(after).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = registry.changed() => if changed.is_err() { return },
                () = self.swapped.notified() => {}
                () = self.ejections.notified() => {}
                () = ejection_ended => {}
            }
            self.version.send_modify(|version| *version += 1);
        }
    }
}

/// How long until the first of the table's current ejections ends, if any endpoint is ejected.
fn earliest_ejection_end(table: &RouteTable) -> Option<Duration> {
    let now = clock_us();
    table
        .endpoints()
        .map(|e| e.ejected_until_us())
        .filter(|until| *until > now)
        .min()
        // A millisecond late rather than early: woken early, the endpoint still looks ejected.
        .map(|until| Duration::from_micros(until - now) + Duration::from_millis(1))
}
