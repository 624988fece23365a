//! `meshc diff`: what changes for traffic between two versions of a mesh.
//!
//! The comparison is semantic, on the two IRs, by name: route tables, routes (added, removed,
//! moved, and their matches, actions, timeouts, retries and other settings), clusters'
//! policies, instances, workloads and authorization policies. Ids and file hashes, which
//! change without changing traffic, are ignored.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use meshc_codegen::emit::report::{describe_action, describe_match, extras};
use meshc_codegen::ir::{self, Mesh};
use serde::Serialize;

use crate::source::{DiskFs, MemFs, Vfs};

/// Arguments of `meshc diff`.
#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// The old mesh directory, or the only one with `--git`.
    pub old: PathBuf,
    /// The new mesh directory.
    #[arg(required_unless_present_any = ["git", "pilot"])]
    pub new: Option<PathBuf>,
    /// Compare DIR as it is with DIR at this git revision.
    #[arg(long, value_name = "REV", conflicts_with = "new")]
    pub git: Option<String>,
    /// Compare what DIR compiles to with what the `meshc pilot` at ADDR serves, as xDS
    /// resources per workload ("was" is Pilot's, "now" is DIR's).
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["new", "git"])]
    pub pilot: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = DiffFormat::Human)]
    pub format: DiffFormat,
}

/// Output format of `meshc diff`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DiffFormat {
    /// Readable text.
    Human,
    /// JSON.
    Json,
}

/// One difference.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    /// `added`, `removed` or `changed`.
    pub kind: &'static str,
    /// What it is about: `route table`, `route`, `cluster`, `instance`, `workload`, `authorization`.
    pub subject: &'static str,
    /// Where: `<table>` or `<table> / <route>`, a cluster, a service host, a workload.
    pub path: String,
    /// Which aspect changed, for `changed`.
    pub field: Option<String>,
    /// The old value, in words.
    pub before: Option<String>,
    /// The new value, in words.
    pub after: Option<String>,
}

/// Runs `meshc diff`: exit 0 without differences, 1 with some, 2 when a mesh cannot be read.
pub fn run(args: &DiffArgs) -> ExitCode {
    if let Some(pilot) = &args.pilot {
        let Some(mesh) = compile(&DiskFs::new(&args.old), &args.old, None) else { return ExitCode::from(2) };
        let changes = match against_pilot(&mesh, pilot) {
            Ok(it) => it,
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::from(2);
            }
        };
        return report(args.format, &changes);
    }
    let (old, new) = match &args.git {
        Some(rev) => match at_revision(&args.old, rev) {
            Ok(old) => (compile(&old, &args.old, Some(rev)), compile(&DiskFs::new(&args.old), &args.old, None)),
            Err(err) => {
                eprintln!("error: {err}");
                return ExitCode::from(2);
            }
        },
        None => {
            let new = args.new.as_ref().expect("clap requires NEW without --git");
            (compile(&DiskFs::new(&args.old), &args.old, None), compile(&DiskFs::new(new), new, None))
        }
    };
    let (Some(old), Some(new)) = (old, new) else { return ExitCode::from(2) };
    report(args.format, &diff(&old, &new))
}

