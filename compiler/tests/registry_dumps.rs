//! Registry dumps as other teams' systems emit them: every adapter against snapshots written
//! in the shapes the registries' own documentation, code and users' issue threads show, not in
//! the shapes the adapters were written against.
//!
//! `compiler/tests/registry-dumps/<kind>/<name>.<ext>` is a dump for the registry kind named by
//! the directory; `<name>.expect.toml` next to it says what a correct reader finds, as a person
//! reading the dump determined it (never from meshc's output):
//!
//! - `services`, `instances`: how many services, and how many distinct
//!   (namespace, service, address, port) instances;
//! - `service_names`: services that must exist;
//! - `[[instance]]`: endpoints that must exist, by `address` and `port`, optionally with their
//!   `service`, `namespace`, `health` and `labels` (each given label with that value).
//!
//! A service "is named" `n` when its name is `n`, or, for registries whose names meshc has to
//! turn into DNS labels, when its instances carry `n` as their `<registry>.io/service` label.
//!
//! `<kind>/malformed/<name>.<ext>` is a broken dump; its expect file says `errors = true` and
//! lists `mentions`, fragments that the rendered diagnostics must contain (beside the dump's
//! path). A malformed dump must give at least one error, must not panic, and `meshc check`
//! must exit 1 on it.
//!
//! Every dump is compiled as the only registry of an in-memory mesh with `meshc::compile`, and
//! again from a directory with the `meshc check` binary (for exit codes). All mismatches are
//! collected and reported together; the README in the dump directory names where each dump's
//! shape comes from.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;

use meshc::source::MemFs;
use meshc_codegen::ir;
use serde::Deserialize;

const KINDS: [&str; 6] = ["sofa-registry", "sofa-rpc-zookeeper", "dubbo-zookeeper", "nacos", "consul", "kubernetes"];

fn dumps_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join("registry-dumps")
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    #[serde(default)]
    errors: bool,
    #[serde(default)]
    mentions: Vec<String>,
    services: Option<usize>,
    instances: Option<usize>,
    #[serde(default)]
    service_names: Vec<String>,
    #[serde(default)]
    instance: Vec<ExpectInstance>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectInstance {
    service: Option<String>,
    namespace: Option<String>,
    address: String,
    port: u16,
    health: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// One dump: its kind, its path relative to the kind's directory, and whether it is malformed.
#[derive(Debug)]
struct Dump {
    kind: &'static str,
    /// `<kind>/<relative path>`, which is also its path inside the test mesh.
    mesh_path: String,
    file: PathBuf,
    expect_file: PathBuf,
    malformed: bool,
}

fn is_expect(path: &Path) -> bool {
    path.file_name().and_then(|it| it.to_str()).is_some_and(|it| it.ends_with(".expect.toml"))
}

fn expect_path(file: &Path) -> PathBuf {
    let name = file.file_name().and_then(|it| it.to_str()).expect("UTF-8 file name");
    let stem = name.rsplit_once('.').map_or(name, |it| it.0);
    file.with_file_name(format!("{stem}.expect.toml"))
}

fn list(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries.map(|it| it.expect("directory entry").path()).collect(),
        Err(_) => Vec::new(),
    };
    entries.sort();
    entries
}

fn collect_dumps(failures: &mut Vec<String>) -> Vec<Dump> {
    let mut dumps = Vec::new();
    for kind in KINDS {
        let dir = dumps_dir().join(kind);
        for (sub, malformed) in [(dir.clone(), false), (dir.join("malformed"), true)] {
            for file in list(&sub) {
                if file.is_dir() || is_expect(&file) {
                    continue;
                }
                let expect_file = expect_path(&file);
                if !expect_file.is_file() {
                    failures.push(format!("{}: no expect file {}", file.display(), expect_file.display()));
                    continue;
                }
                let relative = file.strip_prefix(dumps_dir()).expect("under the dump directory");
                let mesh_path = relative.to_str().expect("UTF-8 path").replace('\\', "/");
                dumps.push(Dump { kind, mesh_path, file, expect_file, malformed });
            }
            // An expect file without its dump is a stale expectation.
            for file in list(&sub) {
                if is_expect(&file) {
                    let name = file.file_name().and_then(|it| it.to_str()).unwrap_or_default();
                    let stem = name.trim_end_matches(".expect.toml");
                    let has_dump = list(&sub).iter().any(|other| {
                        !is_expect(other)
                            && other
                                .file_name()
                                .and_then(|it| it.to_str())
                                .is_some_and(|it| it.rsplit_once('.').map_or(it, |p| p.0) == stem)
                    });
                    if !has_dump {
                        failures.push(format!("{}: expect file without a dump", file.display()));
                    }
                }
            }
        }
        let good = dumps.iter().filter(|it| it.kind == kind && !it.malformed).count();
        let bad = dumps.iter().filter(|it| it.kind == kind && it.malformed).count();
        if good < 3 || bad < 1 {
            failures.push(format!("{kind}: {good} dumps and {bad} malformed dumps; want at least 3 and 1"));
        }
    }
    dumps
}

