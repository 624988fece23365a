//! Routes: resolves each `routes` block's target and destinations, checks that matches and
//! actions fit the protocol, validates regexes, weights, methods and timeouts, and finds
//! routes that can never be reached.

use std::collections::{BTreeMap, BTreeSet};

use meshc_codegen::ir;
use meshc_codegen::ir::{AbortStatus, Protocol, StringMatchKind};

use super::shadow::Shadow;
use super::{CheckedAction, CheckedRoute, CheckedService, Checker, Dest, RouteBlock, RouteTarget, SvcKey};
use crate::diag::{Code, Diagnostic};
use crate::source::Span;
use crate::syntax::ast;

/// What kind of requests a route table sees.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Table {
    Http,
    Tcp,
    Rpc { protocols: BTreeSet<Protocol>, interface: String },
}

impl Table {
    fn describe(&self) -> String {
        match self {
            Table::Http => "an HTTP host".to_owned(),
            Table::Tcp => "a TCP service".to_owned(),
            Table::Rpc { protocols, .. } => {
                let names: Vec<&str> = protocols.iter().map(|it| it.as_str()).collect();
                format!("a {} interface", names.join("/"))
            }
        }
    }
}

/// Envoy's retry-on conditions that Istio accepts, HTTP and gRPC.
const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// Istio's retry policy when a route sets `retries N` without `on`, and the implicit one
/// it applies to HTTP routes with no `retries` at all (istio/istio#23987).
pub fn istio_retries(attempts: u32, per_try_timeout_ms: Option<u64>) -> ir::RetryPolicy {
    let mut retry_on: Vec<String> = ["connect-failure", "refused-stream", "unavailable", "cancelled", "retriable-status-codes"]
        .iter()
        .map(|it| (*it).to_owned())
        .collect();
    retry_on.sort();
    ir::RetryPolicy {
        attempts,
        per_try_timeout_ms,
        retry_on,
        retriable_status_codes: vec![503],
        avoid_previous_hosts: true,
        any_method: false,
    }
}

impl Checker<'_, '_> {
    pub(super) fn route_blocks(&mut self, blocks: &[&ast::Routes], services: &BTreeMap<SvcKey, CheckedService<'_>>) -> Vec<RouteBlock> {
        let mut seen: BTreeMap<RouteTarget, Span> = BTreeMap::new();
        let mut out = Vec::new();
        for block in blocks {
            let Some((target, table)) = self.route_target(block, services) else {
                // The target is unknown, but its routes can still be wrong in ways one run should report.
                self.check_orphan_routes(block);
                continue;
            };
            if let Some(first) = seen.get(&target) {
                let first_path = self.path(*first);
                self.push(
                    Diagnostic::error(Code::ConflictingRoutes, format!("`{}` is routed by two `routes` blocks", block.target.text))
                        .primary(block.target.span, "routed again here")
                        .secondary(*first, "first routed here")
                        .note(format!("the first block is in {first_path}; routes for one host are never merged, so which block wins would be undefined"))
                        .help("merge the two blocks into one, ordering the routes as they should be tried"),
                );
                // Check the second block's routes all the same, so one run reports their problems too.
                for route in &block.routes {
                    self.route(route, &target, &table, services);
                }
                continue;
            }
            seen.insert(target.clone(), block.target.span);
            let mut routes = Vec::new();
            let mut shadow = Shadow::default();
            for route in &block.routes {
                // A route with errors is left out of the shadowing comparison: its matches are unknown.
                let Some(checked) = self.route(route, &target, &table, services) else { continue };
                if let Some(earlier) = shadow.add(&checked.matches, route.name.span) {
                    self.report_shadowed(route, &earlier);
                }
                routes.push(checked);
            }
            out.push(RouteBlock { target, file: self.path(block.span), routes });
        }
        out
    }

    /// Checks what can be checked of routes whose target is unknown: their regexes and the
    /// services they name.
    fn check_orphan_routes(&mut self, block: &ast::Routes) {
        let namespace = self.manifest.namespace.clone();
        for route in &block.routes {
            for cond in route.matches.iter().flat_map(|it| it.conditions.iter()) {
                if let ast::Test::Match { kind: StringMatchKind::Regex, value, value_span } = &cond.test
                    && let Err(err) = super::compile_regex(value)
                {
                    self.push(
                        Diagnostic::error(Code::InvalidRegex, format!("invalid regular expression: {err}"))
                            .primary(*value_span, "not a valid RE2 expression")
                            .note("regular expressions use RE2 syntax and must match the whole value"),
                    );
                }
            }
            let named = route.destinations.iter().map(|it| &it.service).chain(route.mirror.iter().map(|it| &it.service));
            for name in named {
                if self.resolver.service(&name.text, &namespace).is_none() && self.resolver.interface(&name.text).is_none() {
                    self.service_ref(name, &namespace);
                }
            }
        }
    }

