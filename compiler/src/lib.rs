//! meshc: the mesh compiler's front-end (load, parse, check, lower), its command line, and
//! Pilot (`meshc pilot`, xDS from the IR).
//!
//! The front-end is synchronous and pure: it reads files through a `Vfs`, reports every
//! problem as a `Diagnostic`, and produces `meshc_codegen::ir::Mesh`. Only `pilot` runs
//! async code.

// Only runtime/src/sys.rs may use `unsafe` (the workspace denies it; here it is forbidden).
#![forbid(unsafe_code)]

pub mod build;
pub mod check;
pub mod diag;
pub mod diff;
pub mod driver;
pub mod explain;
pub mod lower;
pub mod manifest;
pub mod pilot;
pub mod registry;
pub mod source;
pub mod syntax;
pub mod synth;

pub use driver::{Compilation, compile, compile_dir};
