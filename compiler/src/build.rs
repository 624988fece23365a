//! `meshc build`: compiles a mesh, writes one sidecar crate per workload, and builds them.
//!
//! Output layout (a contract): `OUT/<workload>/` holds each crate, `OUT/Cargo.toml` is a
//! workspace over them, `OUT/routes.txt` the routing report, and `OUT/bin/<workload>` each
//! binary; with `--emit xds`, `OUT/xds/<workload>/` holds the workload's xDS resources as
//! Envoy's JSON. Files are written only where their text changed, so an unchanged mesh
//! rebuilds nothing.

use std::path::{Component, Path, PathBuf};
use std::process::{Command, ExitCode};

use meshc_codegen::emit::{self, EmitOptions};
use meshc_codegen::ir;

/// Arguments of `meshc build`.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// The mesh directory (holding mesh.toml).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Where to write the crates and binaries.
    #[arg(long, value_name = "OUT")]
    pub out: PathBuf,
    /// Build only this workload (repeatable); the default is every workload.
    #[arg(long = "workload", value_name = "NAME")]
    pub workloads: Vec<String>,
    /// Write the crates but do not compile them.
    #[arg(long)]
    pub no_compile: bool,
    /// Compile without link-time optimisation (the workspace's `quick` profile): a build that
    /// takes a fraction of the time, of sidecars that behave the same and spend more CPU per
    /// request. For tests and for trying a change; build what ships without `--quick`.
    #[arg(long, conflicts_with = "no_compile")]
    pub quick: bool,
    /// What to write: `rust` (the sidecar crates, compiled unless `--no-compile`), `xds`
    /// (each workload's xDS resources as Envoy's JSON, under `OUT/xds/`), or both
    /// (`--emit rust,xds`).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "rust")]
    pub emit: Vec<Emit>,
}

/// An output of `meshc build`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Emit {
    /// The sidecar crates and their binaries.
    Rust,
    /// The xDS resources.
    Xds,
}

/// The runtime crate this meshc was built with, unless `MESHC_RUNTIME` names another.
fn runtime_dir() -> PathBuf {
    match std::env::var_os("MESHC_RUNTIME") {
        Some(path) => PathBuf::from(path),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("runtime"),
    }
}

/// Runs `meshc build`.
pub fn run(args: &BuildArgs) -> ExitCode {
    let compilation = crate::compile_dir(&args.dir);
    crate::diag::emit_to_stderr(&compilation.sources, &compilation.diagnostics, std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let Some(mesh) = &compilation.ir else {
        return ExitCode::from(if compilation.io_error { 2 } else { 1 });
    };
    match build(mesh, args) {
        Ok(_) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Build(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(1)
        }
    }
}

enum Failure {
    /// Bad arguments or files: exit 2.
    Usage(String),
    /// The generated crates did not build: exit 1.
    Build(String),
}

/// Builds the sidecars of a mesh directory, as `meshc build` does, and returns the binaries
/// (none with `no_compile`). Errors are rendered messages.
pub fn build_dir(args: &BuildArgs) -> Result<Vec<PathBuf>, String> {
    let compilation = crate::compile_dir(&args.dir);
    let Some(mesh) = &compilation.ir else { return Err(compilation.render_plain()) };
    build(mesh, args).map_err(|it| match it {
        Failure::Usage(message) | Failure::Build(message) => message,
    })
}

fn build(mesh: &ir::Mesh, args: &BuildArgs) -> Result<Vec<PathBuf>, Failure> {
    let workloads = select(mesh, &args.workloads)?;
    let runtime = runtime_dir()
        .canonicalize()
        .map_err(|err| Failure::Usage(format!("cannot find the meshc-runtime crate at {}: {err}", runtime_dir().display())))?;
    if !runtime.join("Cargo.toml").is_file() {
        return Err(Failure::Usage(format!("{} is not the meshc-runtime crate (set MESHC_RUNTIME)", runtime.display())));
    }
    std::fs::create_dir_all(&args.out).map_err(|err| Failure::Usage(format!("cannot create {}: {err}", args.out.display())))?;
    let out = args.out.canonicalize().map_err(|err| Failure::Usage(format!("cannot use {}: {err}", args.out.display())))?;

    // Every crate sits one level below `out`, so one relative path serves them all.
    let runtime_path = relative(&out.join("crate"), &runtime);
    let options = EmitOptions { runtime_path, regenerate: format!("meshc build {} --out {}", args.dir.display(), args.out.display()) };
    let rust = args.emit.contains(&Emit::Rust);
    let mut files = if rust { emit::emit(mesh, &workloads, &options) } else { Vec::new() };
    files.push(emit::GeneratedFile { path: "routes.txt".to_owned(), text: emit::report::routes_txt(mesh) });
    if args.emit.contains(&Emit::Xds) {
        files.extend(
            emit::xds::json_files(mesh, &workloads)
                .into_iter()
                .map(|it| emit::GeneratedFile { path: format!("xds/{}", it.path), text: it.text }),
        );
    }
    let mut written = 0;
    for file in &files {
        if write_if_changed(&out.join(&file.path), &file.text).map_err(Failure::Usage)? {
            written += 1;
        }
    }
    if !rust {
        eprintln!("meshc: xDS resources of {} workload(s) in {} ({written} file(s) changed)", workloads.len(), args.out.display());
        for workload in &workloads {
            println!("{}", args.out.join("xds").join(&workload.name).display());
        }
        return Ok(Vec::new());
    }
    // Share the workspace's locked versions, so the sidecars reuse its compiled dependencies.
    let lock = out.join("Cargo.lock");
    if !lock.exists()
        && let Some(ours) = runtime.parent().map(|it| it.join("Cargo.lock")).filter(|it| it.is_file())
    {
        let _ = std::fs::copy(ours, &lock);
    }
    eprintln!("meshc: {} crate(s) in {} ({written} file(s) changed)", workloads.len(), args.out.display());
    for workload in &workloads {
        println!("{}", args.out.join(&workload.name).display());
    }
    if args.no_compile {
        return Ok(Vec::new());
    }
    let profile = if args.quick { "quick" } else { "release" };
    compile(mesh, &out, &runtime, &workloads, &args.out, profile)
}

fn select<'m>(mesh: &'m ir::Mesh, names: &[String]) -> Result<Vec<&'m ir::Workload>, Failure> {
    if names.is_empty() {
        return Ok(mesh.workloads.iter().collect());
    }
    let mut selected = Vec::new();
    for name in names {
        match mesh.workloads.iter().find(|it| it.name == *name) {
            Some(workload) => {
                if !selected.iter().any(|it: &&ir::Workload| it.name == *name) {
                    selected.push(workload);
                }
            }
            None => {
                let known: Vec<&str> = mesh.workloads.iter().map(|it| it.name.as_str()).collect();
                return Err(Failure::Usage(format!("the mesh has no workload `{name}`; it has {}", known.join(", "))));
            }
        }
    }
    selected.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(selected)
}