    fn route_target(&mut self, block: &ast::Routes, services: &BTreeMap<SvcKey, CheckedService<'_>>) -> Option<(RouteTarget, Table)> {
        let namespace = self.manifest.namespace.clone();
        // An interface first: a Dubbo service with no version or group has the interface as its key.
        let rpc_keys: Vec<SvcKey> =
            self.resolver.interface(&block.target.text).unwrap_or_default().iter().filter(|key| services[*key].is_rpc()).cloned().collect();
        if !rpc_keys.is_empty() {
            let protocols: BTreeSet<Protocol> = rpc_keys.iter().filter_map(|key| services[key].rpc_protocol()).collect();
            if protocols.len() > 1 {
                self.push(
                    Diagnostic::error(
                        Code::ProtocolMismatch,
                        format!(
                            "interface `{}` is served over both Bolt and Dubbo, so one `routes` block cannot route it",
                            block.target.text
                        ),
                    )
                    .primary(block.target.span, "bolt and dubbo services")
                    .note("a Bolt request cannot be forwarded to a Dubbo provider, nor the other way round")
                    .help("leave the interface to its default routes, which route each service by its key"),
                );
                return None;
            }
            return Some((
                RouteTarget::Interface(block.target.text.clone()),
                Table::Rpc { protocols, interface: block.target.text.clone() },
            ));
        }
        if let Some(key) = self.resolver.service(&block.target.text, &namespace) {
            let service = &services[&key];
            if service.is_rpc() {
                let interface = service.catalog.rpc.as_ref().map_or("", |it| it.interface.as_str());
                self.push(
                    Diagnostic::error(
                        Code::ProtocolMatch,
                        format!("`{}` is an RPC service: its routes attach to its interface", block.target.text),
                    )
                    .primary(block.target.span, "an RPC service key")
                    .help(format!("write `routes \"{interface}\"` and match on `version`, `group` or `method`")),
                );
                return None;
            }
            let table = if service.ports.iter().any(|it| it.protocol.is_http()) { Table::Http } else { Table::Tcp };
            return Some((RouteTarget::Service(key), table));
        }
        self.service_ref(&block.target, &namespace);
        None
    }