fn manifest(dump: &Dump) -> String {
    format!("[mesh]\nname = \"dumps\"\n\n[[registry]]\nname = \"dump\"\nkind = \"{}\"\npath = \"{}\"\n", dump.kind, dump.mesh_path)
}

/// An address in one spelling: IPs parsed (so `fd00::1` and `FD00:0::1` agree), names lower-cased.
fn normal_address(text: &str) -> String {
    let bare = text.trim().trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => bare.to_ascii_lowercase(),
    }
}

fn health_name(health: ir::Health) -> &'static str {
    match health {
        ir::Health::Healthy => "healthy",
        ir::Health::Unknown => "unknown",
        ir::Health::Draining => "draining",
        ir::Health::Unhealthy => "unhealthy",
    }
}

/// Whether `service` is the service a person reading the dump calls `name`.
fn service_is(mesh: &ir::Mesh, service: &ir::Service, name: &str) -> bool {
    service.name == name
        || service
            .instances
            .iter()
            .any(|id| mesh.instances[id.index()].labels.iter().any(|(key, value)| key.ends_with(".io/service") && value == name))
}

fn describe_instance(mesh: &ir::Mesh, instance: &ir::Instance) -> String {
    let service = &mesh.services[instance.service.index()];
    format!(
        "{}/{} {}:{} health={} labels={:?}",
        service.namespace,
        service.name,
        instance.address,
        instance.port,
        health_name(instance.health),
        instance.labels
    )
}

fn check_good(expect: &Expect, mesh: &ir::Mesh, problems: &mut Vec<String>) {
    let distinct: BTreeSet<(String, String, String, u16)> = mesh
        .instances
        .iter()
        .map(|instance| {
            let service = &mesh.services[instance.service.index()];
            (service.namespace.clone(), service.name.clone(), normal_address(&instance.address), instance.port)
        })
        .collect();
    let found_services: Vec<String> = mesh.services.iter().map(|it| format!("{}/{}", it.namespace, it.name)).collect();
    if let Some(want) = expect.services
        && want != mesh.services.len()
    {
        problems.push(format!("expected {want} services, found {}: {found_services:?}", mesh.services.len()));
    }
    if let Some(want) = expect.instances
        && want != distinct.len()
    {
        let listing: Vec<String> = distinct.iter().map(|(ns, s, a, p)| format!("{ns}/{s} {a}:{p}")).collect();
        problems.push(format!("expected {want} instances, found {}: {listing:?}", distinct.len()));
    }
    for name in &expect.service_names {
        if !mesh.services.iter().any(|service| service_is(mesh, service, name)) {
            problems.push(format!("expected a service named `{name}`, found {found_services:?}"));
        }
    }
    for want in &expect.instance {
        let address = normal_address(&want.address);
        let at_endpoint: Vec<&ir::Instance> =
            mesh.instances.iter().filter(|it| normal_address(&it.address) == address && it.port == want.port).collect();
        let candidates: Vec<&ir::Instance> = at_endpoint
            .iter()
            .copied()
            .filter(|it| {
                let service = &mesh.services[it.service.index()];
                want.service.as_deref().is_none_or(|name| service_is(mesh, service, name))
                    && want.namespace.as_deref().is_none_or(|ns| service.namespace == ns)
            })
            .collect();
        let what = format!("{}{}:{}", want.service.as_deref().map(|it| format!("{it} at ")).unwrap_or_default(), want.address, want.port);
        if candidates.is_empty() {
            let seen: Vec<String> = at_endpoint.iter().map(|it| describe_instance(mesh, it)).collect();
            problems.push(format!("expected an instance {what}; at that endpoint meshc has {seen:?}"));
            continue;
        }
        let fits = |instance: &&ir::Instance| {
            want.health.as_deref().is_none_or(|health| health_name(instance.health) == health)
                && want.labels.iter().all(|(key, value)| instance.labels.get(key) == Some(value))
        };
        if !candidates.iter().any(fits) {
            let seen: Vec<String> = candidates.iter().map(|it| describe_instance(mesh, it)).collect();
            problems.push(format!(
                "instance {what}: expected{}{}, found {seen:?}",
                want.health.as_deref().map(|it| format!(" health={it}")).unwrap_or_default(),
                if want.labels.is_empty() { String::new() } else { format!(" labels ⊇ {:?}", want.labels) },
            ));
        }
    }
}