/// Compiles the sidecars of `workloads` with the workspace's `profile` (`release` or `quick`).
fn compile(
    mesh: &ir::Mesh,
    out: &Path,
    runtime: &Path,
    workloads: &[&ir::Workload],
    shown_out: &Path,
    profile: &str,
) -> Result<Vec<PathBuf>, Failure> {
    // One target directory for every sidecar, the workspace's when the runtime is in one, so
    // that dependencies compile once.
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => match runtime.parent().filter(|it| it.join("Cargo.toml").is_file()) {
            Some(workspace) => workspace.join("target"),
            None => out.join("target"),
        },
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("meshc: compiling {} sidecar(s) with cargo build --profile {profile} (target {})", workloads.len(), target.display());
    let mut command = Command::new(cargo);
    command.arg("build").arg("--profile").arg(profile).arg("--manifest-path").arg(out.join("Cargo.toml")).arg("--target-dir").arg(&target);
    for workload in workloads {
        command.arg("--bin").arg(emit::binary_name(mesh, workload));
    }
    let status = command.status().map_err(|err| Failure::Build(format!("cannot run cargo: {err}")))?;
    if !status.success() {
        return Err(Failure::Build(format!("cargo build failed ({status}); the crates are in {}", shown_out.display())));
    }
    let bin = out.join("bin");
    std::fs::create_dir_all(&bin).map_err(|err| Failure::Build(format!("cannot create {}: {err}", bin.display())))?;
    let mut binaries = Vec::new();
    for workload in workloads {
        let name = format!("{}{}", workload.name, std::env::consts::EXE_SUFFIX);
        let built = target.join(profile).join(format!("{}{}", emit::binary_name(mesh, workload), std::env::consts::EXE_SUFFIX));
        let placed = bin.join(&name);
        // Replace rather than overwrite, so a running sidecar keeps its binary. A hard link
        // opens nothing for writing: a copy's open descriptor, inherited by a process another
        // thread forks at that moment, makes executing the copy fail with "text file busy"
        // until that process execs. The copy is for a target on another file system.
        let _ = std::fs::remove_file(&placed);
        std::fs::hard_link(&built, &placed)
            .or_else(|_| std::fs::copy(&built, &placed).map(drop))
            .map_err(|err| Failure::Build(format!("cannot copy {} to {}: {err}", built.display(), placed.display())))?;
        println!("{}", shown_out.join("bin").join(&name).display());
        binaries.push(placed);
    }
    Ok(binaries)
}

/// Writes `text` unless the file already holds it; returns whether it wrote.
fn write_if_changed(path: &Path, text: &str) -> Result<bool, String> {
    if std::fs::read_to_string(path).is_ok_and(|it| it == text) {
        return Ok(false);
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|err| format!("cannot create {}: {err}", parent.display()))?;
    }
    std::fs::write(path, text).map_err(|err| format!("cannot write {}: {err}", path.display()))?;
    Ok(true)
}

/// The path from directory `from` to `to` (both absolute), `/`-separated.
pub fn relative(from: &Path, to: &Path) -> String {
    let from: Vec<Component<'_>> = from.components().collect();
    let to: Vec<Component<'_>> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = std::iter::repeat_n("..".to_owned(), from.len() - common).collect();
    parts.extend(to[common..].iter().map(|it| it.as_os_str().to_string_lossy().into_owned()));
    if parts.is_empty() { ".".to_owned() } else { parts.join("/") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_climb_then_descend() {
        assert_eq!(relative(Path::new("/w/target/mesh/crate"), Path::new("/w/runtime")), "../../../runtime");
        assert_eq!(relative(Path::new("/a/b"), Path::new("/a/b/c")), "c");
        assert_eq!(relative(Path::new("/a"), Path::new("/a")), ".");
    }
}
