//! From pest's parse tree to the AST: unescapes strings, converts units, checks ranges,
//! and reports a statement given twice in one block.
//!
//! The grammar guarantees the shape of every pair, so a shape this code does not expect
//! is a bug in meshc (an internal error), not a user error.

use meshc_codegen::ir::{
    AbortStatus, AuthzAction, ConnectionLimits, HashOn, HealthCheck, HealthProbe, LoadBalancer, OutlierDetection, PerMillion, Protocol,
    StringMatchKind, TlsMode,
};
use pest::iterators::Pair;

use super::Rule;
use super::ast::*;
use crate::diag::{Code, Diagnostic};
use crate::source::{FileId, Span};

/// Builds AST nodes for one file, collecting diagnostics.
pub(super) struct Builder<'d> {
    pub(super) file: FileId,
    pub(super) diagnostics: &'d mut Vec<Diagnostic>,
}

type P<'i> = Pair<'i, Rule>;

impl Builder<'_> {
    /// A pair's span without the whitespace and comments pest leaves at its end when an
    /// optional trailing part is absent.
    fn span(&self, pair: &P<'_>) -> Span {
        let it = pair.as_span();
        Span::new(self.file, it.start()..it.start() + without_trailing_trivia(it.as_str()))
    }

    fn error(&mut self, code: Code, span: Span, message: impl Into<String>, label: impl Into<String>) {
        self.diagnostics.push(Diagnostic::error(code, message).primary(span, label));
    }

    /// Stores `value` in `slot` unless the block already set it.
    fn set_once<T>(&mut self, slot: &mut Option<Spanned<T>>, value: T, span: Span, what: &str) {
        match slot {
            Some(previous) => {
                let previous = previous.span;
                self.diagnostics.push(
                    Diagnostic::error(Code::DuplicateSetting, format!("`{what}` is set twice in one block"))
                        .primary(span, "set again here")
                        .secondary(previous, "first set here"),
                );
            }
            None => *slot = Some(Spanned { value, span }),
        }
    }

    pub(super) fn file(&mut self, pair: P<'_>) -> File {
        let mut items = Vec::new();
        for item in pair.into_inner() {
            match item.as_rule() {
                Rule::service => items.push(Item::Service(self.service(item))),
                Rule::routes => items.push(Item::Routes(self.routes(item))),
                Rule::authorization => items.push(Item::Authorization(self.authorization(item))),
                Rule::workload => items.push(Item::Workload(self.workload(item))),
                Rule::telemetry => items.push(Item::Telemetry(self.telemetry(item))),
                Rule::EOI => {}
                other => unreachable!("grammar: unexpected item {other:?}"),
            }
        }
        File { file: self.file, items }
    }

    // ------------------------------------------------------------ values

    fn name(&mut self, pair: P<'_>) -> Name {
        let span = self.span(&pair);
        let inner = match pair.as_rule() {
            Rule::name | Rule::value | Rule::when_key => pair.into_inner().next().expect("grammar: name has one child"),
            _ => pair,
        };
        match inner.as_rule() {
            Rule::string => Name { text: self.string(inner), span },
            _ => Name { text: inner.as_str().to_owned(), span },
        }
    }

    fn names(&mut self, pair: P<'_>) -> Vec<Name> {
        pair.into_inner().map(|it| self.name(it)).collect()
    }

    fn string(&mut self, pair: P<'_>) -> String {
        let span = self.span(&pair);
        let raw = pair.into_inner().next().map_or("", |it| it.as_str());
        let mut out = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some('r') => out.push('\r'),
                Some('u') => {
                    let hex: String = chars.by_ref().skip(1).take_while(|it| *it != '}').collect();
                    match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
                        Some(c) => out.push(c),
                        None => {
                            self.error(Code::InvalidValue, span, format!("`\\u{{{hex}}}` is not a Unicode scalar value"), "in this string")
                        }
                    }
                }
                Some(other) => out.push(other),
                None => {}
            }
        }
        out
    }

    fn int<T: TryFrom<u64>>(&mut self, pair: P<'_>, min: u64, max: u64, what: &str) -> Option<Spanned<T>> {
        let span = self.span(&pair);
        let parsed = pair.as_str().parse::<u64>().ok().filter(|it| (min..=max).contains(it));
        match parsed.and_then(|it| T::try_from(it).ok()) {
            Some(value) => Some(Spanned { value, span }),
            None => {
                self.error(Code::InvalidValue, span, format!("{what} must be between {min} and {max}"), "out of range");
                None
            }
        }
    }

    fn port(&mut self, pair: P<'_>) -> Option<Spanned<u16>> {
        self.int(pair, 1, 65535, "a port")
    }

    /// `1.5s` → 1500. Durations are whole milliseconds, at most about 31 years.
    fn duration(&mut self, pair: P<'_>) -> Option<Spanned<u64>> {
        let span = self.span(&pair);
        let text = pair.as_str();
        let split = text.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let unit_ms: u64 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => unreachable!("grammar: duration unit {unit}"),
        };
        match decimal_times(number, unit_ms) {
            Some(ms) if ms <= 1_000_000_000_000 => Some(Spanned { value: ms, span }),
            Some(_) => {
                self.error(Code::InvalidValue, span, "a duration must be at most 1000000000000ms", "too long");
                None
            }
            None => {
                self.error(Code::InvalidValue, span, format!("`{text}` is not a whole number of milliseconds"), "not a whole millisecond");
                None
            }
        }
    }

    /// `12.5%` → 125000 millionths.
    fn percent(&mut self, pair: P<'_>) -> Option<Spanned<PerMillion>> {
        let span = self.span(&pair);
        let text = pair.as_str().trim_end_matches('%');
        match decimal_times(text, 10_000) {
            Some(value) if value <= 1_000_000 => Some(Spanned { value: value as PerMillion, span }),
            Some(_) => {
                self.error(Code::InvalidValue, span, "a percentage must be at most 100%", "more than 100%");
                None
            }
            None => {
                self.error(Code::InvalidValue, span, "a percentage has at most four decimal places", "too precise");
                None
            }
        }
    }

    fn protocol(&mut self, pair: P<'_>) -> Spanned<Protocol> {
        let span = self.span(&pair);
        let value = Protocol::ALL.iter().copied().find(|it| it.as_str() == pair.as_str()).expect("grammar: protocol names");
        Spanned { value, span }
    }

    fn rate_limit(&mut self, pair: P<'_>) -> Option<Spanned<RateLimit>> {
        let span = self.span(&pair);
        let mut inner = pair.into_inner().skip(1);
        let rate = inner.next().expect("grammar: rate");
        let rate_span = self.span(&rate);
        let (count, unit) = rate.as_str().split_once('/').expect("grammar: rate has a slash");
        let interval_ms = match unit {
            "s" => 1_000,
            "m" => 60_000,
            _ => 3_600_000,
        };
        let requests = match count.parse::<u32>() {
            Ok(n) if n > 0 => n,
            _ => {
                self.error(Code::InvalidValue, rate_span, "a rate must be between 1 and 4294967295 requests", "out of range");
                return None;
            }
        };
        let mut limit = RateLimit { requests, interval_ms, burst: None, per_source: false };
        for part in inner {
            match part.as_rule() {
                Rule::kw_burst => {}
                Rule::int => limit.burst = Some(self.int::<u32>(part, 1, u64::from(u32::MAX), "a burst")?.value),
                Rule::per_source => limit.per_source = true,
                other => unreachable!("grammar: rate_limit part {other:?}"),
            }
        }
        Some(Spanned { value: limit, span })
    }

    // ------------------------------------------------------------ services

    fn service(&mut self, pair: P<'_>) -> Service {
        let span = self.span(&pair);
        let mut inner = pair.into_inner().skip(1);
        let name = self.name(inner.next().expect("grammar: service name"));
        let mut service = Service { span, name, protocol: None, ports: Vec::new(), subsets: Vec::new(), policy: Policy::default() };
        for stmt in inner {
            match stmt.as_rule() {
                Rule::protocol_stmt => {
                    let stmt_span = self.span(&stmt);
                    let protocol = self.protocol(stmt.into_inner().nth(1).expect("grammar: protocol"));
                    self.set_once(&mut service.protocol, protocol.value, stmt_span, "protocol");
                }
                Rule::port_stmt => {
                    if let Some(port) = self.port_decl(stmt) {
                        if let Some(previous) = service.ports.iter().find(|it| it.number.value == port.number.value) {
                            self.diagnostics.push(
                                Diagnostic::error(Code::DuplicateName, format!("port {} is declared twice", port.number.value))
                                    .primary(port.span, "declared again here")
                                    .secondary(previous.span, "first declared here"),
                            );
                        } else {
                            service.ports.push(port);
                        }
                    }
                }
                Rule::subset => {
                    let subset = self.subset(stmt);
                    if let Some(previous) = service.subsets.iter().find(|it| it.name.text == subset.name.text) {
                        self.diagnostics.push(
                            Diagnostic::error(Code::DuplicateName, format!("subset `{}` is declared twice", subset.name.text))
                                .primary(subset.name.span, "declared again here")
                                .secondary(previous.name.span, "first declared here"),
                        );
                    } else {
                        service.subsets.push(subset);
                    }
                }
                _ => self.policy_stmt(&mut service.policy, stmt),
            }
        }
        service
    }

    fn port_decl(&mut self, pair: P<'_>) -> Option<PortDecl> {
        let span = self.span(&pair);
        let mut inner = pair.into_inner().skip(1);
        let number = self.port(inner.next().expect("grammar: port number"));
        let mut decl =
            PortDecl { span, number: number.clone().unwrap_or(Spanned { value: 0, span }), protocol: None, name: None, target_port: None };
        for part in inner {
            match part.as_rule() {
                Rule::protocol => decl.protocol = Some(self.protocol(part)),
                Rule::port_name => decl.name = Some(self.name(part.into_inner().nth(1).expect("grammar: port name"))),
                Rule::port_target => decl.target_port = self.port(part.into_inner().nth(1).expect("grammar: target port")),
                other => unreachable!("grammar: port option {other:?}"),
            }
        }
        number.map(|_| decl)
    }

    fn subset(&mut self, pair: P<'_>) -> Subset {
        let span = self.span(&pair);
        let mut inner = pair.into_inner().skip(1);
        let name = self.name(inner.next().expect("grammar: subset name"));
        let mut subset = Subset { span, name, labels: Vec::new(), policy: Policy::default() };
        for stmt in inner {
            if stmt.as_rule() == Rule::label {
                let mut parts = stmt.into_inner();
                let key_pair = parts.next().expect("grammar: label key");
                let key = Name { text: key_pair.as_str().to_owned(), span: self.span(&key_pair) };
                let value_pair = parts.next().expect("grammar: label value");
                let value_span = self.span(&value_pair);
                let value = Name { text: self.string(value_pair), span: value_span };
                if let Some(previous) = subset.labels.iter().find(|it| it.0.text == key.text) {
                    self.diagnostics.push(
                        Diagnostic::error(
                            Code::DuplicateSetting,
                            format!("label `{}` is set twice in subset `{}`", key.text, subset.name.text),
                        )
                        .primary(key.span, "set again here")
                        .secondary(previous.0.span, "first set here"),
                    );
                } else {
                    subset.labels.push((key, value));
                }
            } else {
                self.policy_stmt(&mut subset.policy, stmt);
            }
        }
        subset
    }

    fn policy_stmt(&mut self, policy: &mut Policy, stmt: P<'_>) {
        let span = self.span(&stmt);
        match stmt.as_rule() {
            Rule::lb_stmt => {
                if let Some(lb) = self.load_balancer(stmt) {
                    self.set_once(&mut policy.load_balancer, lb, span, "load_balancer");
                }
            }
            Rule::connect_timeout_stmt => {
                if let Some(d) = self.duration(stmt.into_inner().nth(1).expect("grammar: duration")) {
                    if d.value == 0 {
                        self.error(Code::InvalidValue, d.span, "`connect_timeout` must be longer than 0ms", "zero");
                    } else {
                        self.set_once(&mut policy.connect_timeout, d.value, span, "connect_timeout");
                    }
                }
            }
            Rule::request_timeout_stmt => {
                if let Some(d) = self.duration(stmt.into_inner().nth(1).expect("grammar: duration")) {
                    self.set_once(&mut policy.request_timeout, d.value, span, "request_timeout");
                }
            }
            Rule::warmup_stmt => {
                if let Some(d) = self.duration(stmt.into_inner().nth(1).expect("grammar: duration")) {
                    if d.value == 0 {
                        self.error(Code::InvalidValue, d.span, "`warmup` must be longer than 0ms", "zero");
                    } else {
                        self.set_once(&mut policy.warmup, d.value, span, "warmup");
                    }
                }
            }
            Rule::limits_block => {
                let limits = self.limits(stmt);
                self.set_once(&mut policy.limits, limits, span, "limits");
            }
            Rule::outlier_block => {
                let outlier = self.outlier(stmt);
                self.set_once(&mut policy.outlier_detection, outlier, span, "outlier_detection");
            }
            Rule::health_check_block => {
                if let Some(check) = self.health_check(stmt) {
                    self.set_once(&mut policy.health_check, check, span, "health_check");
                }
            }
            Rule::tls_stmt => {
                let mut inner = stmt.into_inner().skip(1);
                let mode = match inner.next().expect("grammar: tls mode").as_str() {
                    "disable" => TlsMode::Disable,
                    "simple" => TlsMode::Simple,
                    "mutual" => TlsMode::Mutual,
                    _ => TlsMode::IstioMutual,
                };
                let sni = inner.nth(1).map(|it| self.string(it));
                self.set_once(&mut policy.tls, (mode, sni), span, "tls");
            }
            other => unreachable!("grammar: policy statement {other:?}"),
        }
    }

    fn load_balancer(&mut self, pair: P<'_>) -> Option<LoadBalancer> {
        let span = self.span(&pair);
        let mut inner = pair.into_inner().skip(1);
        let algorithm = inner.next().expect("grammar: lb algorithm").as_str().to_owned();
        let mut hash = None;
        let mut size = None;
        for part in inner {
            let part_span = self.span(&part);
            match part.as_rule() {
                Rule::hash_header => {
                    let name = self.string(part.into_inner().nth(1).expect("grammar: header"));
                    hash = Some(HashOn::Header { name: name.to_ascii_lowercase() });
                }
                Rule::hash_cookie => {
                    let mut cookie = part.into_inner().skip(1);
                    let name = self.string(cookie.next().expect("grammar: cookie name"));
                    let (mut path, mut ttl_ms) = (None, None);
                    while let Some(key) = cookie.next() {
                        let value = cookie.next().expect("grammar: cookie option value");
                        match key.as_rule() {
                            Rule::kw_path => path = Some(self.string(value)),
                            _ => ttl_ms = self.duration(value).map(|it| it.value),
                        }
                    }
                    hash = Some(HashOn::Cookie { name, path, ttl_ms });
                }
                Rule::hash_source_ip => hash = Some(HashOn::SourceIp),
                Rule::hash_query => {
                    let name = self.string(part.into_inner().nth(1).expect("grammar: query"));
                    hash = Some(HashOn::QueryParameter { name });
                }
                Rule::lb_size => {
                    let mut it = part.into_inner();
                    let key = it.next().expect("grammar: size key").as_str().to_owned();
                    let value = self.int::<u64>(it.next().expect("grammar: size"), 1, 8_388_608, &format!("`{key}`"))?;
                    size = Some((key, value.value, part_span));
                }
                other => unreachable!("grammar: lb part {other:?}"),
            }
        }
        let hashed = matches!(algorithm.as_str(), "ring_hash" | "maglev");
        if hashed != hash.is_some() {
            let message = if hashed {
                format!("`{algorithm}` needs a hash key: `header \"name\"`, `cookie \"name\"`, `source_ip` or `query \"name\"`")
            } else {
                format!("`{algorithm}` does not hash: only `ring_hash` and `maglev` take a hash key")
            };
            self.error(Code::InvalidValue, span, message, "");
            return None;
        }
        let lb = match algorithm.as_str() {
            "round_robin" => LoadBalancer::RoundRobin,
            "random" => LoadBalancer::Random,
            "least_request" => LoadBalancer::LeastRequest,
            "ring_hash" => {
                if let Some((key, _, at)) = size.as_ref().filter(|it| it.0 != "min_ring_size") {
                    self.error(Code::InvalidValue, *at, format!("`ring_hash` takes `min_ring_size`, not `{key}`"), "");
                    return None;
                }
                LoadBalancer::RingHash { hash: hash.expect("checked above"), min_ring_size: size.as_ref().map_or(1024, |it| it.1) }
            }
            _ => {
                if let Some((key, _, at)) = size.as_ref().filter(|it| it.0 != "table_size") {
                    self.error(Code::InvalidValue, *at, format!("`maglev` takes `table_size`, not `{key}`"), "");
                    return None;
                }
                let table_size = size.as_ref().map_or(65537, |it| it.1);
                if !is_prime(table_size) {
                    let at = size.as_ref().map_or(span, |it| it.2);
                    self.error(Code::InvalidValue, at, format!("a Maglev table size must be prime, and {table_size} is not"), "not prime");
                    return None;
                }
                // Envoy's bound, and memory's: a slot is four bytes.
                if table_size > 5_000_011 {
                    let at = size.as_ref().map_or(span, |it| it.2);
                    self.error(Code::InvalidValue, at, format!("a Maglev table has at most 5000011 slots, not {table_size}"), "too large");
                    return None;
                }
                LoadBalancer::Maglev { hash: hash.expect("checked above"), table_size }
            }
        };
        if let (Some((key, _, at)), false) = (&size, hashed) {
            self.error(Code::InvalidValue, *at, format!("`{key}` applies only to `ring_hash` and `maglev`"), "");
        }
        Some(lb)
    }

    /// Parses `key value` settings, calling `apply` for each; reports unknown keys with the valid ones.
    fn settings(&mut self, pair: P<'_>, block: &str, keys: &[&str], mut apply: impl FnMut(&mut Self, &str, Option<P<'_>>, Span)) {
        let mut seen: Vec<(String, Span)> = Vec::new();
        for setting in pair.into_inner().skip(1) {
            let span = self.span(&setting);
            let mut inner = setting.into_inner();
            let key = inner.next().expect("grammar: setting key").as_str().to_owned();
            let value = inner.next();
            if !keys.contains(&key.as_str()) {
                self.diagnostics.push(
                    Diagnostic::error(Code::InvalidValue, format!("unknown setting `{key}` in `{block}`"))
                        .primary(span, "not a setting of this block")
                        .help(format!("use one of: {}", keys.join(", "))),
                );
                continue;
            }
            if let Some((_, previous)) = seen.iter().find(|it| it.0 == key) {
                self.diagnostics.push(
                    Diagnostic::error(Code::DuplicateSetting, format!("`{key}` is set twice in `{block}`"))
                        .primary(span, "set again here")
                        .secondary(*previous, "first set here"),
                );
                continue;
            }
            seen.push((key.clone(), span));
            apply(self, &key, value, span);
        }
    }

    fn expect_value<'i>(&mut self, key: &str, value: Option<P<'i>>, rule: Rule, span: Span, what: &str) -> Option<P<'i>> {
        match value {
            Some(value) if value.as_rule() == rule => Some(value),
            _ => {
                self.error(Code::InvalidValue, span, format!("`{key}` takes {what}"), format!("expected {what}"));
                None
            }
        }
    }

    fn limits(&mut self, pair: P<'_>) -> ConnectionLimits {
        let span = self.span(&pair);
        let mut limits = ConnectionLimits::default();
        let keys = [
            "max_connections",
            "max_pending_requests",
            "max_requests",
            "max_retries",
            "max_requests_per_connection",
            "retry_budget",
            "min_retry_concurrency",
        ];
        self.settings(pair, "limits", &keys, |b, key, value, span| {
            if key == "retry_budget" {
                let Some(value) = b.expect_value(key, value, Rule::percent, span, "a percentage") else { return };
                if let Some(p) = b.percent(value) {
                    limits.retry_budget = Some(p.value);
                }
                return;
            }
            let Some(value) = b.expect_value(key, value, Rule::int, span, "a count") else { return };
            let Some(n) = b.int::<u32>(value, 1, u64::from(u32::MAX), &format!("`{key}`")).map(|it| it.value) else { return };
            match key {
                "max_connections" => limits.max_connections = Some(n),
                "max_pending_requests" => limits.max_pending_requests = Some(n),
                "max_requests" => limits.max_requests = Some(n),
                "max_retries" => limits.max_retries = Some(n),
                "min_retry_concurrency" => limits.min_retry_concurrency = Some(n),
                _ => limits.max_requests_per_connection = Some(n),
            }
        });
        if limits.min_retry_concurrency.is_some() && limits.retry_budget.is_none() {
            self.error(Code::InvalidValue, span, "`min_retry_concurrency` is part of a retry budget", "no `retry_budget` in this block");
        }
        limits
    }

    /// Istio's defaults: 5 consecutive 5xx, a 10 s sweep, 30 s base ejection, at most 10% ejected.
    fn outlier(&mut self, pair: P<'_>) -> OutlierDetection {
        let mut od = OutlierDetection {
            consecutive_5xx: Some(5),
            consecutive_gateway_errors: None,
            interval_ms: 10_000,
            base_ejection_time_ms: 30_000,
            max_ejection_percent: 10,
            min_health_percent: 0,
        };
        let keys = [
            "consecutive_5xx",
            "consecutive_gateway_errors",
            "interval",
            "base_ejection_time",
            "max_ejection_percent",
            "min_health_percent",
        ];
        self.settings(pair, "outlier_detection", &keys, |b, key, value, span| match key {
            "consecutive_5xx" | "consecutive_gateway_errors" => {
                let Some(value) = b.expect_value(key, value, Rule::int, span, "a count (0 disables it)") else { return };
                let Some(n) = b.int::<u32>(value, 0, u64::from(u32::MAX), &format!("`{key}`")).map(|it| it.value) else { return };
                let n = (n > 0).then_some(n);
                if key == "consecutive_5xx" {
                    od.consecutive_5xx = n;
                } else {
                    od.consecutive_gateway_errors = n;
                }
            }
            "interval" | "base_ejection_time" => {
                let Some(value) = b.expect_value(key, value, Rule::duration, span, "a duration") else { return };
                let Some(d) = b.duration(value) else { return };
                if d.value == 0 {
                    b.error(Code::InvalidValue, d.span, format!("`{key}` must be longer than 0ms"), "zero");
                } else if key == "interval" {
                    od.interval_ms = d.value;
                } else {
                    od.base_ejection_time_ms = d.value;
                }
            }
            _ => {
                let Some(value) = b.expect_value(key, value, Rule::percent, span, "a percentage") else { return };
                let Some(p) = b.percent(value) else { return };
                if p.value % 10_000 != 0 {
                    b.error(Code::InvalidValue, p.span, format!("`{key}` is a whole percentage"), "not whole");
                } else if key == "max_ejection_percent" {
                    od.max_ejection_percent = p.value / 10_000;
                } else {
                    od.min_health_percent = p.value / 10_000;
                }
            }
        });
        od
    }

    fn health_check(&mut self, pair: P<'_>) -> Option<HealthCheck> {
        let span = self.span(&pair);
        let mut probe = None;
        let mut check =
            HealthCheck { probe: HealthProbe::Tcp, interval_ms: 5_000, timeout_ms: 1_000, healthy_threshold: 2, unhealthy_threshold: 3 };
        let keys = ["http", "tcp", "interval", "timeout", "healthy_threshold", "unhealthy_threshold"];
        self.settings(pair, "health_check", &keys, |b, key, value, at| match key {
            "http" | "tcp" => {
                if probe.is_some() {
                    b.error(Code::DuplicateSetting, at, "a health check has one probe: `http` or `tcp`", "second probe");
                    return;
                }
                if key == "tcp" {
                    if value.is_some() {
                        b.error(Code::InvalidValue, at, "`tcp` takes no value", "");
                    }
                    probe = Some(HealthProbe::Tcp);
                } else if let Some(value) = b.expect_value(key, value, Rule::string, at, "a path such as \"/healthz\"") {
                    let path = b.string(value);
                    if path.starts_with('/') {
                        probe = Some(HealthProbe::Http { path });
                    } else {
                        b.error(Code::InvalidValue, at, format!("health-check path `{path}` must start with `/`"), "");
                    }
                }
            }
            "interval" | "timeout" => {
                let Some(value) = b.expect_value(key, value, Rule::duration, at, "a duration") else { return };
                let Some(d) = b.duration(value) else { return };
                if d.value == 0 {
                    b.error(Code::InvalidValue, d.span, format!("`{key}` must be longer than 0ms"), "zero");
                } else if key == "interval" {
                    check.interval_ms = d.value;
                } else {
                    check.timeout_ms = d.value;
                }
            }
            _ => {
                let Some(value) = b.expect_value(key, value, Rule::int, at, "a count") else { return };
                let Some(n) = b.int::<u32>(value, 1, 1000, &format!("`{key}`")).map(|it| it.value) else { return };
                if key == "healthy_threshold" {
                    check.healthy_threshold = n;
                } else {
                    check.unhealthy_threshold = n;
                }
            }
        });
        match probe {
            Some(probe) => Some(HealthCheck { probe, ..check }),
            None => {
                self.error(Code::InvalidValue, span, "a health check needs a probe: `http \"/path\"` or `tcp`", "no probe");
                None
            }
        }
    }

    // ------------------------------------------------------------ routes

    fn routes(&mut self, pair: P<'_>) -> Routes {
        let span = self.span(&pair);
        let mut inner = pair.into_inner().skip(1);
        let target = self.name(inner.next().expect("grammar: routes target"));
        let mut routes: Vec<Route> = Vec::new();
        for route in inner {
            let route = self.route(route);
            if let Some(previous) = routes.iter().find(|it| it.name.text == route.name.text) {
                self.diagnostics.push(
                    Diagnostic::error(Code::DuplicateName, format!("route `{}` is declared twice for `{}`", route.name.text, target.text))
                        .primary(route.name.span, "declared again here")
                        .secondary(previous.name.span, "first declared here"),
                );
                continue;
            }
            routes.push(route);
        }
        Routes { span, target, routes }
    }

    fn route(&mut self, pair: P<'_>) -> Route {
        let span = self.span(&pair);
        let mut inner = pair.into_inner().skip(1);
        let name = self.name(inner.next().expect("grammar: route name"));
        let mut route = Route {
            span,
            name,
            matches: Vec::new(),
            destinations: Vec::new(),
            rewrite: None,
            redirect: None,
            respond: None,
            timeout: None,
            retries: None,
            fault_delay: None,
            fault_abort: None,
            mirror: None,
            request_headers: Vec::new(),
            response_headers: Vec::new(),
            rate_limit: None,
        };
        for stmt in inner {
            let stmt_span = self.span(&stmt);
            match stmt.as_rule() {
                Rule::match_block => {
                    let conditions = stmt.into_inner().skip(1).map(|it| self.condition(it)).collect();
                    route.matches.push(MatchBlock { span: stmt_span, conditions });
                }
                Rule::to_stmt => {
                    let mut parts = stmt.into_inner().skip(1);
                    let service = self.name(parts.next().expect("grammar: to service"));
                    let mut dest = Destination { span: stmt_span, service, subset: None, port: None, weight: None };
                    for option in parts {
                        self.dest_option(option, &mut dest.subset, &mut dest.port, Some(&mut dest.weight));
                    }
                    route.destinations.push(dest);
                }
                Rule::rewrite_stmt => {
                    let mut rewrite = Rewrite::default();
                    for part in stmt.into_inner().skip(1) {
                        let part_span = self.span(&part);
                        let mut kv = part.into_inner();
                        let key = kv.next().expect("grammar: rewrite key");
                        let value = self.string(kv.next().expect("grammar: rewrite value"));
                        let slot = if key.as_rule() == Rule::kw_prefix { &mut rewrite.prefix } else { &mut rewrite.authority };
                        if slot.replace(value).is_some() {
                            self.error(
                                Code::DuplicateSetting,
                                part_span,
                                format!("`rewrite {}` is given twice", key.as_str()),
                                "again here",
                            );
                        }
                    }
                    self.set_once(&mut route.rewrite, rewrite, stmt_span, "rewrite");
                }
                Rule::redirect_stmt => {
                    let mut redirect = Redirect::default();
                    for part in stmt.into_inner().skip(1) {
                        let mut kv = part.into_inner();
                        let key = kv.next().expect("grammar: redirect key");
                        let value = kv.next().expect("grammar: redirect value");
                        match key.as_rule() {
                            Rule::kw_scheme => redirect.scheme = Some(self.name(value).text),
                            Rule::kw_authority => redirect.authority = Some(self.string(value)),
                            Rule::kw_port => redirect.port = self.port(value).map(|it| it.value),
                            Rule::kw_path => redirect.path = Some(self.string(value)),
                            _ => {
                                let code = self.int::<u16>(value, 300, 399, "a redirect code");
                                if let Some(code) = code {
                                    if matches!(code.value, 301 | 302 | 303 | 307 | 308) {
                                        redirect.code = Some(code);
                                    } else {
                                        self.error(Code::InvalidValue, code.span, "a redirect code is 301, 302, 303, 307 or 308", "");
                                    }
                                }
                            }
                        }
                    }
                    self.set_once(&mut route.redirect, redirect, stmt_span, "redirect");
                }
                Rule::respond_stmt => {
                    let mut parts = stmt.into_inner().skip(1);
                    let status = self.int::<u16>(parts.next().expect("grammar: status"), 200, 599, "a status code");
                    let body = parts.next().map(|it| self.string(it));
                    if let Some(status) = status {
                        self.set_once(&mut route.respond, (status.value, body), stmt_span, "respond");
                    }
                }
                Rule::timeout_stmt => {
                    if let Some(d) = self.duration(stmt.into_inner().nth(1).expect("grammar: timeout")) {
                        self.set_once(&mut route.timeout, d.value, stmt_span, "timeout");
                    }
                }
                Rule::retries_stmt => {
                    let mut parts = stmt.into_inner().skip(1);
                    let attempts = self.int::<u32>(parts.next().expect("grammar: attempts"), 0, 100, "the number of retries");
                    let mut retries = Retries {
                        attempts: attempts.map_or(0, |it| it.value),
                        per_try_timeout: None,
                        retry_on: Vec::new(),
                        any_method: false,
                    };
                    for part in parts {
                        let part_span = self.span(&part);
                        match part.as_rule() {
                            Rule::retry_per_try => {
                                if let Some(d) = self.duration(part.into_inner().nth(1).expect("grammar: per try")) {
                                    if d.value == 0 {
                                        self.error(Code::InvalidValue, d.span, "`per_try_timeout` must be longer than 0ms", "zero");
                                    } else {
                                        self.set_once(&mut retries.per_try_timeout, d.value, part_span, "per_try_timeout");
                                    }
                                }
                            }
                            Rule::retry_any_method => {
                                if retries.any_method {
                                    self.error(Code::DuplicateSetting, part_span, "`any_method` is given twice", "again");
                                }
                                retries.any_method = true;
                            }
                            _ => {
                                let list = part.into_inner().nth(1).expect("grammar: retry on list");
                                for value in self.names(list) {
                                    // `on "5xx,reset"` is Istio's spelling; split it too.
                                    for piece in value.text.split(',').map(str::trim).filter(|it| !it.is_empty()) {
                                        retries.retry_on.push(Name { text: piece.to_owned(), span: value.span });
                                    }
                                }
                            }
                        }
                    }
                    self.set_once(&mut route.retries, retries, stmt_span, "retries");
                }
                Rule::fault_stmt => {
                    let fault = stmt.into_inner().nth(1).expect("grammar: fault kind");
                    let mut parts = fault.clone().into_inner().skip(1);
                    if fault.as_rule() == Rule::fault_delay {
                        let delay = self.duration(parts.next().expect("grammar: delay"));
                        let pct = parts.next().map(|it| self.percent(it));
                        if let (Some(delay), Some(pct)) = (delay, pct.unwrap_or(Some(Spanned { value: 1_000_000, span: stmt_span }))) {
                            self.set_once(&mut route.fault_delay, (delay.value, pct.value), stmt_span, "fault delay");
                        }
                    } else {
                        let mut grpc = false;
                        let mut status = None;
                        let mut pct = Some(Spanned { value: 1_000_000, span: stmt_span });
                        for part in parts {
                            match part.as_rule() {
                                Rule::abort_grpc => grpc = true,
                                Rule::int if grpc => {
                                    status = self.int::<u32>(part, 1, 16, "a gRPC status code").map(|it| AbortStatus::Grpc(it.value))
                                }
                                Rule::int => {
                                    status = self.int::<u16>(part, 200, 599, "an HTTP status code").map(|it| AbortStatus::Http(it.value))
                                }
                                _ => pct = self.percent(part),
                            }
                        }
                        if let (Some(status), Some(pct)) = (status, pct) {
                            self.set_once(&mut route.fault_abort, (status, pct.value), stmt_span, "fault abort");
                        }
                    }
                }
                Rule::mirror_stmt => {
                    let mut parts = stmt.into_inner().skip(1);
                    let service = self.name(parts.next().expect("grammar: mirror service"));
                    let mut mirror = Mirror { span: stmt_span, service, subset: None, port: None, per_million: 1_000_000 };
                    for part in parts {
                        if part.as_rule() == Rule::percent {
                            if let Some(p) = self.percent(part) {
                                mirror.per_million = p.value;
                            }
                        } else {
                            self.dest_option(part, &mut mirror.subset, &mut mirror.port, None);
                        }
                    }
                    if let Some(previous) = &route.mirror {
                        self.diagnostics.push(
                            Diagnostic::error(Code::DuplicateSetting, "`mirror` is set twice in one block")
                                .primary(stmt_span, "set again here")
                                .secondary(previous.span, "first set here"),
                        );
                    } else {
                        route.mirror = Some(mirror);
                    }
                }
                Rule::header_stmt => {
                    let mut parts = stmt.into_inner();
                    let side = parts.next().expect("grammar: header side");
                    let op = parts.next().expect("grammar: header op");
                    let rule = op.as_rule();
                    let mut values = op.into_inner().skip(1);
                    let name_pair = values.next().expect("grammar: header name");
                    let name_span = self.span(&name_pair);
                    let name = Name { text: self.string(name_pair).to_ascii_lowercase(), span: name_span };
                    if !is_header_name(&name.text) {
                        self.error(Code::InvalidValue, name_span, format!("`{}` is not a valid header name", name.text), "");
                    }
                    let op = match rule {
                        Rule::header_set => HeaderOp::Set(name, self.string(values.next().expect("grammar: header value"))),
                        Rule::header_add => HeaderOp::Add(name, self.string(values.next().expect("grammar: header value"))),
                        _ => HeaderOp::Remove(name),
                    };
                    if side.as_rule() == Rule::request_side {
                        route.request_headers.push(op);
                    } else {
                        route.response_headers.push(op);
                    }
                }
                Rule::rate_limit_stmt => {
                    if let Some(limit) = self.rate_limit(stmt) {
                        self.set_once(&mut route.rate_limit, limit.value, stmt_span, "rate_limit");
                    }
                }
                other => unreachable!("grammar: route statement {other:?}"),
            }
        }
        route
    }

    fn dest_option(
        &mut self,
        option: P<'_>,
        subset: &mut Option<Name>,
        port: &mut Option<Spanned<u16>>,
        weight: Option<&mut Option<Spanned<u32>>>,
    ) {
        let span = self.span(&option);
        let rule = option.as_rule();
        let value = option.into_inner().nth(1).expect("grammar: option value");
        let duplicate = match rule {
            Rule::dest_subset => subset.replace(self.name(value)).is_some(),
            Rule::dest_port => match self.port(value) {
                Some(p) => port.replace(p).is_some(),
                None => false,
            },
            _ => match (weight, self.int::<u32>(value, 0, 1_000_000, "a weight")) {
                (Some(slot), Some(w)) => slot.replace(w).is_some(),
                _ => false,
            },
        };
        if duplicate {
            self.error(Code::DuplicateSetting, span, "this option is given twice", "again here");
        }
    }

    fn condition(&mut self, pair: P<'_>) -> Condition {
        let span = self.span(&pair);
        let rule = pair.as_rule();
        let mut inner = pair.into_inner().skip(1);
        let field = match rule {
            Rule::cond_authority => Field::Authority,
            Rule::cond_path => Field::Path,
            Rule::cond_method => Field::Method,
            Rule::cond_service => Field::Service,
            Rule::cond_version => Field::Version,
            Rule::cond_group => Field::Group,
            Rule::cond_port => {
                let value = inner.next().expect("grammar: port");
                let value_span = self.span(&value);
                let text = match self.port(value) {
                    Some(port) => port.value.to_string(),
                    None => String::new(),
                };
                return Condition { span, field: Field::Port, test: Test::Match { kind: StringMatchKind::Exact, value: text, value_span } };
            }
            Rule::cond_header | Rule::cond_query => {
                let name_pair = inner.next().expect("grammar: header or query name");
                let name_span = self.span(&name_pair);
                let name = self.string(name_pair);
                if rule == Rule::cond_header {
                    if !is_header_name(&name) {
                        self.error(Code::InvalidValue, name_span, format!("`{name}` is not a valid header name"), "");
                    }
                    Field::Header(name.to_ascii_lowercase())
                } else {
                    Field::Query(name)
                }
            }
            other => unreachable!("grammar: condition {other:?}"),
        };
        let test = inner.next().expect("grammar: condition test");
        let test = match test.as_rule() {
            Rule::present => Test::Present,
            Rule::absent => Test::Absent,
            _ => {
                let mut parts = test.into_inner();
                let first = parts.next().expect("grammar: match value");
                let (kind, value) = match first.as_rule() {
                    Rule::match_kind => {
                        let kind = match first.as_str() {
                            "exact" => StringMatchKind::Exact,
                            "prefix" => StringMatchKind::Prefix,
                            _ => StringMatchKind::Regex,
                        };
                        (kind, parts.next().expect("grammar: match value"))
                    }
                    _ => (StringMatchKind::Exact, first),
                };
                let value_span = self.span(&value);
                let text = if value.as_rule() == Rule::string { self.string(value) } else { value.as_str().to_owned() };
                Test::Match { kind, value: text, value_span }
            }
        };
        Condition { span, field, test }
    }

    // ------------------------------------------------------------ authorization

    fn authorization(&mut self, pair: P<'_>) -> Authorization {
        let span = self.span(&pair);
        let mut inner = pair.into_inner().skip(1);
        let name = self.name(inner.next().expect("grammar: policy name"));
        let mut policy = Authorization { span, name, workloads: None, action: None, rules: Vec::new() };
        for stmt in inner {
            let stmt_span = self.span(&stmt);
            match stmt.as_rule() {
                Rule::authz_workloads => {
                    let list = self.names(stmt.into_inner().nth(1).expect("grammar: workload list"));
                    self.set_once(&mut policy.workloads, list, stmt_span, "workloads");
                }
                Rule::authz_action => {
                    let action = match stmt.into_inner().nth(1).expect("grammar: verb").as_str() {
                        "allow" => AuthzAction::Allow,
                        "deny" => AuthzAction::Deny,
                        _ => AuthzAction::Audit,
                    };
                    self.set_once(&mut policy.action, action, stmt_span, "action");
                }
                Rule::authz_rule => {
                    let mut rule = AuthzRule { span: stmt_span, from: Vec::new(), to: Vec::new(), when: Vec::new() };
                    for part in stmt.into_inner().skip(1) {
                        let part_span = self.span(&part);
                        match part.as_rule() {
                            Rule::from_block | Rule::to_block => {
                                let is_from = part.as_rule() == Rule::from_block;
                                let fields = part.into_inner().skip(1).map(|it| self.authz_field(it)).collect();
                                let block = FieldBlock { span: part_span, fields };
                                if is_from {
                                    rule.from.push(block);
                                } else {
                                    rule.to.push(block);
                                }
                            }
                            _ => rule.when.push(self.when(part)),
                        }
                    }
                    policy.rules.push(rule);
                }
                other => unreachable!("grammar: authorization statement {other:?}"),
            }
        }
        policy
    }

    fn authz_field(&mut self, pair: P<'_>) -> AuthzField {
        let span = self.span(&pair);
        let mut negated = false;
        let mut key = None;
        let mut values = Vec::new();
        for part in pair.into_inner() {
            match part.as_rule() {
                Rule::negated => negated = true,
                Rule::setting_key => key = Some(Name { text: part.as_str().to_owned(), span: self.span(&part) }),
                _ => values = self.names(part),
            }
        }
        AuthzField { span, negated, key: key.expect("grammar: field key"), values }
    }

    fn when(&mut self, pair: P<'_>) -> When {
        let span = self.span(&pair);
        let mut inner = pair.into_inner().skip(1);
        let key_pair = inner.next().expect("grammar: when key");
        let key_span = self.span(&key_pair);
        let key_inner = key_pair.into_inner().next().expect("grammar: when key child");
        let key = if key_inner.as_rule() == Rule::when_header {
            let header = self.string(key_inner.into_inner().nth(1).expect("grammar: header name"));
            Name { text: format!("request.headers[{}]", header.to_ascii_lowercase()), span: key_span }
        } else {
            self.name(key_inner)
        };
        let negated = inner.next().expect("grammar: when op").as_rule() == Rule::when_not_in;
        let values = self.names(inner.next().expect("grammar: when values"));
        When { span, key, negated, values }
    }

    // ------------------------------------------------------------ workloads and telemetry

    fn workload(&mut self, pair: P<'_>) -> Workload {
        let span = self.span(&pair);
        let mut inner = pair.into_inner().skip(1);
        let name = self.name(inner.next().expect("grammar: workload name"));
        let mut workload = Workload {
            span,
            name,
            namespace: None,
            service_account: None,
            serves: Vec::new(),
            calls: None,
            rate_limit: None,
            telemetry: None,
            mtls: None,
            port_mtls: Vec::new(),
            rpc_listener: None,
        };
        let mut namespace: Option<Spanned<Name>> = None;
        let mut account: Option<Spanned<Name>> = None;
        for stmt in inner {
            let stmt_span = self.span(&stmt);
            match stmt.as_rule() {
                Rule::wl_namespace => {
                    let value = self.name(stmt.into_inner().nth(1).expect("grammar: namespace"));
                    self.set_once(&mut namespace, value, stmt_span, "namespace");
                }
                Rule::wl_service_account => {
                    let value = self.name(stmt.into_inner().nth(1).expect("grammar: service account"));
                    self.set_once(&mut account, value, stmt_span, "service_account");
                }
                Rule::wl_serves => workload.serves.extend(self.names(stmt.into_inner().nth(1).expect("grammar: serves list"))),
                Rule::wl_calls => {
                    let list = stmt.into_inner().nth(1).expect("grammar: calls list");
                    let calls = if list.as_rule() == Rule::star { Calls::All } else { Calls::Only(self.names(list)) };
                    self.set_once(&mut workload.calls, calls, stmt_span, "calls");
                }
                Rule::wl_rpc_listener => {
                    let mode = match stmt.into_inner().nth(1).map(|it| it.as_str()) {
                        Some("auto") => RpcListener::Auto,
                        _ => RpcListener::PerProtocol,
                    };
                    self.set_once(&mut workload.rpc_listener, mode, stmt_span, "rpc_listener");
                }
                Rule::rate_limit_stmt => {
                    if let Some(limit) = self.rate_limit(stmt) {
                        self.set_once(&mut workload.rate_limit, limit.value, stmt_span, "rate_limit");
                    }
                }
                Rule::wl_mtls => {
                    let mut parts = stmt.into_inner().skip(1);
                    let mut port = None;
                    let mut mode = MtlsMode::Permissive;
                    for part in parts.by_ref() {
                        match part.as_rule() {
                            Rule::int => port = Some(self.int::<u16>(part, 1, 65535, "a port")),
                            Rule::mtls_mode => {
                                mode = match part.as_str() {
                                    "strict" => MtlsMode::Strict,
                                    "disable" => MtlsMode::Disable,
                                    _ => MtlsMode::Permissive,
                                }
                            }
                            _ => {}
                        }
                    }
                    match port {
                        None => self.set_once(&mut workload.mtls, mode, stmt_span, "mtls"),
                        Some(Some(port)) => {
                            if let Some(previous) = workload.port_mtls.iter().find(|it| it.0.value == port.value) {
                                let previous = previous.0.span;
                                self.diagnostics.push(
                                    Diagnostic::error(
                                        Code::DuplicateSetting,
                                        format!("`mtls port {}` is set twice in one workload", port.value),
                                    )
                                    .primary(stmt_span, "set again here")
                                    .secondary(previous, "first set here"),
                                );
                            } else {
                                workload.port_mtls.push((port, mode));
                            }
                        }
                        Some(None) => {}
                    }
                }
                Rule::telemetry => {
                    let telemetry = self.telemetry(stmt);
                    if let Some(previous) = &workload.telemetry {
                        self.diagnostics.push(
                            Diagnostic::error(Code::DuplicateSetting, "`telemetry` is set twice in one workload")
                                .primary(telemetry.span, "set again here")
                                .secondary(previous.span, "first set here"),
                        );
                    } else {
                        workload.telemetry = Some(telemetry);
                    }
                }
                other => unreachable!("grammar: workload statement {other:?}"),
            }
        }
        workload.namespace = namespace.map(|it| it.value);
        workload.service_account = account.map(|it| it.value);
        workload
    }

    fn telemetry(&mut self, pair: P<'_>) -> Telemetry {
        let span = self.span(&pair);
        let mut telemetry =
            Telemetry { span, access_log: None, access_log_format: None, metric_labels: Vec::new(), request_id: None, tracing: None };
        for stmt in pair.into_inner().skip(1) {
            let stmt_span = self.span(&stmt);
            match stmt.as_rule() {
                Rule::access_log_switch => {
                    let on = stmt.into_inner().nth(1).expect("grammar: on/off").as_rule() == Rule::log_on;
                    self.set_once(&mut telemetry.access_log, on, stmt_span, "access_log");
                }
                Rule::request_id_switch => {
                    let on = stmt.into_inner().nth(1).expect("grammar: on/off").as_rule() == Rule::log_on;
                    self.set_once(&mut telemetry.request_id, on, stmt_span, "request_id");
                }
                Rule::tracing_switch => {
                    let on = stmt.into_inner().nth(1).expect("grammar: on/off").as_rule() == Rule::log_on;
                    self.set_once(&mut telemetry.tracing, on, stmt_span, "tracing");
                }
                Rule::access_log_format => {
                    let format = stmt.into_inner().nth(2).expect("grammar: format");
                    let value = match format.as_rule() {
                        Rule::log_json => None,
                        _ => Some(self.string(format.into_inner().nth(1).expect("grammar: format text"))),
                    };
                    self.set_once(&mut telemetry.access_log_format, value, stmt_span, "access_log format");
                }
                Rule::metric_label => {
                    let mut parts = stmt.into_inner().skip(1);
                    let name = self.name(parts.next().expect("grammar: label name"));
                    let value = self.name(parts.next().expect("grammar: label value"));
                    if let Some(previous) = telemetry.metric_labels.iter().find(|it| it.0.text == name.text) {
                        self.diagnostics.push(
                            Diagnostic::error(Code::DuplicateSetting, format!("metric label `{}` is set twice", name.text))
                                .primary(name.span, "set again here")
                                .secondary(previous.0.span, "first set here"),
                        );
                    } else {
                        telemetry.metric_labels.push((name, value));
                    }
                }
                other => unreachable!("grammar: telemetry statement {other:?}"),
            }
        }
        telemetry
    }
}

