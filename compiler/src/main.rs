//! The `meshc` command line. Exit codes are a contract: 0 success (warnings allowed),
//! 1 the mesh has errors (or `diff` found differences), 2 usage or I/O problems.

// Only runtime/src/sys.rs may use `unsafe` (the workspace denies it; here it is forbidden).
#![forbid(unsafe_code)]

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(name = "meshc", version, about = "A service mesh compiler: checks a mesh spec and registry snapshots, and compiles them")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check a mesh directory and report every problem.
    Check {
        /// The mesh directory (holding mesh.toml).
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Output format of the diagnostics.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Print the mesh's IR as JSON on stdout.
    Ir {
        /// The mesh directory (holding mesh.toml).
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Show which route a request takes, where it goes, and whether it is allowed.
    Explain(meshc::explain::ExplainArgs),
    /// Generate a sidecar crate per workload and compile them.
    Build(meshc::build::BuildArgs),
    /// Show what changes for traffic between two versions of a mesh, or between a mesh and what a
    /// running Pilot serves (exit 1 when something does).
    Diff(meshc::diff::DiffArgs),
    /// Serve the mesh over Envoy's xDS (ADS), recompiling when its directory changes.
    Pilot(meshc::pilot::PilotArgs),
    /// Write a synthetic mesh (for benchmarks and scale tests) to a directory.
    #[command(hide = true)]
    Synth {
        /// Where to write it.
        #[arg(long)]
        out: PathBuf,
        /// Number of services.
        #[arg(long, default_value_t = 10_000)]
        services: usize,
        /// Number of instances.
        #[arg(long, default_value_t = 100_000)]
        instances: usize,
        /// Number of routes.
        #[arg(long, default_value_t = 10_000)]
        routes: usize,
        /// What to write: a whole mesh of that size, one service with `--routes` routes in one
        /// table, or a small random mesh drawn from `--seed`.
        #[arg(long, value_enum, default_value_t = Shape::Mesh)]
        shape: Shape,
        /// The seed of `--shape random`.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Shape {
    Mesh,
    Table,
    Random,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Human,
    Json,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // clap prints help and version to stdout with success; usage errors exit 2.
            let code = if err.use_stderr() { 2 } else { 0 };
            let _ = err.print();
            return ExitCode::from(code);
        }
    };
    match cli.command {
        Command::Check { dir, format } => {
            let compilation = meshc::compile_dir(&dir);
            match format {
                Format::Human => {
                    meshc::diag::emit_to_stderr(&compilation.sources, &compilation.diagnostics, std::io::stderr().is_terminal());
                    // As `istioctl analyze` does, a clean check says so, and what it read.
                    if let (Some(ir), true) = (&compilation.ir, compilation.diagnostics.is_empty()) {
                        eprintln!("meshc: no problems in {} ({})", dir.display(), contents(ir));
                    }
                }
                Format::Json => {
                    let json = meshc::diag::to_json(&compilation.sources, &compilation.diagnostics);
                    println!("{}", serde_json::to_string_pretty(&json).unwrap_or_default());
                }
            }
            exit_code(&compilation)
        }
        Command::Ir { dir } => {
            let compilation = meshc::compile_dir(&dir);
            meshc::diag::emit_to_stderr(&compilation.sources, &compilation.diagnostics, std::io::stderr().is_terminal());
            if let Some(ir) = &compilation.ir {
                let mut stdout = std::io::stdout().lock();
                let written = serde_json::to_writer_pretty(&mut stdout, ir).is_ok() && writeln!(stdout).is_ok();
                if !written {
                    return ExitCode::from(2);
                }
            }
            exit_code(&compilation)
        }
        Command::Explain(args) => meshc::explain::run(&args),
        Command::Build(args) => meshc::build::run(&args),
        Command::Diff(args) => meshc::diff::run(&args),
        Command::Pilot(args) => meshc::pilot::run(&args),
        Command::Synth { out, services, instances, routes, shape, seed } => {
            let mesh = match shape {
                Shape::Mesh => meshc::synth::synthetic(meshc::synth::Synthetic { services, instances, routes }),
                Shape::Table => meshc::synth::route_table(routes),
                Shape::Random => meshc::synth::random(seed),
            };
            for (path, bytes) in &mesh.files {
                let target = out.join(path);
                let written = target.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| std::fs::write(&target, bytes));
                if let Err(err) = written {
                    eprintln!("error: cannot write {}: {err}", target.display());
                    return ExitCode::from(2);
                }
            }
            println!("wrote {} files to {}", mesh.files.len(), out.display());
            ExitCode::SUCCESS
        }
    }
}

/// What a mesh holds, in a few counts: `2 spec files, 1 registry snapshot, 6 services with
/// 14 instances, 4 route tables, 3 workloads`.
fn contents(ir: &meshc_codegen::ir::Mesh) -> String {
    use meshc::diag::plural;
    [
        plural(ir.specs.len(), "spec file"),
        plural(ir.registries.len(), "registry snapshot"),
        format!("{} with {}", plural(ir.services.len(), "service"), plural(ir.instances.len(), "instance")),
        plural(ir.route_tables.len(), "route table"),
        plural(ir.workloads.len(), "workload"),
    ]
    .join(", ")
}

fn exit_code(compilation: &meshc::Compilation) -> ExitCode {
    if compilation.io_error {
        ExitCode::from(2)
    } else if compilation.has_errors() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