fn report(format: DiffFormat, changes: &[Change]) -> ExitCode {
    match format {
        DiffFormat::Human => print!("{}", render(changes)),
        DiffFormat::Json => println!("{}", serde_json::to_string_pretty(changes).unwrap_or_default()),
    }
    if changes.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

/// The most leaf differences reported per resource.
const LEAVES_PER_RESOURCE: usize = 20;

/// How what `mesh` compiles to differs from what the Pilot at `address` serves, per workload
/// and xDS resource: a resource only DIR has is `added`, one only Pilot serves `removed`, and
/// a resource both have but differently is `changed` at each differing field.
pub fn against_pilot(mesh: &Mesh, address: &str) -> Result<Vec<Change>, String> {
    use crate::pilot::served;
    use meshc_codegen::emit::xds::{self, Client};
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|err| format!("no async runtime: {err}"))?;
    let mut changes = Vec::new();
    for workload in &mesh.workloads {
        let compiled = served::compiled(&xds::workload_resources(mesh, workload, Client::Envoy));
        let served = match runtime.block_on(served::fetch(address, &workload.name)) {
            Ok(it) => it,
            Err(err) if err.contains("names no workload") => {
                changes.push(Change {
                    kind: "added",
                    subject: "workload",
                    path: workload.name.clone(),
                    field: None,
                    before: None,
                    after: Some("Pilot serves no such workload".to_owned()),
                });
                continue;
            }
            Err(err) => return Err(err),
        };
        let subject = |type_url: &str| match type_url {
            xds::CLUSTER => "xds cluster",
            xds::CLUSTER_LOAD_ASSIGNMENT => "xds endpoints",
            xds::LISTENER => "xds listener",
            _ => "xds routes",
        };
        let keys: BTreeSet<&(&str, String)> = compiled.keys().chain(served.keys()).collect();
        for key in keys {
            let path = format!("{} / {}", workload.name, key.1);
            let change = |kind, field, before, after| Change { kind, subject: subject(key.0), path: path.clone(), field, before, after };
            match (served.get(key), compiled.get(key)) {
                (None, Some(_)) => changes.push(change("added", None, None, Some("only in DIR".to_owned()))),
                (Some(_), None) => changes.push(change("removed", None, Some("only served by Pilot".to_owned()), None)),
                (Some(before), Some(after)) => {
                    for (field, before, after) in served::json_differences(before, after, LEAVES_PER_RESOURCE) {
                        changes.push(change("changed", Some(field), Some(before), Some(after)));
                    }
                }
                (None, None) => {}
            }
        }
    }
    Ok(changes)
}

/// Compiles the mesh `vfs` holds: directory `dir`, or what it held at git revision `rev` (whose
/// files have the same paths), printing its diagnostics when it does not compile.
fn compile(vfs: &dyn Vfs, dir: &Path, rev: Option<&str>) -> Option<Mesh> {
    let mut compilation = crate::compile(vfs);
    if compilation.ir.is_none() {
        compilation.sources.show_under(dir);
        match rev {
            Some(rev) => eprintln!("error: {} at {rev} does not compile:", dir.display()),
            None => eprintln!("error: {} does not compile:", dir.display()),
        }
        crate::diag::emit_to_stderr(&compilation.sources, &compilation.diagnostics, false);
    }
    compilation.ir
}

