//! Which entry of a port's table takes a request: the router's choice (`request::route`), and
//! every reason each other entry refused it (an explanation). One check serves both.

use std::{net::SocketAddr, ops::ControlFlow};

use http::{HeaderMap, Method, Uri};

use super::{Attached, RouteTable, matching::Mismatch};
use crate::gateway::http::host::{HostPattern, rank};

/// Why an entry does not take a request.
#[derive(Clone, Copy, Debug)]
pub enum Refusal<'t> {
    /// On a TLS connection: the entry is another HTTPS listener's than the one the server
    /// name picked.
    OtherTlsListener,
    /// Plain HTTP where listeners of different hostnames share the address: another listener's
    /// hostnames take the host better (the Gateway API's listener isolation).
    IsolatedListener,
    /// None of the listener's hostnames takes the host.
    ListenerHostname,
    /// None of the route's hostnames takes the host.
    RouteHostname,
    Match(Mismatch<'t>),
}

/// The entries of one port, and what of a request decides among them before its own match.
pub struct Candidates<'t, 'r> {
    /// Most specific first: the first that takes a request wins.
    pub entries: &'t [Attached],
    listener: Option<&'r str>,
    host: Option<&'r str>,
    /// With listener isolation: how well the best listener of the port takes the host.
    best: Option<usize>,
}

impl<'t, 'r> Candidates<'t, 'r> {
    /// The entries at `local`, for a request for `host`; on a TLS connection (`listener` set),
    /// only the routes of the listener its handshake picked are candidates.
    #[inline]
    pub fn at(
        table: &'t RouteTable,
        local: SocketAddr,
        listener: Option<&'r str>,
        host: Option<&'r str>,
    ) -> Option<Self> {
        let entries = table.listeners.get(&local)?;
        let best = match listener {
            None => table
                .isolated
                .get(&local)
                .and_then(|listeners| listeners.iter().filter_map(|h| rank(h, host)).max()),
            Some(_) => None,
        };
        Some(Self {
            entries,
            listener,
            host,
            best,
        })
    }

    /// Whether `entry` takes the request.
    #[inline]
    pub fn takes(&self, entry: &'t Attached, method: &Method, uri: &Uri, headers: &HeaderMap) -> bool {
        self.check(entry, method, uri, headers, |_| ControlFlow::Break(()))
            .is_continue()
    }

    /// Checks `entry` against the request, telling `refused` of each reason it refuses it,
    /// until `refused` says to stop.
    #[inline]
    pub fn check(
        &self,
        entry: &'t Attached,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        mut refused: impl FnMut(Refusal<'t>) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        let host_ok = |patterns: &[HostPattern]| {
            patterns.is_empty() || self.host.is_some_and(|h| patterns.iter().any(|p| p.matches(h)))
        };
        if self.listener.is_some_and(|id| *entry.listener != *id) {
            refused(Refusal::OtherTlsListener)?;
        }
        if self
            .best
            .is_some_and(|best| rank(&entry.listener_hostnames, self.host) != Some(best))
        {
            refused(Refusal::IsolatedListener)?;
        }
        if !host_ok(&entry.listener_hostnames) {
            refused(Refusal::ListenerHostname)?;
        }
        if !host_ok(&entry.route.hostnames) {
            refused(Refusal::RouteHostname)?;
        }
        match entry.request_match() {
            Some(request_match) => {
                request_match.check(method, uri, headers, |mismatch| refused(Refusal::Match(mismatch)))
            }
            None => ControlFlow::Continue(()),
        }
    }
}
