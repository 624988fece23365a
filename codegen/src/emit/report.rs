//! `routes.txt`: the routing of a mesh as a table, one row per route, so that a pull request
//! that changes routing shows the change in a form people read.

use std::fmt::Write as _;

use crate::ir::{Action, HeaderOps, Match, Mesh, PresenceMatch, RouteTableKind, StringMatch, StringMatchKind};

/// The report, deterministic and free of paths and versions.
pub fn routes_txt(mesh: &Mesh) -> String {
    let mut rows: Vec<[String; 5]> = Vec::new();
    for table in &mesh.route_tables {
        let kind = match &table.kind {
            RouteTableKind::Http { .. } => "http",
            RouteTableKind::Tcp { .. } => "tcp",
            RouteTableKind::Rpc { protocol, .. } => protocol.as_str(),
        };
        for route in &table.routes {
            let matches = if route.matches.is_empty() {
                "*".to_owned()
            } else {
                route.matches.iter().map(describe_match).collect::<Vec<_>>().join(" | ")
            };
            rows.push([
                format!("{kind} {}", table.name),
                route.name.clone(),
                matches,
                describe_action(mesh, &route.action),
                extras(mesh, route),
            ]);
        }
    }
    let mut widths = [0usize; 4];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row.iter()) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = format!("# Routes of mesh `{}`: one row per route, tried in order within a table.\n", mesh.name);
    out.push_str("# table | route | match | action | timeout, retries, faults, headers\n");
    for row in rows {
        let mut line = String::new();
        for (index, cell) in row.iter().enumerate() {
            if index < 4 {
                let _ = write!(line, "{cell:<width$}  ", width = widths[index]);
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.push_str("\n# Workloads: what each may call and what protects it.\n");
    for workload in &mesh.workloads {
        let tables = workload.outbound.len();
        let policies: Vec<&str> = workload.authz.iter().map(|it| mesh.authz_policies[it.index()].name.as_str()).collect();
        let inbound: Vec<String> = workload.inbound.iter().map(|it| format!("{} {}", it.port, it.protocol.as_str())).collect();
        let _ = writeln!(
            out,
            "workload {}: {} route table(s), inbound [{}], authorization [{}]",
            workload.name,
            tables,
            inbound.join(", "),
            policies.join(", ")
        );
    }
    out
}

fn describe_string(condition: &StringMatch) -> String {
    match condition.kind {
        StringMatchKind::Exact => format!("= {:?}", condition.value),
        StringMatchKind::Prefix => format!("^= {:?}", condition.value),
        StringMatchKind::Regex => format!("~ {:?}", condition.value),
    }
}

/// One alternative in words: `path ^= "/api" & header x present`.
pub fn describe_match(m: &Match) -> String {
    let mut parts = Vec::new();
    let fields = [
        ("authority", &m.authority),
        ("path", &m.path),
        ("method", &m.method),
        ("service", &m.service),
        ("version", &m.version),
        ("group", &m.group),
    ];
    for (name, condition) in fields {
        if let Some(condition) = condition {
            parts.push(format!("{name} {}", describe_string(condition)));
        }
    }
    for (what, name, kind) in
        m.headers.iter().map(|it| ("header", &it.name, &it.kind)).chain(m.query.iter().map(|it| ("query", &it.name, &it.kind)))
    {
        parts.push(match kind {
            PresenceMatch::Present => format!("{what} {name} present"),
            PresenceMatch::Absent => format!("{what} {name} absent"),
            PresenceMatch::Value(condition) => format!("{what} {name} {}", describe_string(condition)),
        });
    }
    if let Some(port) = m.port {
        parts.push(format!("port {port}"));
    }
    parts.join(" & ")
}

/// A route's action in words, destinations by cluster name.
pub fn describe_action(mesh: &Mesh, action: &Action) -> String {
    match action {
        Action::Forward { destinations, rewrite } => {
            let mut text = destinations
                .iter()
                .map(|it| {
                    let cluster = &mesh.clusters[it.cluster.index()];
                    format!("{} {}%", cluster.name, it.weight)
                })
                .collect::<Vec<_>>()
                .join(", ");
            if let Some(rewrite) = rewrite {
                if let Some(prefix) = &rewrite.prefix {
                    let _ = write!(text, " rewrite path {prefix:?}");
                }
                if let Some(authority) = &rewrite.authority {
                    let _ = write!(text, " rewrite authority {authority:?}");
                }
            }
            format!("-> {text}")
        }
        Action::Redirect { status, path, authority, .. } => {
            format!("redirect {status} {}", [authority.as_deref(), path.as_deref()].iter().flatten().copied().collect::<Vec<_>>().join(""))
        }
        Action::DirectResponse { status, .. } => format!("respond {status}"),
    }
}

/// Timeout, retries, faults, mirror, rate limit and header operations in words.
pub fn extras(mesh: &Mesh, route: &crate::ir::Route) -> String {
    let mut parts = Vec::new();
    if let Some(ms) = route.timeout_ms {
        parts.push(format!("timeout {ms}ms"));
    }
    if route.retries.attempts > 0 {
        parts.push(format!("retries {} on {}", route.retries.attempts, route.retries.retry_on.join(",")));
    }
    if let Some(fault) = &route.fault {
        if fault.delay.is_some() {
            parts.push("fault delay".to_owned());
        }
        if fault.abort.is_some() {
            parts.push("fault abort".to_owned());
        }
    }
    if let Some(mirror) = &route.mirror {
        parts.push(format!("mirror {}% to {}", f64::from(mirror.per_million) / 10_000.0, mesh.clusters[mirror.cluster.index()].name));
    }
    if let Some(limit) = &route.rate_limit {
        parts.push(format!("rate limit {}/{}ms", limit.tokens_per_fill, limit.fill_interval_ms));
    }
    let ops = |side: &str, ops: &HeaderOps| {
        (!ops.is_empty()).then(|| format!("{side} headers {}", ops.set.len() + ops.add.len() + ops.remove.len()))
    };
    parts.extend(ops("request", &route.request_headers));
    parts.extend(ops("response", &route.response_headers));
    parts.join("; ")
}