    fn route(
        &mut self,
        route: &ast::Route,
        target: &RouteTarget,
        table: &Table,
        services: &BTreeMap<SvcKey, CheckedService<'_>>,
    ) -> Option<CheckedRoute> {
        let errors_before = self.diagnostics.len();
        let ports: Vec<u16> = match target {
            RouteTarget::Service(key) => services[key].ports.iter().map(|it| it.number).collect(),
            RouteTarget::Interface(_) => Vec::new(),
        };
        let matches: Vec<ir::Match> = route.matches.iter().filter_map(|block| self.match_block(block, table, &ports)).collect();

        // Exactly one action.
        let actions: Vec<(&str, Span)> = [
            route.destinations.first().map(|it| ("to", it.span)),
            route.redirect.as_ref().map(|it| ("redirect", it.span)),
            route.respond.as_ref().map(|it| ("respond", it.span)),
        ]
        .into_iter()
        .flatten()
        .collect();
        match actions.as_slice() {
            [] => self.push(
                Diagnostic::error(Code::MissingAction, format!("route `{}` does nothing", route.name.text))
                    .primary(route.name.span, "no `to`, `redirect` or `respond`")
                    .help("add `to SERVICE` to forward matching requests"),
            ),
            [_] => {}
            [first, second, ..] => self.push(
                Diagnostic::error(
                    Code::MissingAction,
                    format!("route `{}` has two actions, `{}` and `{}`", route.name.text, first.0, second.0),
                )
                .primary(second.1, "second action")
                .secondary(first.1, "first action"),
            ),
        }

        let http_only = [
            route.rewrite.as_ref().map(|it| ("rewrite", it.span)),
            route.redirect.as_ref().map(|it| ("redirect", it.span)),
            route.respond.as_ref().map(|it| ("respond", it.span)),
            route.mirror.as_ref().map(|it| ("mirror", it.span)),
            route.request_headers.first().map(|it| ("request_header", header_op_span(it))),
            route.response_headers.first().map(|it| ("response_header", header_op_span(it))),
        ];
        if *table != Table::Http {
            for (what, span) in http_only.into_iter().flatten() {
                self.push(
                    Diagnostic::error(
                        Code::ProtocolMatch,
                        format!("`{what}` applies to HTTP requests, but `{}` is {}", target_text(target), table.describe()),
                    )
                    .primary(span, "HTTP only"),
                );
            }
        }
        if let Some(abort) = route.fault_abort.as_ref().filter(|it| matches!(it.value.0, AbortStatus::Grpc(_)))
            && matches!(table, Table::Rpc { .. })
        {
            self.push(
                Diagnostic::error(
                    Code::ProtocolMatch,
                    format!("a gRPC status does not apply to {} `{}`", table.describe(), target_text(target)),
                )
                .primary(abort.span, "gRPC only"),
            );
        }
        if *table == Table::Tcp {
            let fault = route.fault_delay.as_ref().map(|it| it.span).or(route.fault_abort.as_ref().map(|it| it.span));
            if let Some(span) = fault {
                self.push(
                    Diagnostic::error(
                        Code::ProtocolMatch,
                        format!("`fault` applies to requests, but `{}` is a TCP service", target_text(target)),
                    )
                    .primary(span, "not for TCP connections"),
                );
            }
            for (what, span) in
                [route.timeout.as_ref().map(|it| ("timeout", it.span)), route.retries.as_ref().map(|it| ("retries", it.span))]
                    .into_iter()
                    .flatten()
            {
                self.push(
                    Diagnostic::error(
                        Code::ProtocolMatch,
                        format!("`{what}` applies to requests, but `{}` is a TCP service", target_text(target)),
                    )
                    .primary(span, "not for TCP connections"),
                );
            }
        }

        let destinations = self.destinations(route, target, table, services);
        if let Some(destinations) = &destinations {
            self.check_methods(route, table, destinations, services);
        }
        let mirror = route.mirror.as_ref().and_then(|mirror| {
            let dest = self.dest(&mirror.service, mirror.subset.as_ref(), mirror.port.as_ref(), mirror.span, target, table, services)?;
            Some((dest, mirror.per_million))
        });
        let retries = route.retries.as_ref().and_then(|it| self.retries(&it.value));
        if let (Some(timeout), Some(retries)) = (&route.timeout, &route.retries)
            && let Some(per_try) = &retries.value.per_try_timeout
        {
            let tries = u64::from(retries.value.attempts) + 1;
            if retries.value.attempts > 0 && timeout.value > 0 && timeout.value < per_try.value.saturating_mul(tries) {
                self.push(
                    Diagnostic::warning(
                        Code::TimeoutBudget,
                        format!(
                            "route `{}` times out before its retries can run: {}ms < {} tries × {}ms",
                            route.name.text, timeout.value, tries, per_try.value
                        ),
                    )
                    .primary(timeout.span, "the whole request must finish within this")
                    .secondary(
                        retries.span,
                        format!("the first try and {} retries of up to {}ms each", retries.value.attempts, per_try.value),
                    )
                    .help(format!(
                        "raise the timeout to at least {}ms, or lower the per-try timeout or the retries",
                        per_try.value.saturating_mul(tries)
                    )),
                );
            }
        }

        if self.diagnostics[errors_before..].iter().any(|it| it.is_error()) {
            return None;
        }
        let action = match (&route.redirect, &route.respond) {
            (Some(redirect), _) => CheckedAction::Answer(ir::Action::Redirect {
                scheme: redirect.value.scheme.clone(),
                authority: redirect.value.authority.clone(),
                port: redirect.value.port,
                path: redirect.value.path.clone(),
                status: redirect.value.code.as_ref().map_or(301, |it| it.value),
            }),
            (None, Some(respond)) => {
                CheckedAction::Answer(ir::Action::DirectResponse { status: respond.value.0, body: respond.value.1.clone() })
            }
            (None, None) => CheckedAction::Forward {
                destinations: destinations?,
                rewrite: route
                    .rewrite
                    .as_ref()
                    .map(|it| ir::Rewrite { prefix: it.value.prefix.clone(), authority: it.value.authority.clone() }),
            },
        };
        if matches!(action, CheckedAction::Answer(_)) {
            // The sidecar answers such a route itself, before anything that forwarding
            // uses: these settings would do nothing, so they are dropped, with a warning.
            let spans: Vec<(&str, Span)> = [
                ("timeout", route.timeout.as_ref().map(|it| it.span)),
                ("retries", route.retries.as_ref().map(|it| it.span)),
                ("fault", route.fault_delay.as_ref().map(|it| it.span)),
                ("fault", route.fault_abort.as_ref().map(|it| it.span)),
                ("mirror", route.mirror.as_ref().map(|it| it.span)),
                ("rate_limit", route.rate_limit.as_ref().map(|it| it.span)),
            ]
            .into_iter()
            .filter_map(|(what, span)| Some((what, span?)))
            .collect();
            let mut spans = spans;
            spans.sort_by_key(|it| it.1.start);
            if let Some(((_, at), rest)) = spans.split_first() {
                let mut names: Vec<&str> = spans.iter().map(|it| it.0).collect();
                names.dedup();
                let mut diagnostic = Diagnostic::warning(
                    Code::IneffectiveSetting,
                    format!("route `{}` answers locally, so these settings do nothing: `{}`", route.name.text, names.join("`, `")),
                )
                .primary(*at, "used only by a route that forwards");
                for (_, span) in rest {
                    diagnostic = diagnostic.secondary(*span, "and this");
                }
                self.push(diagnostic.help("move them to a route that forwards, or remove them"));
            }
            return Some(CheckedRoute {
                name: route.name.text.clone(),
                matches,
                action,
                timeout_ms: None,
                retries: None,
                fault: None,
                mirror: None,
                request_headers: header_ops(&route.request_headers),
                response_headers: header_ops(&route.response_headers),
                rate_limit: None,
            });
        }
        let fault = (route.fault_delay.is_some() || route.fault_abort.is_some()).then(|| ir::Fault {
            delay: route.fault_delay.as_ref().map(|it| ir::FaultDelay { delay_ms: it.value.0, per_million: it.value.1 }),
            abort: route.fault_abort.as_ref().map(|it| ir::FaultAbort { status: it.value.0, per_million: it.value.1 }),
        });
        Some(CheckedRoute {
            name: route.name.text.clone(),
            matches,
            action,
            // `timeout 0s` disables the timeout, as Istio's `0s` does.
            timeout_ms: route.timeout.as_ref().map(|it| it.value).filter(|it| *it > 0),
            retries,
            fault,
            mirror,
            request_headers: header_ops(&route.request_headers),
            response_headers: header_ops(&route.response_headers),
            rate_limit: route.rate_limit.as_ref().map(|it| rate_limit(&it.value)),
        })
    }