/// `text` (decimal, at most `log10(scale)` fraction digits that leave no remainder) × `scale`.
fn decimal_times(text: &str, scale: u64) -> Option<u64> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let whole: u64 = whole.parse().ok()?;
    let mut value = whole.checked_mul(scale)?;
    if !fraction.is_empty() {
        let digits = u32::try_from(fraction.len()).ok()?;
        let denominator = 10u64.checked_pow(digits)?;
        let numerator: u64 = fraction.parse().ok()?;
        let scaled = numerator.checked_mul(scale)?;
        if scaled % denominator != 0 {
            return None;
        }
        value = value.checked_add(scaled / denominator)?;
    }
    Some(value)
}

/// The length of `text` once trailing whitespace and comments are dropped.
fn without_trailing_trivia(text: &str) -> usize {
    let mut end = text.len();
    loop {
        end = text[..end].trim_end().len();
        let line_start = text[..end].rfind('\n').map_or(0, |at| at + 1);
        match comment_start(&text[line_start..end]) {
            Some(at) => end = line_start + at,
            None => return end,
        }
    }
}

/// Where a `#` or `//` comment starts in a line, outside strings.
fn comment_start(line: &str) -> Option<usize> {
    let bytes = line.as_bytes();
    let mut in_string = false;
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'\\' if in_string => index += 1,
            b'"' => in_string = !in_string,
            b'#' if !in_string => return Some(index),
            b'/' if !in_string && bytes.get(index + 1) == Some(&b'/') => return Some(index),
            _ => {}
        }
        index += 1;
    }
    None
}

/// RFC 9110 token characters.
fn is_header_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)) || name == ":authority"
}

fn is_prime(n: u64) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_scale_exactly() {
        assert_eq!(decimal_times("1.5", 1000), Some(1500));
        assert_eq!(decimal_times("250", 1), Some(250));
        assert_eq!(decimal_times("0.5", 1), None);
        assert_eq!(decimal_times("12.5", 10_000), Some(125_000));
        assert_eq!(decimal_times("99999999999999999999", 1), None);
    }

    #[test]
    fn trailing_comments_and_whitespace_leave_spans() {
        assert_eq!(without_trailing_trivia("port 9080 http\n  "), 14);
        assert_eq!(without_trailing_trivia("port 9080 # main port\n  # more\n"), 9);
        assert_eq!(without_trailing_trivia("respond 503 \"a # b\" // c"), 19);
    }

    #[test]
    fn primes() {
        assert!(is_prime(65537));
        assert!(!is_prime(65536));
    }
}
