//! Authorization of inbound requests, with Istio's semantics: any matching DENY policy
//! denies; then, when ALLOW policies apply, one of their rules must match; with none, the
//! request is allowed.
//!
//! The policies are static data meshc lays out per workload (patterns, address blocks as
//! masks); this module only evaluates them. A rule is `from` AND `to` AND every `when`;
//! within a field, values are ORed and exclusions ANDed, and an attribute the request does not
//! carry (a peer identity without mutual TLS, say) matches no value and no exclusion.

use std::net::IpAddr;

use crate::head::RequestHead;

/// Istio's string patterns.
#[derive(Debug)]
pub enum Pat {
    /// Equal.
    Exact(&'static str),
    /// Starts with.
    Prefix(&'static str),
    /// Ends with.
    Suffix(&'static str),
    /// Anything present.
    Any,
    /// A path template's segments: `{*}` is one segment, `{**}` (last) the rest.
    Template(&'static [&'static str]),
}

impl Pat {
    fn test(&self, value: &str) -> bool {
        match self {
            Pat::Exact(it) => value == *it,
            Pat::Prefix(it) => value.starts_with(it),
            Pat::Suffix(it) => value.ends_with(it),
            Pat::Any => true,
            Pat::Template(segments) => template_matches(segments, value),
        }
    }
}

fn template_matches(segments: &[&str], path: &str) -> bool {
    let Some(rest) = path.strip_prefix('/') else { return false };
    let mut parts = rest.split('/');
    for (index, segment) in segments.iter().enumerate() {
        let part = parts.next();
        match *segment {
            "{**}" => return index + 1 == segments.len() && part.is_some(),
            "{*}" => {
                if part.is_none_or(str::is_empty) {
                    return false;
                }
            }
            literal => {
                if part != Some(literal) {
                    return false;
                }
            }
        }
    }
    parts.next().is_none()
}

/// An address block: the network and its mask, IPv4 as the low 32 bits.
#[derive(Debug)]
pub struct Cidr {
    /// Whether it is an IPv6 block.
    pub v6: bool,
    /// The network address, host bits clear.
    pub network: u128,
    /// The prefix as a mask.
    pub mask: u128,
}

impl Cidr {
    fn contains(&self, ip: IpAddr) -> bool {
        let (v6, bits) = match ip {
            IpAddr::V4(it) => match self.v6 {
                // An IPv4 peer on a dual-stack socket shows as IPv4-mapped IPv6; compare it as IPv4.
                true => (true, u128::from(it.to_ipv6_mapped())),
                false => (false, u128::from(u32::from(it))),
            },
            IpAddr::V6(it) => match (self.v6, it.to_ipv4_mapped()) {
                (false, Some(v4)) => (false, u128::from(u32::from(v4))),
                _ => (true, u128::from(it)),
            },
        };
        v6 == self.v6 && bits & self.mask == self.network
    }
}

/// Who may call.
#[derive(Debug)]
pub struct Source {
    /// Peer identities.
    pub principals: &'static [Pat],
    /// Peer identities excluded.
    pub not_principals: &'static [Pat],
    /// Peer namespaces.
    pub namespaces: &'static [Pat],
    /// Peer namespaces excluded.
    pub not_namespaces: &'static [Pat],
    /// Peer addresses.
    pub ip_blocks: &'static [Cidr],
    /// Peer addresses excluded.
    pub not_ip_blocks: &'static [Cidr],
    /// Original client addresses (the peer's, with no trusted proxy in front).
    pub remote_ip_blocks: &'static [Cidr],
    /// Original client addresses excluded.
    pub not_remote_ip_blocks: &'static [Cidr],
}

/// What may be called.
#[derive(Debug)]
pub struct Operation {
    /// Hosts, lower-case, matched with and without the port.
    pub hosts: &'static [Pat],
    /// Hosts excluded.
    pub not_hosts: &'static [Pat],
    /// Methods.
    pub methods: &'static [Pat],
    /// Methods excluded.
    pub not_methods: &'static [Pat],
    /// Paths.
    pub paths: &'static [Pat],
    /// Paths excluded.
    pub not_paths: &'static [Pat],
    /// Application ports.
    pub ports: &'static [u16],
    /// Application ports excluded.
    pub not_ports: &'static [u16],
}

/// The attribute a `when` condition tests.
#[derive(Debug)]
pub enum Key {
    /// `request.headers[name]`, lower-case.
    RequestHeader(&'static str),
    /// `source.ip`.
    SourceIp,
    /// `remote.ip`.
    RemoteIp,
    /// `source.namespace`.
    SourceNamespace,
    /// `source.principal`.
    SourcePrincipal,
    /// `destination.port`.
    DestinationPort,
    /// `destination.ip`: the address the caller connected to.
    DestinationIp,
    /// `connection.sni`: the server name of a TLS connection.
    ConnectionSni,
}

/// A `when` condition: for address keys the blocks apply, for the others the patterns.
#[derive(Debug)]
pub struct Condition {
    /// The attribute.
    pub key: Key,
    /// Values, ORed.
    pub values: &'static [Pat],
    /// Values excluded.
    pub not_values: &'static [Pat],
    /// Address values, ORed.
    pub blocks: &'static [Cidr],
    /// Address values excluded.
    pub not_blocks: &'static [Cidr],
}

/// One rule.
#[derive(Debug)]
pub struct Rule {
    /// Sources, ORed; none means any.
    pub from: &'static [Source],
    /// Operations, ORed; none means any.
    pub to: &'static [Operation],
    /// Conditions, ANDed.
    pub when: &'static [Condition],
}

/// One policy: its rules, ORed.
#[derive(Debug)]
pub struct Policy {
    /// Its name, for logs and the admin endpoint.
    pub name: &'static str,
    /// The rules; an ALLOW policy without rules allows nothing.
    pub rules: &'static [Rule],
}

/// A workload's policies.
#[derive(Debug)]
pub struct Policies {
    /// DENY policies.
    pub deny: &'static [Policy],
    /// ALLOW policies.
    pub allow: &'static [Policy],
}

impl Policies {
    /// No policy: everything is allowed.
    pub const NONE: Policies = Policies { deny: &[], allow: &[] };

    /// Istio's verdict on `request`.
    pub fn authorize(&self, request: &Request<'_, '_>) -> Verdict {
        for policy in self.deny {
            if let Some(rule) = policy.rules.iter().position(|it| it.matches(request, true)) {
                return Verdict { allowed: false, policy: Some(policy.name), rule: Some(rule + 1) };
            }
        }
        if self.allow.is_empty() {
            return Verdict { allowed: true, policy: None, rule: None };
        }
        for policy in self.allow {
            if let Some(rule) = policy.rules.iter().position(|it| it.matches(request, false)) {
                return Verdict { allowed: true, policy: Some(policy.name), rule: Some(rule + 1) };
            }
        }
        Verdict { allowed: false, policy: None, rule: None }
    }
}

/// A request as authorization sees it.
#[derive(Debug)]
pub struct Request<'h, 'a> {
    /// The request head; `None` for a TCP connection, where HTTP-only fields (hosts,
    /// methods, paths, request headers) make an ALLOW rule match nothing and are ignored in a
    /// DENY rule, as Istio applies policies to TCP traffic.
    pub head: Option<&'h RequestHead<'a>>,
    /// The peer's address.
    pub peer: Option<IpAddr>,
    /// The peer's identity, `<trust-domain>/ns/<ns>/sa/<sa>`, when mutual TLS proved it.
    pub principal: Option<&'h str>,
    /// The application port the request is for.
    pub port: u16,
    /// The address the caller connected to.
    pub local: Option<IpAddr>,
    /// The server name the caller asked for in its TLS handshake.
    pub sni: Option<&'h str>,
    /// For an RPC request (Bolt, Dubbo; `head` is `None`), its method, which a rule's
    /// `methods` match; its other HTTP-only fields apply as for TCP.
    pub rpc_method: Option<&'h str>,
}

impl Request<'_, '_> {
    /// The peer's namespace, from its identity.
    fn namespace(&self) -> Option<&str> {
        let rest = self.principal?.split_once("/ns/")?.1;
        Some(rest.split_once('/').map_or(rest, |it| it.0))
    }
}

/// A decision, and what made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the request may go on.
    pub allowed: bool,
    /// The policy that decided, if one did.
    pub policy: Option<&'static str>,
    /// The deciding rule's number (1-based).
    pub rule: Option<usize>,
}

/// Istio's field semantics: with values, the attribute must be known and match one; with
/// exclusions, a known attribute must match none.
fn field<P, V: Copy>(values: &[P], not_values: &[P], attribute: Option<V>, test: impl Fn(&P, V) -> bool) -> bool {
    let included = values.is_empty() || attribute.is_some_and(|a| values.iter().any(|p| test(p, a)));
    let excluded = attribute.is_some_and(|a| not_values.iter().any(|p| test(p, a)));
    included && !excluded
}

impl Rule {
    fn matches(&self, request: &Request<'_, '_>, deny: bool) -> bool {
        let principal = request.principal;
        let namespace = request.namespace();
        let from = self.from.is_empty()
            || self.from.iter().any(|source| {
                field(source.principals, source.not_principals, principal, |p, v| p.test(v))
                    && field(source.namespaces, source.not_namespaces, namespace, |p, v| p.test(v))
                    && field(source.ip_blocks, source.not_ip_blocks, request.peer, |b, ip| b.contains(ip))
                    && field(source.remote_ip_blocks, source.not_remote_ip_blocks, request.peer, |b, ip| b.contains(ip))
            });
        if !from {
            return false;
        }
        let to = self.to.is_empty()
            || self.to.iter().any(|op| {
                let http = match request.head {
                    Some(head) => {
                        let host = head.authority();
                        field(op.hosts, op.not_hosts, Some(host), |p, host| p.test(host) || p.test(crate::proxy::without_port(host)))
                            && field(op.methods, op.not_methods, Some(head.method()), |p, v| p.test(v))
                            && field(op.paths, op.not_paths, Some(head.path()), |p, v| p.test(v))
                    }
                    None => {
                        // An RPC request has a method; hosts and paths are HTTP's alone.
                        let methods = match request.rpc_method {
                            Some(method) => field(op.methods, op.not_methods, Some(method), |p, v| p.test(v)),
                            None => deny || op.methods.is_empty() && op.not_methods.is_empty(),
                        };
                        let uses_http = [op.hosts, op.not_hosts, op.paths, op.not_paths].iter().any(|it| !it.is_empty());
                        methods && (deny || !uses_http)
                    }
                };
                http && field(op.ports, op.not_ports, Some(request.port), |a, b| *a == b)
            });
        to && self.when.iter().all(|condition| condition.holds(request, principal, namespace, deny))
    }
}

impl Condition {
    fn holds(&self, request: &Request<'_, '_>, principal: Option<&str>, namespace: Option<&str>, deny: bool) -> bool {
        match &self.key {
            Key::SourceIp | Key::RemoteIp => field(self.blocks, self.not_blocks, request.peer, |b, ip| b.contains(ip)),
            Key::RequestHeader(name) => match request.head {
                Some(head) => {
                    let value = head.header(name);
                    field(self.values, self.not_values, value.as_deref(), |p, v| p.test(v))
                }
                None => deny,
            },
            Key::SourceNamespace => field(self.values, self.not_values, namespace, |p, v| p.test(v)),
            Key::SourcePrincipal => field(self.values, self.not_values, principal, |p, v| p.test(v)),
            Key::DestinationPort => {
                let port = request.port.to_string();
                field(self.values, self.not_values, Some(port.as_str()), |p, v| p.test(v))
            }
            Key::DestinationIp => field(self.blocks, self.not_blocks, request.local, |b, ip| b.contains(ip)),
            Key::ConnectionSni => field(self.values, self.not_values, request.sni, |p, v| p.test(v)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(text: &str, prefix: u32) -> Cidr {
        let ip: std::net::Ipv4Addr = text.parse().expect("IPv4");
        let mask = u128::from(u32::MAX.checked_shl(32 - prefix).unwrap_or(0));
        Cidr { v6: false, network: u128::from(u32::from(ip)) & mask, mask }
    }

    const ANY_SOURCE: Source = Source {
        principals: &[],
        not_principals: &[],
        namespaces: &[],
        not_namespaces: &[],
        ip_blocks: &[],
        not_ip_blocks: &[],
        remote_ip_blocks: &[],
        not_remote_ip_blocks: &[],
    };
    const ANY_OPERATION: Operation =
        Operation { hosts: &[], not_hosts: &[], methods: &[], not_methods: &[], paths: &[], not_paths: &[], ports: &[], not_ports: &[] };

    fn verdict(policies: &Policies, method: &str, path: &str, peer: &str, principal: Option<&str>) -> Verdict {
        let headers = http::HeaderMap::new();
        let head = RequestHead::from_parts(method, "ratings:9080", path, None, &headers);
        let request =
            Request { head: Some(&head), peer: peer.parse().ok(), principal, port: 9080, local: None, sni: None, rpc_method: None };
        policies.authorize(&request)
    }

    #[test]
    fn deny_comes_first_then_allow_and_no_allow_allows() {
        static GET_ONLY: [Operation; 1] = [Operation { methods: &[Pat::Exact("GET")], ..ANY_OPERATION }];
        static ADMIN: [Operation; 1] = [Operation { paths: &[Pat::Prefix("/admin/")], ..ANY_OPERATION }];
        static ALLOW: [Policy; 1] = [Policy { name: "reads", rules: &[Rule { from: &[], to: &GET_ONLY, when: &[] }] }];
        static DENY: [Policy; 1] = [Policy { name: "no-admin", rules: &[Rule { from: &[], to: &ADMIN, when: &[] }] }];
        let none = Policies::NONE;
        assert!(verdict(&none, "DELETE", "/x", "10.0.0.1", None).allowed);
        let policies = Policies { deny: &DENY, allow: &ALLOW };
        assert_eq!(verdict(&policies, "GET", "/x", "10.0.0.1", None), Verdict { allowed: true, policy: Some("reads"), rule: Some(1) });
        assert_eq!(verdict(&policies, "POST", "/x", "10.0.0.1", None), Verdict { allowed: false, policy: None, rule: None });
        assert_eq!(
            verdict(&policies, "GET", "/admin/users", "10.0.0.1", None),
            Verdict { allowed: false, policy: Some("no-admin"), rule: Some(1) }
        );
        // An ALLOW policy with no rules allows nothing.
        static EMPTY: [Policy; 1] = [Policy { name: "nothing", rules: &[] }];
        assert!(!verdict(&Policies { deny: &[], allow: &EMPTY }, "GET", "/", "10.0.0.1", None).allowed);
    }

    #[test]
    fn a_tcp_connection_meets_http_fields_as_istio_says() {
        static GET_ONLY: [Operation; 1] = [Operation { methods: &[Pat::Exact("GET")], ..ANY_OPERATION }];
        static ADMIN: [Operation; 1] = [Operation { paths: &[Pat::Prefix("/admin/")], ..ANY_OPERATION }];
        static PORT: [Operation; 1] = [Operation { ports: &[9080], ..ANY_OPERATION }];
        let connection =
            Request { head: None, peer: "10.0.0.1".parse().ok(), principal: None, port: 9080, local: None, sni: None, rpc_method: None };
        // An ALLOW rule on HTTP fields matches no connection; one on the port does.
        static ALLOW_GET: [Policy; 1] = [Policy { name: "reads", rules: &[Rule { from: &[], to: &GET_ONLY, when: &[] }] }];
        assert!(!Policies { deny: &[], allow: &ALLOW_GET }.authorize(&connection).allowed);
        static ALLOW_PORT: [Policy; 1] = [Policy { name: "port", rules: &[Rule { from: &[], to: &PORT, when: &[] }] }];
        assert!(Policies { deny: &[], allow: &ALLOW_PORT }.authorize(&connection).allowed);
        // A DENY rule's HTTP fields are ignored: it denies every connection it otherwise fits.
        static DENY_ADMIN: [Policy; 1] = [Policy { name: "no-admin", rules: &[Rule { from: &[], to: &ADMIN, when: &[] }] }];
        let verdict = Policies { deny: &DENY_ADMIN, allow: &[] }.authorize(&connection);
        assert_eq!(verdict, Verdict { allowed: false, policy: Some("no-admin"), rule: Some(1) });
    }

    #[test]
    fn an_rpc_call_meets_methods_but_not_hosts_or_paths() {
        static RESERVE: [Operation; 1] = [Operation { methods: &[Pat::Prefix("reserve")], ..ANY_OPERATION }];
        static ADMIN: [Operation; 1] = [Operation { paths: &[Pat::Prefix("/admin/")], ..ANY_OPERATION }];
        let call = |method| Request {
            head: None,
            peer: "10.0.0.1".parse().ok(),
            principal: None,
            port: 12200,
            local: None,
            sni: None,
            rpc_method: Some(method),
        };
        // A DENY rule on methods denies the RPC methods it names, and only those.
        static DENY_RESERVE: [Policy; 1] = [Policy { name: "no-reserve", rules: &[Rule { from: &[], to: &RESERVE, when: &[] }] }];
        let deny = Policies { deny: &DENY_RESERVE, allow: &[] };
        assert!(!deny.authorize(&call("reserveStock")).allowed);
        assert!(deny.authorize(&call("checkStock")).allowed);
        // An ALLOW rule on methods allows them; one on paths matches no RPC call.
        static ALLOW_RESERVE: [Policy; 1] = [Policy { name: "reserve", rules: &[Rule { from: &[], to: &RESERVE, when: &[] }] }];
        let allow = Policies { deny: &[], allow: &ALLOW_RESERVE };
        assert!(allow.authorize(&call("reserveStock")).allowed);
        assert!(!allow.authorize(&call("checkStock")).allowed);
        static ALLOW_ADMIN: [Policy; 1] = [Policy { name: "admin", rules: &[Rule { from: &[], to: &ADMIN, when: &[] }] }];
        assert!(!Policies { deny: &[], allow: &ALLOW_ADMIN }.authorize(&call("checkStock")).allowed);
    }

    #[test]
    fn sources_match_addresses_and_identities_only_when_known() {
        static LOCAL: [Cidr; 1] = [Cidr { v6: false, network: 0x0a00_0000, mask: 0xff00_0000 }];
        static FROM_LOCAL: [Source; 1] = [Source { ip_blocks: &LOCAL, ..ANY_SOURCE }];
        static FROM_REVIEWS: [Source; 1] = [Source { principals: &[Pat::Suffix("/sa/reviews")], ..ANY_SOURCE }];
        static NOT_REVIEWS: [Source; 1] = [Source { not_principals: &[Pat::Suffix("/sa/reviews")], ..ANY_SOURCE }];
        let allow = |from: &'static [Source]| Policies {
            deny: &[],
            allow: Box::leak(Box::new([Policy { name: "p", rules: Box::leak(Box::new([Rule { from, to: &[], when: &[] }])) }])),
        };
        assert_eq!(LOCAL[0].network, v4("10.0.0.0", 8).network);
        assert!(verdict(&allow(&FROM_LOCAL), "GET", "/", "10.1.2.3", None).allowed);
        assert!(verdict(&allow(&FROM_LOCAL), "GET", "/", "::ffff:10.1.2.3", None).allowed);
        assert!(!verdict(&allow(&FROM_LOCAL), "GET", "/", "192.168.1.1", None).allowed);
        let reviews = Some("cluster.local/ns/default/sa/reviews");
        assert!(verdict(&allow(&FROM_REVIEWS), "GET", "/", "10.0.0.1", reviews).allowed);
        // Without mutual TLS there is no identity: it matches no principal and no exclusion.
        assert!(!verdict(&allow(&FROM_REVIEWS), "GET", "/", "10.0.0.1", None).allowed);
        assert!(verdict(&allow(&NOT_REVIEWS), "GET", "/", "10.0.0.1", None).allowed);
        assert!(!verdict(&allow(&NOT_REVIEWS), "GET", "/", "10.0.0.1", reviews).allowed);
    }

    #[test]
    fn path_templates_take_single_and_trailing_segments() {
        assert!(template_matches(&["books", "{*}"], "/books/1"));
        assert!(!template_matches(&["books", "{*}"], "/books/1/pages"));
        assert!(!template_matches(&["books", "{*}"], "/books/"));
        assert!(template_matches(&["books", "{**}"], "/books/1/pages"));
        assert!(!template_matches(&["books", "{**}"], "/books"));
    }
}