    /// Converts one `match` block; `ports` are the routed service's ports (none for RPC).
    fn match_block(&mut self, block: &ast::MatchBlock, table: &Table, ports: &[u16]) -> Option<ir::Match> {
        let mut out = ir::Match::default();
        let mut seen: Vec<(ast::Field, Span)> = Vec::new();
        let mut ok = true;
        for cond in &block.conditions {
            let applies = !matches!(
                (&cond.field, table),
                (ast::Field::Port, Table::Rpc { .. })
                    | (
                        ast::Field::Authority | ast::Field::Path | ast::Field::Method | ast::Field::Header(_) | ast::Field::Query(_),
                        Table::Tcp
                    )
                    | (ast::Field::Service | ast::Field::Version | ast::Field::Group, Table::Tcp)
                    | (ast::Field::Authority | ast::Field::Path | ast::Field::Query(_), Table::Rpc { .. })
                    | (ast::Field::Service | ast::Field::Version | ast::Field::Group, Table::Http)
            );
            if !applies {
                let (what, kind) = match table {
                    Table::Http => ("an RPC-only", "RPC requests (Bolt and Dubbo)"),
                    _ => ("an HTTP-only", "HTTP requests"),
                };
                self.push(
                    Diagnostic::error(
                        Code::ProtocolMatch,
                        format!("`{}` is {what} match, but the route is for {}", cond.field.keyword(), table.describe()),
                    )
                    .primary(cond.span, format!("matches {kind} only")),
                );
                ok = false;
                continue;
            }
            if let Some((_, first)) = seen.iter().find(|it| it.0 == cond.field) {
                self.push(
                    Diagnostic::error(Code::DuplicateSetting, format!("`{}` is matched twice in one `match` block", cond.field.keyword()))
                        .primary(cond.span, "matched again here")
                        .secondary(*first, "first matched here")
                        .help("conditions in one block must all hold; use two `match` blocks for either-or"),
                );
                ok = false;
                continue;
            }
            seen.push((cond.field.clone(), cond.span));
            let string_match = match &cond.test {
                ast::Test::Match { kind, value, value_span } => {
                    if *kind == StringMatchKind::Regex
                        && let Err(err) = super::compile_regex(value)
                    {
                        self.push(
                            Diagnostic::error(Code::InvalidRegex, format!("invalid regular expression: {err}"))
                                .primary(*value_span, "not a valid RE2 expression")
                                .note("regular expressions use RE2 syntax and must match the whole value"),
                        );
                        ok = false;
                        continue;
                    }
                    if cond.field == ast::Field::Path && *kind != StringMatchKind::Regex && !value.starts_with('/') {
                        self.push(
                            Diagnostic::error(
                                Code::InvalidValue,
                                format!("path `{value}` does not start with `/`, so no request can match it"),
                            )
                            .primary(*value_span, "paths start with `/`"),
                        );
                        ok = false;
                        continue;
                    }
                    Some(ir::StringMatch { kind: *kind, value: value.clone() })
                }
                _ => None,
            };
            let presence = match (&cond.test, &string_match) {
                (ast::Test::Present, _) => ir::PresenceMatch::Present,
                (ast::Test::Absent, _) => ir::PresenceMatch::Absent,
                (_, Some(m)) => ir::PresenceMatch::Value(m.clone()),
                (_, None) => unreachable!("a match test has a value"),
            };
            match &cond.field {
                ast::Field::Authority => out.authority = string_match,
                ast::Field::Path => out.path = string_match,
                ast::Field::Method => out.method = string_match,
                ast::Field::Service => out.service = string_match,
                ast::Field::Version => out.version = string_match,
                ast::Field::Group => out.group = string_match,
                ast::Field::Port => match string_match.and_then(|it| it.value.parse::<u16>().ok()) {
                    Some(port) if ports.contains(&port) => out.port = Some(port),
                    Some(port) => {
                        let known: Vec<String> = ports.iter().map(u16::to_string).collect();
                        self.push(
                            Diagnostic::error(Code::UnknownPort, format!("the routed service has no port {port}"))
                                .primary(cond.span, "not a port of the service")
                                .note(format!("its ports: {}", known.join(", "))),
                        );
                        ok = false;
                    }
                    // An out-of-range port was reported by the parser.
                    None => ok = false,
                },
                ast::Field::Header(name) => out.headers.push(ir::HeaderMatch { name: name.clone(), kind: presence }),
                ast::Field::Query(name) => out.query.push(ir::QueryMatch { name: name.clone(), kind: presence }),
            }
        }
        out.headers.sort();
        out.query.sort();
        ok.then_some(out)
    }

