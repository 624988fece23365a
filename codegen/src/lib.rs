//! meshc-codegen: the IR that the compiler lowers a mesh to, and the emitters that consume it.
//!
//! The IR lives here, not in the compiler, because the emitters are its consumers,
//! as tonic-build defines the service model it generates from.

// Only runtime/src/sys.rs may use `unsafe` (the workspace denies it; here it is forbidden).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod access_format;
pub mod emit;
pub mod ir;
pub mod re2;
