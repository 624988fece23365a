//! The RPC protocols the sidecar proxies without re-serializing: SOFA Bolt (v1 and v2) and
//! Dubbo 2. Each codec cuts whole frames off a connection's byte stream, refuses what is not a
//! frame of its protocol, reads the routing keys a compiled route needs, patches request ids in
//! place, and frames the answers the sidecar gives by itself (heartbeats, errors).
//!
//! Byte layouts: ../shared/reference/wire-formats.md, checked against sofastack/sofa-bolt and
//! apache/dubbo; hessian2 against the Hessian 2.0 serialization specification.

pub mod bolt;
pub mod dubbo;
pub mod hessian;

#[cfg(test)]
mod tests;

use std::fmt;

/// Frames larger than this are refused unless a listener says otherwise: Envoy's and MOSN's
/// RPC proxies have no lower default, and a Bolt or Dubbo frame this size is already a
/// misbehaving peer.
pub const DEFAULT_MAX_FRAME: usize = 16 * 1024 * 1024;

/// How much room a decoder makes ahead of a frame still arriving.
const RESERVE_AHEAD: usize = 64 * 1024;

/// Why bytes could not be cut into a frame. The connection they came on cannot go on: its
/// framing is lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FrameError {
    /// The bytes start no frame of the protocol.
    Magic(String),
    /// The head announces a frame larger than the limit.
    TooLarge { size: u64, limit: usize },
    /// The frame contradicts itself: lengths that do not add up, a bad CRC, an unreadable body.
    Malformed(String),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Magic(what) | FrameError::Malformed(what) => f.write_str(what),
            FrameError::TooLarge { size, limit } => write!(f, "a frame of {size} bytes is over the limit of {limit}"),
        }
    }
}

impl std::error::Error for FrameError {}