    fn destinations(
        &mut self,
        route: &ast::Route,
        target: &RouteTarget,
        table: &Table,
        services: &BTreeMap<SvcKey, CheckedService<'_>>,
    ) -> Option<Vec<(Dest, u32)>> {
        if route.destinations.is_empty() {
            return None;
        }
        let mut resolved: Vec<(Dest, Option<&ast::Spanned<u32>>, Span)> = Vec::new();
        let mut ok = true;
        for to in &route.destinations {
            let Some(dest) = self.dest(&to.service, to.subset.as_ref(), to.port.as_ref(), to.span, target, table, services) else {
                ok = false;
                continue;
            };
            if let Some(first) = resolved.iter().find(|it| it.0 == dest) {
                self.push(
                    Diagnostic::error(Code::DuplicateName, "a destination is listed twice in one route")
                        .primary(to.span, "listed again here")
                        .secondary(first.2, "first listed here")
                        .help("give the destination one weight"),
                );
                ok = false;
                continue;
            }
            resolved.push((dest, to.weight.as_ref(), to.span));
        }
        if !ok {
            return None;
        }
        let weights: Vec<u32> = if resolved.len() == 1 {
            vec![resolved[0].1.map_or(100, |it| it.value)]
        } else {
            let missing: Vec<Span> = resolved.iter().filter(|it| it.1.is_none()).map(|it| it.2).collect();
            if !missing.is_empty() {
                let mut diagnostic = Diagnostic::error(
                    Code::InvalidValue,
                    format!("route `{}` splits traffic, so every destination needs a weight", route.name.text),
                );
                for span in missing {
                    diagnostic = diagnostic.primary(span, "no `weight`");
                }
                self.push(diagnostic);
                return None;
            }
            resolved.iter().map(|it| it.1.map_or(0, |w| w.value)).collect()
        };
        let total: u64 = weights.iter().map(|it| u64::from(*it)).sum();
        if total == 0 {
            self.push(
                Diagnostic::error(Code::InvalidValue, format!("the weights of route `{}` sum to 0", route.name.text))
                    .primary(route.destinations[0].span, "no traffic could go anywhere"),
            );
            return None;
        }
        let normalised = normalise(&weights);
        if total != 100 {
            let first_weight = resolved.iter().find_map(|it| it.1).map_or(route.destinations[0].span, |it| it.span);
            let shown: Vec<String> = weights.iter().map(u32::to_string).collect();
            let now: Vec<String> = normalised.iter().map(u32::to_string).collect();
            self.push(
                Diagnostic::warning(Code::WeightSum, format!("the weights of route `{}` sum to {total}, not 100", route.name.text))
                    .primary(first_weight, format!("weights {}", shown.join(" + ")))
                    .note(format!("normalised to {} percent", now.join(" + "))),
            );
        }
        Some(resolved.into_iter().map(|it| it.0).zip(normalised).collect())
    }

