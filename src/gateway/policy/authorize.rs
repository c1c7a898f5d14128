//! Authorization: an ordered list of allow and deny rules over the client's IP (the one the
//! listener trusts), the method, the path and the caller's token claims. The first rule whose
//! conditions all hold decides; no rule holding, the default action does.

use std::{net::IpAddr, sync::Arc};

use http::Method;
use ipnet::IpNet;

use crate::gateway::http::path_match::PathMatcher;

/// What a rule reads of the caller's verified token.
pub trait Claims {
    /// The claim `name` holds `value`: equal to it, an element of it (a list), or a word of it
    /// (a space-separated `scope`).
    fn contains(&self, name: &str, value: &str) -> bool;
}

/// One rule, compiled. An empty list of a condition always holds.
#[derive(Debug)]
pub struct Rule {
    /// The rule's name, or `rule-<index>`: it names the decision in the access log.
    pub name: Arc<str>,
    pub allow: bool,
    pub client_cidrs: Vec<IpNet>,
    pub methods: Vec<Method>,
    pub paths: Vec<PathMatcher>,
    /// Each claim must hold one of its values.
    pub claims: Vec<(String, Vec<String>)>,
}

/// The request as rules see it.
pub struct Subject<'a> {
    pub client_ip: IpAddr,
    pub method: &'a Method,
    pub path: &'a str,
    pub claims: Option<&'a dyn Claims>,
}

impl Rule {
    fn holds(&self, subject: &Subject<'_>) -> bool {
        let ip = canonical(subject.client_ip);
        (self.client_cidrs.is_empty() || self.client_cidrs.iter().any(|c| c.contains(&ip)))
            && (self.methods.is_empty() || self.methods.contains(subject.method))
            && (self.paths.is_empty() || self.paths.iter().any(|p| p.matches(subject.path)))
            && self.claims.iter().all(|(name, values)| {
                subject
                    .claims
                    .is_some_and(|claims| values.iter().any(|v| claims.contains(name, v)))
            })
    }
}

/// An IPv4 client seen through an IPv6 socket (`::ffff:a.b.c.d`) is matched as IPv4, so that
/// `10.0.0.0/8` means what it says on a dual-stack listener.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// A policy's rules and its default.
#[derive(Debug)]
pub struct Authorizer {
    pub rules: Vec<Rule>,
    pub default_allow: bool,
}

/// The decision and what made it.
#[derive(Debug, PartialEq, Eq)]
pub struct Decision {
    pub allow: bool,
    /// The rule's name, or `None` for the default action.
    pub rule: Option<Arc<str>>,
}

impl Authorizer {
    pub fn decide(&self, subject: &Subject<'_>) -> Decision {
        match self.rules.iter().find(|rule| rule.holds(subject)) {
            Some(rule) => Decision {
                allow: rule.allow,
                rule: Some(rule.name.clone()),
            },
            None => Decision {
                allow: self.default_allow,
                rule: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Scopes(&'static str);

    impl Claims for Scopes {
        fn contains(&self, name: &str, value: &str) -> bool {
            name == "scope" && self.0.split(' ').any(|s| s == value)
        }
    }

    fn rule(name: &str, allow: bool) -> Rule {
        Rule {
            name: name.into(),
            allow,
            client_cidrs: vec![],
            methods: vec![],
            paths: vec![],
            claims: vec![],
        }
    }

    fn subject<'a>(
        ip: &str,
        method: &'a Method,
        path: &'a str,
        claims: Option<&'a dyn Claims>,
    ) -> Subject<'a> {
        Subject {
            client_ip: ip.parse().unwrap(),
            method,
            path,
            claims,
        }
    }

    #[test]
    fn the_first_rule_that_holds_decides() {
        let authorizer = Authorizer {
            rules: vec![
                Rule {
                    client_cidrs: vec!["192.0.2.0/24".parse().unwrap()],
                    ..rule("blocked-range", false)
                },
                Rule {
                    methods: vec![Method::GET],
                    paths: vec![PathMatcher::Prefix("/api/orders".into())],
                    ..rule("read-orders", true)
                },
                Rule {
                    methods: vec![Method::POST],
                    claims: vec![("scope".into(), vec!["orders:write".into()])],
                    ..rule("write-orders", true)
                },
            ],
            default_allow: false,
        };
        let (get, post) = (Method::GET, Method::POST);
        let writer = Scopes("openid orders:write");
        let reader = Scopes("openid orders:read");
        let decide = |s: Subject<'_>| authorizer.decide(&s);
        let named = |allow: bool, rule: &str| Decision {
            allow,
            rule: Some(rule.into()),
        };
        assert_eq!(
            decide(subject("10.0.0.1", &get, "/api/orders/7", None)),
            named(true, "read-orders")
        );
        assert_eq!(
            decide(subject("192.0.2.9", &get, "/api/orders/7", None)),
            named(false, "blocked-range")
        );
        assert_eq!(
            decide(subject("::ffff:192.0.2.9", &get, "/api/orders", None)),
            named(false, "blocked-range"),
            "an IPv4-mapped address is matched as IPv4"
        );
        assert_eq!(
            decide(subject("10.0.0.1", &post, "/api/orders", Some(&writer))),
            named(true, "write-orders")
        );
        let default = Decision {
            allow: false,
            rule: None,
        };
        assert_eq!(
            decide(subject("10.0.0.1", &post, "/api/orders", Some(&reader))),
            default
        );
        assert_eq!(
            decide(subject("10.0.0.1", &post, "/api/orders", None)),
            default,
            "no claims, no claim rule"
        );
        assert_eq!(
            decide(subject("10.0.0.1", &get, "/api/ordersx", None)),
            default,
            "prefixes end at a /"
        );
    }
}