/// Runs `meshc check` on a directory holding the same mesh; returns the exit code and stderr.
fn run_cli(dump: &Dump, manifest: &str) -> (Option<i32>, String) {
    let stem = dump.mesh_path.replace(['/', '.'], "_");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("registry-dumps").join(stem);
    let _ = std::fs::remove_dir_all(&dir);
    let target = dir.join(&dump.mesh_path);
    std::fs::create_dir_all(target.parent().expect("parent")).expect("create the mesh directory");
    std::fs::write(dir.join("mesh.toml"), manifest).expect("write mesh.toml");
    std::fs::copy(&dump.file, &target).expect("copy the dump");
    let output = Command::new(env!("CARGO_BIN_EXE_meshc")).arg("check").arg(&dir).output().expect("run meshc");
    (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
}

fn indent(text: &str) -> String {
    text.lines().map(|line| format!("      {line}")).collect::<Vec<_>>().join("\n")
}

#[test]
fn registry_dumps_load_as_a_person_reads_them() {
    let mut failures: Vec<String> = Vec::new();
    let readme = std::fs::read_to_string(dumps_dir().join("README.md")).unwrap_or_default();
    let dumps = collect_dumps(&mut failures);
    let mut summary = Vec::new();
    for dump in &dumps {
        let mut problems: Vec<String> = Vec::new();
        let expect: Expect = match std::fs::read_to_string(&dump.expect_file)
            .map_err(|it| it.to_string())
            .and_then(|text| toml::from_str(&text).map_err(|it| it.to_string()))
        {
            Ok(expect) => expect,
            Err(err) => {
                failures.push(format!("{}: unreadable expect file: {err}", dump.expect_file.display()));
                continue;
            }
        };
        if expect.errors != dump.malformed {
            problems.push(format!(
                "expect file says errors = {} but the dump is under {}",
                expect.errors,
                if dump.malformed { "malformed/" } else { "its kind" }
            ));
        }
        let file_name = dump.mesh_path.rsplit('/').next().unwrap_or_default();
        if !readme.contains(file_name) {
            problems.push("README.md does not say where this dump's shape comes from".to_owned());
        }

        let bytes = std::fs::read(&dump.file).expect("read the dump");
        let manifest = manifest(dump);
        let mut vfs = MemFs::new();
        vfs.insert("mesh.toml", manifest.clone()).insert(dump.mesh_path.clone(), bytes);
        let compiled = panic::catch_unwind(AssertUnwindSafe(|| meshc::compile(&vfs)));
        match compiled {
            Err(payload) => {
                let message = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|it| (*it).to_owned()))
                    .unwrap_or_default();
                problems.push(format!("meshc::compile panicked: {message}"));
            }
            Ok(compilation) => {
                let rendered = compilation.render_plain();
                if dump.malformed {
                    if !compilation.has_errors() {
                        problems.push(format!("expected an error diagnostic, got none; diagnostics:\n{}", indent(&rendered)));
                    } else {
                        let mut missing: Vec<&str> = Vec::new();
                        if !rendered.contains(&dump.mesh_path) {
                            missing.push(&dump.mesh_path);
                        }
                        missing.extend(expect.mentions.iter().map(String::as_str).filter(|it| !rendered.contains(*it)));
                        if !missing.is_empty() {
                            problems.push(format!("the diagnostics do not mention {missing:?}:\n{}", indent(&rendered)));
                        }
                    }
                    if compilation.io_error {
                        problems.push("reported as an I/O error (the CLI would exit 2, not 1)".to_owned());
                    }
                } else if compilation.has_errors() {
                    problems.push(format!("expected no errors, got:\n{}", indent(&rendered)));
                } else {
                    match &compilation.ir {
                        None => problems.push(format!("no IR although there are no errors; diagnostics:\n{}", indent(&rendered))),
                        Some(mesh) => check_good(&expect, mesh, &mut problems),
                    }
                }
            }
        }

        let (code, stderr) = run_cli(dump, &manifest);
        let want = if dump.malformed { 1 } else { 0 };
        if code != Some(want) || stderr.contains("panicked") {
            let first: String = stderr.lines().take(12).collect::<Vec<_>>().join("\n");
            problems.push(format!("`meshc check` exited {code:?}, expected {want}; stderr begins:\n{}", indent(&first)));
        }

        summary.push(format!("{} {}", if problems.is_empty() { "ok  " } else { "FAIL" }, dump.mesh_path));
        if !problems.is_empty() {
            failures.push(format!("{}:\n{}", dump.mesh_path, problems.iter().map(|it| format!("  - {it}")).collect::<Vec<_>>().join("\n")));
        }
    }
    eprintln!("{}", summary.join("\n"));
    assert!(failures.is_empty(), "{} of {} registry dumps fail:\n\n{}", failures.len(), dumps.len(), failures.join("\n\n"));
}