    /// Resolves a destination (or mirror) and checks it fits the table.
    #[allow(clippy::too_many_arguments)]
    fn dest(
        &mut self,
        name: &ast::Name,
        subset: Option<&ast::Name>,
        port: Option<&ast::Spanned<u16>>,
        span: Span,
        target: &RouteTarget,
        table: &Table,
        services: &BTreeMap<SvcKey, CheckedService<'_>>,
    ) -> Option<Dest> {
        let namespace = self.manifest.namespace.clone();
        let key = match self.resolver.service(&name.text, &namespace) {
            Some(key) => key,
            None if self.resolver.interface(&name.text).is_some() => {
                let keys = self.resolver.interface(&name.text).unwrap_or_default();
                let listed: Vec<&str> = keys.iter().take(4).map(|it| it.1.as_str()).collect();
                self.push(
                    Diagnostic::error(Code::UnknownService, format!("`{}` is an interface, not a service", name.text))
                        .primary(name.span, "name one of its services")
                        .note(format!("services of this interface: {}", listed.join(", "))),
                );
                return None;
            }
            None => {
                self.service_ref(name, &namespace);
                return None;
            }
        };
        let service = &services[&key];
        // The destination must speak what the table routes.
        let fits = match table {
            Table::Http => service.ports.iter().any(|it| it.protocol.is_http()),
            Table::Tcp => service.ports.iter().any(|it| matches!(it.protocol, Protocol::Tcp | Protocol::Auto)),
            Table::Rpc { interface, .. } => service.is_rpc() && service.catalog.rpc.as_ref().is_some_and(|it| it.interface == *interface),
        };
        if !fits {
            let what = match (table, &service.catalog.rpc) {
                (Table::Rpc { interface, .. }, Some(rpc)) => format!("it implements `{}`, not `{interface}`", rpc.interface),
                _ => format!("it is a {} service", service.protocol.as_str()),
            };
            self.push(
                Diagnostic::error(
                    Code::ProtocolMismatch,
                    format!("`{}` cannot take traffic from {} `{}`: {what}", name.text, table.describe(), target_text(target)),
                )
                .primary(name.span, "wrong kind of destination"),
            );
            return None;
        }
        // The port: the one given, or the only one of the right kind.
        let candidates: Vec<&ir::ServicePort> = service
            .ports
            .iter()
            .filter(|it| match table {
                Table::Http => it.protocol.is_http(),
                Table::Tcp => matches!(it.protocol, Protocol::Tcp | Protocol::Auto),
                Table::Rpc { .. } => it.protocol.is_rpc(),
            })
            .collect();
        let port = match port {
            Some(port) => {
                if !service.ports.iter().any(|it| it.number == port.value) {
                    let known: Vec<String> = service.ports.iter().map(|it| it.number.to_string()).collect();
                    self.push(
                        Diagnostic::error(Code::UnknownPort, format!("service `{}` has no port {}", name.text, port.value))
                            .primary(port.span, "not a port of the service")
                            .note(format!("its ports: {}", known.join(", "))),
                    );
                    return None;
                }
                if !candidates.iter().any(|it| it.number == port.value) {
                    let protocol = service.ports.iter().find(|it| it.number == port.value).map_or("", |it| it.protocol.as_str());
                    self.push(
                        Diagnostic::error(
                            Code::ProtocolMismatch,
                            format!(
                                "port {} of `{}` speaks {protocol}, so {} `{}` cannot send traffic there",
                                port.value,
                                name.text,
                                table.describe(),
                                target_text(target)
                            ),
                        )
                        .primary(port.span, format!("a {protocol} port")),
                    );
                    return None;
                }
                port.value
            }
            None => match candidates.as_slice() {
                [only] => only.number,
                _ => {
                    let known: Vec<String> = candidates.iter().map(|it| it.number.to_string()).collect();
                    self.push(
                        Diagnostic::error(
                            Code::PortRequired,
                            format!("`{}` has several ports, so the destination must name one", name.text),
                        )
                        .primary(span, "no `port`")
                        .help(format!("add `port N` with one of {}", known.join(", "))),
                    );
                    return None;
                }
            },
        };
        let subset = match subset {
            Some(subset) => {
                if !service.subsets.iter().any(|it| it.name == subset.text) {
                    let declared: Vec<&str> = service.subsets.iter().map(|it| it.name.as_str()).collect();
                    let mut diagnostic =
                        Diagnostic::error(Code::UnknownSubset, format!("service `{}` has no subset `{}`", name.text, subset.text))
                            .primary(subset.span, "not declared");
                    diagnostic = if declared.is_empty() {
                        diagnostic.help(format!("declare it: `service {} {{ subset {} {{ version = \"...\" }} }}`", name.text, subset.text))
                    } else {
                        diagnostic.note(format!("declared subsets: {}", declared.join(", ")))
                    };
                    self.push(diagnostic);
                    return None;
                }
                self.subset_uses.entry((key.clone(), subset.text.clone())).or_insert(subset.span);
                self.subset_port_uses.entry((key.clone(), subset.text.clone(), port)).or_insert(subset.span);
                Some(subset.text.clone())
            }
            None => None,
        };
        self.dest_spans.push((target.clone(), key.clone(), name.span));
        Some(Dest { service: key, port, subset })
    }

