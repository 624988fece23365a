//! meshc-runtime: the part of every sidecar that does not depend on the mesh spec.
//!
//! Generated crates reach it only through the hidden `__codegen` module, which is the
//! whole contract between codegen and the runtime.
//! The listeners, codecs and pools arrive with the compiled sidecar; this crate knows
//! nothing about specs, registries or the IR, and never will.

#[doc(hidden)]
pub mod __codegen {}