/// The mesh directory `dir` as it was at git revision `rev`, read with `git show`.
pub fn at_revision(dir: &Path, rev: &str) -> Result<MemFs, String> {
    let git = |args: &[&str]| -> Result<Vec<u8>, String> {
        let output = Command::new("git").arg("-C").arg(dir).args(args).output().map_err(|err| format!("cannot run git: {err}"))?;
        if output.status.success() {
            Ok(output.stdout)
        } else {
            Err(format!("git {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim()))
        }
    };
    let prefix = String::from_utf8_lossy(&git(&["rev-parse", "--show-prefix"])?).trim().to_owned();
    let listing = git(&["ls-tree", "-r", "--name-only", "--full-name", rev, "--", "."])?;
    let mut fs = MemFs::new();
    for path in String::from_utf8_lossy(&listing).lines() {
        let relative = path.strip_prefix(&prefix).unwrap_or(path);
        let bytes = git(&["show", &format!("{rev}:{path}")])?;
        fs.insert(relative, bytes);
    }
    if !fs.files.contains_key(crate::manifest::MANIFEST) {
        return Err(format!("{} at {rev} has no {}", dir.display(), crate::manifest::MANIFEST));
    }
    Ok(fs)
}

/// Every difference between two meshes, in a stable order.
pub fn diff(old: &Mesh, new: &Mesh) -> Vec<Change> {
    let mut changes = Vec::new();
    route_tables(old, new, &mut changes);
    clusters(old, new, &mut changes);
    instances(old, new, &mut changes);
    workloads(old, new, &mut changes);
    policies(old, new, &mut changes);
    changes
}

fn change(kind: &'static str, subject: &'static str, path: String) -> Change {
    Change { kind, subject, path, field: None, before: None, after: None }
}

fn changed(subject: &'static str, path: String, field: &str, before: String, after: String) -> Change {
    Change { kind: "changed", subject, path, field: Some(field.to_owned()), before: Some(before), after: Some(after) }
}

/// Items present in both, or only in one, by key.
fn pair<'a, T, K: Ord + Clone>(old: &'a [T], new: &'a [T], key: impl Fn(&T) -> K) -> Vec<(K, Option<&'a T>, Option<&'a T>)> {
    let mut map: BTreeMap<K, (Option<&T>, Option<&T>)> = BTreeMap::new();
    for it in old {
        map.entry(key(it)).or_default().0 = Some(it);
    }
    for it in new {
        map.entry(key(it)).or_default().1 = Some(it);
    }
    map.into_iter().map(|(k, (a, b))| (k, a, b)).collect()
}

fn route_tables(old: &Mesh, new: &Mesh, changes: &mut Vec<Change>) {
    for (name, before, after) in pair(&old.route_tables, &new.route_tables, |it| it.name.clone()) {
        match (before, after) {
            (Some(_), None) => changes.push(change("removed", "route table", name)),
            (None, Some(table)) => {
                let mut added = change("added", "route table", name);
                added.after = Some(table.routes.iter().map(|it| it.name.clone()).collect::<Vec<_>>().join(", "));
                changes.push(added);
            }
            (Some(a), Some(b)) => routes(old, new, &name, a, b, changes),
            (None, None) => {}
        }
    }
}

fn routes(old: &Mesh, new: &Mesh, table: &str, a: &ir::RouteTable, b: &ir::RouteTable, changes: &mut Vec<Change>) {
    let order_a: Vec<&str> = a.routes.iter().map(|it| it.name.as_str()).collect();
    let order_b: Vec<&str> = b.routes.iter().map(|it| it.name.as_str()).collect();
    for (name, before, after) in pair(&a.routes, &b.routes, |it| it.name.clone()) {
        let path = format!("{table} / {name}");
        match (before, after) {
            (Some(route), None) => {
                let mut removed = change("removed", "route", path);
                removed.before = Some(route_words(old, route));
                changes.push(removed);
            }
            (None, Some(route)) => {
                let mut added = change("added", "route", path);
                let position = order_b.iter().position(|it| *it == name).map_or(0, |it| it + 1);
                added.after = Some(format!("at position {position}: {}", route_words(new, route)));
                changes.push(added);
            }
            (Some(x), Some(y)) => {
                let fields = [
                    ("match", matches_words(&x.matches), matches_words(&y.matches)),
                    ("action", describe_action(old, &x.action), describe_action(new, &y.action)),
                    ("settings", extras(old, x), extras(new, y)),
                ];
                for (field, before, after) in fields {
                    if before != after {
                        changes.push(changed("route", path.clone(), field, before, after));
                    }
                }
            }
            (None, None) => {}
        }
    }
    // Order matters (first match wins): report routes kept in both whose relative order changed.
    let common: BTreeSet<&str> = order_a.iter().filter(|it| order_b.contains(it)).copied().collect();
    let kept_a: Vec<&str> = order_a.iter().filter(|it| common.contains(*it)).copied().collect();
    let kept_b: Vec<&str> = order_b.iter().filter(|it| common.contains(*it)).copied().collect();
    if kept_a != kept_b {
        changes.push(changed("route table", table.to_owned(), "order", kept_a.join(", "), kept_b.join(", ")));
    }
}

fn matches_words(matches: &[ir::Match]) -> String {
    if matches.is_empty() { "*".to_owned() } else { matches.iter().map(describe_match).collect::<Vec<_>>().join(" | ") }
}

fn route_words(mesh: &Mesh, route: &ir::Route) -> String {
    let extras = extras(mesh, route);
    let mut text = format!("{} {}", matches_words(&route.matches), describe_action(mesh, &route.action));
    if !extras.is_empty() {
        text.push_str("; ");
        text.push_str(&extras);
    }
    text
}

fn clusters(old: &Mesh, new: &Mesh, changes: &mut Vec<Change>) {
    for (name, before, after) in pair(&old.clusters, &new.clusters, |it| it.name.clone()) {
        match (before, after) {
            (Some(_), None) => changes.push(change("removed", "cluster", name)),
            (None, Some(_)) => changes.push(change("added", "cluster", name)),
            (Some(a), Some(b)) => {
                let policy = |it: &ir::Cluster| serde_json::to_string(&it.policy).unwrap_or_default();
                if a.policy != b.policy {
                    changes.push(changed("cluster", name.clone(), "policy", policy(a), policy(b)));
                }
                if a.protocol != b.protocol {
                    changes.push(changed("cluster", name, "protocol", a.protocol.as_str().to_owned(), b.protocol.as_str().to_owned()));
                }
            }
            (None, None) => {}
        }
    }
}

fn instances(old: &Mesh, new: &Mesh, changes: &mut Vec<Change>) {
    let key =
        |mesh: &Mesh, it: &ir::Instance| (mesh.services[it.service.index()].host.clone(), it.service_port, it.address.clone(), it.port);
    let old_keys: Vec<_> = old.instances.iter().map(|it| (key(old, it), it)).collect();
    let new_keys: Vec<_> = new.instances.iter().map(|it| (key(new, it), it)).collect();
    for ((host, service_port, address, port), before, after) in pair(&old_keys, &new_keys, |it| it.0.clone()) {
        let path = format!(
            "{host}:{service_port} {}",
            if address.contains(':') { format!("[{address}]:{port}") } else { format!("{address}:{port}") }
        );
        match (before, after) {
            (Some(_), None) => changes.push(change("removed", "instance", path)),
            (None, Some(_)) => changes.push(change("added", "instance", path)),
            (Some((_, a)), Some((_, b))) => {
                if a.weight != b.weight {
                    changes.push(changed("instance", path.clone(), "weight", a.weight.to_string(), b.weight.to_string()));
                }
                if a.health != b.health || a.labels != b.labels {
                    let words = |it: &ir::Instance| format!("{:?} {:?}", it.health, it.labels);
                    changes.push(changed("instance", path, "health and labels", words(a), words(b)));
                }
            }
            (None, None) => {}
        }
    }
}

fn workloads(old: &Mesh, new: &Mesh, changes: &mut Vec<Change>) {
    for (name, before, after) in pair(&old.workloads, &new.workloads, |it| it.name.clone()) {
        match (before, after) {
            (Some(_), None) => changes.push(change("removed", "workload", name)),
            (None, Some(_)) => changes.push(change("added", "workload", name)),
            (Some(a), Some(b)) => {
                let tables = |mesh: &Mesh, it: &ir::Workload| {
                    it.outbound.iter().map(|id| mesh.route_tables[id.index()].name.clone()).collect::<Vec<_>>().join(", ")
                };
                let (ta, tb) = (tables(old, a), tables(new, b));
                if ta != tb {
                    changes.push(changed("workload", name.clone(), "calls", ta, tb));
                }
                let inbound = |it: &ir::Workload| {
                    it.inbound.iter().map(|p| format!("{} {}", p.port, p.protocol.as_str())).collect::<Vec<_>>().join(", ")
                };
                if inbound(a) != inbound(b) {
                    changes.push(changed("workload", name.clone(), "serves", inbound(a), inbound(b)));
                }
                let policies = |mesh: &Mesh, it: &ir::Workload| {
                    it.authz.iter().map(|id| mesh.authz_policies[id.index()].name.clone()).collect::<Vec<_>>().join(", ")
                };
                let (pa, pb) = (policies(old, a), policies(new, b));
                if pa != pb {
                    changes.push(changed("workload", name, "authorization", pa, pb));
                }
            }
            (None, None) => {}
        }
    }
}

fn policies(old: &Mesh, new: &Mesh, changes: &mut Vec<Change>) {
    for (name, before, after) in pair(&old.authz_policies, &new.authz_policies, |it| it.name.clone()) {
        match (before, after) {
            (Some(_), None) => changes.push(change("removed", "authorization", name)),
            (None, Some(_)) => changes.push(change("added", "authorization", name)),
            (Some(a), Some(b)) => {
                if a.action != b.action || a.rules != b.rules {
                    let words = |it: &ir::AuthzPolicy| format!("{:?} {}", it.action, serde_json::to_string(&it.rules).unwrap_or_default());
                    changes.push(changed("authorization", name, "rules", words(a), words(b)));
                }
            }
            (None, None) => {}
        }
    }
}

/// The changes for people: one line each, `+` added, `-` removed, `~` changed.
pub fn render(changes: &[Change]) -> String {
    if changes.is_empty() {
        return "no routing difference\n".to_owned();
    }
    let mut out = String::new();
    for it in changes {
        let sign = match it.kind {
            "added" => '+',
            "removed" => '-',
            _ => '~',
        };
        out.push_str(&format!("{sign} {} {}", it.subject, it.path));
        if let Some(field) = &it.field {
            out.push_str(&format!(": {field}"));
        }
        match (&it.before, &it.after) {
            (Some(before), Some(after)) => out.push_str(&format!("\n    was: {before}\n    now: {after}")),
            (Some(before), None) => out.push_str(&format!("\n    was: {before}")),
            (None, Some(after)) => out.push_str(&format!("\n    now: {after}")),
            (None, None) => {}
        }
        out.push('\n');
    }
    out.push_str(&format!("{} difference(s)\n", changes.len()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bookinfo_with(edit: impl Fn(&str) -> String) -> (Mesh, Mesh) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/bookinfo");
        let old = MemFs::from_dir(&dir).expect("bookinfo");
        let mut new = old.clone();
        let spec = String::from_utf8(new.files["bookinfo.mesh"].clone()).expect("text");
        new.insert("bookinfo.mesh", edit(&spec));
        let compile = |fs: &MemFs| crate::compile(fs).ir.expect("compiles");
        (compile(&old), compile(&new))
    }

    #[test]
    fn the_same_mesh_has_no_difference() {
        let (old, new) = bookinfo_with(str::to_owned);
        assert!(diff(&old, &new).is_empty());
    }

    #[test]
    fn a_weight_change_is_one_route_action_change() {
        let (old, new) = bookinfo_with(|it| it.replace("weight 90", "weight 80").replace("weight 10", "weight 20"));
        let changes = diff(&old, &new);
        assert_eq!(changes.len(), 1, "{changes:#?}");
        assert_eq!(
            (changes[0].kind, changes[0].subject, changes[0].path.as_str()),
            ("changed", "route", "reviews.default.svc.cluster.local:9080 / everyone-else")
        );
        assert!(changes[0].after.as_deref().unwrap().contains("80%"));
    }

    #[test]
    fn added_and_reordered_routes_are_reported() {
        let (old, new) = bookinfo_with(|it| {
            it.replace(
                "  route everyone-else {",
                "  route canary {\n    match { header \"x-canary\" present }\n    to reviews subset v3\n  }\n  route everyone-else {",
            )
        });
        let changes = diff(&old, &new);
        assert_eq!(changes.len(), 1, "{changes:#?}");
        assert_eq!((changes[0].kind, changes[0].path.as_str()), ("added", "reviews.default.svc.cluster.local:9080 / canary"));
        assert!(changes[0].after.as_deref().unwrap().starts_with("at position 2"));
    }
}