    /// An RPC route's `method` must be one the destinations' registries list.
    fn check_methods(
        &mut self,
        route: &ast::Route,
        table: &Table,
        destinations: &[(Dest, u32)],
        services: &BTreeMap<SvcKey, CheckedService<'_>>,
    ) {
        if !matches!(table, Table::Rpc { .. }) {
            return;
        }
        for block in &route.matches {
            for cond in &block.conditions {
                let (ast::Field::Method, ast::Test::Match { kind, value, value_span }) = (&cond.field, &cond.test) else { continue };
                for (dest, _) in destinations {
                    let Some(methods) = &services[&dest.service].catalog.methods else { continue };
                    let found = match kind {
                        StringMatchKind::Exact => methods.contains(value),
                        StringMatchKind::Prefix => methods.iter().any(|it| it.starts_with(value.as_str())),
                        StringMatchKind::Regex => super::compile_regex(value).is_ok_and(|re| methods.iter().any(|it| re.is_match(it))),
                    };
                    if found {
                        continue;
                    }
                    let listed: Vec<&str> = methods.iter().map(String::as_str).collect();
                    let registries = services[&dest.service].catalog.registries.join(", ");
                    self.push(
                        Diagnostic::error(Code::UnknownMethod, format!("`{}` has no method matching `{value}`", dest.service.1))
                            .primary(*value_span, "no such method")
                            .note(format!("registry {registries} lists: {}", listed.join(", "))),
                    );
                }
            }
        }
    }

    fn retries(&mut self, retries: &ast::Retries) -> Option<ir::RetryPolicy> {
        let per_try = retries.per_try_timeout.as_ref().map(|it| it.value);
        if retries.attempts == 0 {
            return Some(ir::RetryPolicy::none());
        }
        if retries.retry_on.is_empty() {
            return Some(ir::RetryPolicy { any_method: retries.any_method, ..istio_retries(retries.attempts, per_try) });
        }
        let mut policy = ir::RetryPolicy {
            attempts: retries.attempts,
            per_try_timeout_ms: per_try,
            retry_on: Vec::new(),
            retriable_status_codes: Vec::new(),
            avoid_previous_hosts: true,
            any_method: retries.any_method,
        };
        let mut ok = true;
        for condition in &retries.retry_on {
            if let Ok(code) = condition.text.parse::<u16>()
                && (100..=599).contains(&code)
            {
                policy.retriable_status_codes.push(code);
                policy.retry_on.push("retriable-status-codes".to_owned());
                continue;
            }
            if RETRY_ON.contains(&condition.text.as_str()) {
                policy.retry_on.push(condition.text.clone());
            } else {
                self.push(
                    Diagnostic::error(Code::InvalidValue, format!("unknown retry condition `{}`", condition.text))
                        .primary(condition.span, "not a retry-on condition")
                        .help(format!("use a status code or one of: {}", RETRY_ON.join(", "))),
                );
                ok = false;
            }
        }
        policy.retry_on.sort();
        policy.retry_on.dedup();
        policy.retriable_status_codes.sort_unstable();
        policy.retriable_status_codes.dedup();
        ok.then_some(policy)
    }

    fn report_shadowed(&mut self, route: &ast::Route, earlier: &super::shadow::Covered) {
        let (code, message) = if earlier.identical {
            (Code::ShadowedRoute, format!("route `{}` is never reached: an earlier route has the same match", route.name.text))
        } else {
            let who = if earlier.by.len() == 1 { "an earlier route matches" } else { "earlier routes together match" };
            (Code::ContainedRoute, format!("route `{}` is never reached: {who} everything it matches", route.name.text))
        };
        let names: Vec<String> = earlier.by.iter().map(|it| format!("`{}`", self.sources.snippet(*it))).collect();
        let mut diagnostic = Diagnostic::error(code, message).primary(route.name.span, "never reached");
        for (span, name) in earlier.by.iter().zip(&names) {
            let what = if earlier.by.len() == 1 {
                format!("{name} matches every request `{}` matches", route.name.text)
            } else {
                format!("{name} matches some of them")
            };
            diagnostic = diagnostic.secondary(*span, what);
        }
        let above = if names.len() == 1 { names[0].clone() } else { names.join(" and ") };
        self.push(
            diagnostic.help(format!(
                "routes are tried in order and the first match wins: move `{}` above {above}, or remove it",
                route.name.text
            )),
        );
    }

    /// E0210: a declared workload's routes that reach services it may not call.
    pub(super) fn check_scopes(&mut self, workloads: &BTreeMap<String, super::CheckedWorkload>) {
        let spans = std::mem::take(&mut self.dest_spans);
        // Destinations by route target, and the targets each service makes visible.
        let mut by_target: BTreeMap<&RouteTarget, Vec<(&SvcKey, Span)>> = BTreeMap::new();
        for (target, dest, span) in &spans {
            by_target.entry(target).or_default().push((dest, *span));
        }
        let mut targets_of: BTreeMap<&SvcKey, Vec<&RouteTarget>> = BTreeMap::new();
        for target in by_target.keys() {
            match target {
                RouteTarget::Service(key) => targets_of.entry(key).or_default().push(target),
                RouteTarget::Interface(interface) => {
                    for key in self.resolver.interface(interface).unwrap_or_default() {
                        targets_of.entry(key).or_default().push(target);
                    }
                }
            }
        }
        let mut found = Vec::new();
        for workload in workloads.values() {
            let Some(calls) = &workload.calls else { continue };
            let visible: BTreeSet<&RouteTarget> = calls.iter().filter_map(|key| targets_of.get(key)).flatten().copied().collect();
            for target in visible {
                for (dest, span) in &by_target[target] {
                    if calls.contains(*dest) {
                        continue;
                    }
                    found.push(
                        Diagnostic::warning(
                            Code::OutOfScope,
                            format!("workload `{}` uses routes that reach `{}`, which it may not call", workload.name, dest.1),
                        )
                        .primary(*span, format!("not in the `calls` of `{}`", workload.name))
                        .note(format!("requests from `{}` taking this route will fail with 503", workload.name))
                        .help(format!("add `{}` to the workload's `calls`", dest.1)),
                    );
                }
            }
        }
        self.diagnostics.extend(found);
    }
}

fn target_text(target: &RouteTarget) -> &str {
    match target {
        RouteTarget::Service(key) => &key.1,
        RouteTarget::Interface(interface) => interface,
    }
}

fn header_op_span(op: &ast::HeaderOp) -> Span {
    match op {
        ast::HeaderOp::Set(name, _) | ast::HeaderOp::Add(name, _) | ast::HeaderOp::Remove(name) => name.span,
    }
}

fn header_ops(ops: &[ast::HeaderOp]) -> ir::HeaderOps {
    let mut out = ir::HeaderOps::default();
    for op in ops {
        match op {
            ast::HeaderOp::Set(name, value) => out.set.push((name.text.clone(), value.clone())),
            ast::HeaderOp::Add(name, value) => out.add.push((name.text.clone(), value.clone())),
            ast::HeaderOp::Remove(name) => out.remove.push(name.text.clone()),
        }
    }
    out
}

/// A spec rate limit as a token bucket: `burst` tokens, refilled by `requests` each interval.
pub fn rate_limit(limit: &ast::RateLimit) -> ir::RateLimit {
    ir::RateLimit {
        max_tokens: limit.burst.unwrap_or(limit.requests),
        tokens_per_fill: limit.requests,
        fill_interval_ms: limit.interval_ms,
        per_source: limit.per_source,
    }
}

/// Scales weights to sum to 100 by largest remainder; ties go to the earlier destination.
pub fn normalise(weights: &[u32]) -> Vec<u32> {
    let total: u64 = weights.iter().map(|it| u64::from(*it)).sum();
    if total == 0 {
        return weights.to_vec();
    }
    let exact: Vec<(u64, u64)> = weights.iter().map(|it| (u64::from(*it) * 100 / total, u64::from(*it) * 100 % total)).collect();
    let mut out: Vec<u32> = exact.iter().map(|it| it.0 as u32).collect();
    let assigned: u64 = exact.iter().map(|it| it.0).sum();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|a, b| exact[*b].1.cmp(&exact[*a].1).then(a.cmp(b)));
    for index in order.into_iter().take((100 - assigned) as usize) {
        out[index] += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_normalise_to_exactly_100() {
        assert_eq!(normalise(&[90, 10]), vec![90, 10]);
        assert_eq!(normalise(&[1, 1, 1]), vec![34, 33, 33]);
        assert_eq!(normalise(&[1, 2]), vec![33, 67]);
        assert_eq!(normalise(&[50, 30]), vec![63, 37]);
        assert_eq!(normalise(&[7]), vec![100]);
    }
}
