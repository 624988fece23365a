//! The RPC protocols the sidecar proxies without re-serializing: SOFA Bolt (v1 and v2) and
//! Dubbo 2. Each codec cuts whole frames off a connection's byte stream, refuses what is not a
//! frame of its protocol, reads the routing keys a compiled route needs, patches request ids in
//! place, and frames the answers the sidecar gives by itself (heartbeats, errors).
//!
//! Byte layouts: ../shared/reference/wire-formats.md, checked against sofastack/sofa-bolt and
//! apache/dubbo; hessian2 against the Hessian 2.0 serialization specification.

pub mod bolt;
pub mod dubbo;
pub mod head;
pub mod hessian;
pub(crate) mod mux;
pub(crate) mod proxy;

#[cfg(test)]
mod mutations;
#[cfg(test)]
mod tests;

use std::fmt;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::error::Error;
use head::RpcHead;
use proxy::Role;

/// What the RPC data path needs of a protocol's codec.
pub(crate) trait Codec: Send + Sync + 'static {
    type Frame: Send + Sync + 'static;
    /// A request id: what a multiplexed connection tells its requests apart by.
    type Id: Copy + Eq + std::hash::Hash + Send + Sync + fmt::Debug + 'static;
    const FIRST_ID: Self::Id;
    /// `bolt` or `dubbo`, for metrics and logs.
    const NAME: &'static str;

    /// Cuts the next whole frame off `buf`; see [`bolt::decode`].
    fn decode(buf: &mut BytesMut, max_frame: usize) -> Result<Option<Self::Frame>, FrameError>;
    fn id(frame: &Self::Frame) -> Self::Id;
    /// The id after `id`, wrapping.
    fn next_id(id: Self::Id) -> Self::Id;
    /// Gives a whole frame's bytes another request id.
    fn patch_id(raw: &mut [u8], id: Self::Id);
    fn bytes(frame: &Self::Frame) -> &[u8];
    fn is_response(frame: &Self::Frame) -> bool;
    fn role(frame: &Self::Frame) -> Role;
    /// The routing keys of a request; `Ok(None)` when it carries none to route by.
    fn head(frame: &Self::Frame, attachments: bool) -> Result<Option<RpcHead<'_>>, FrameError>;
    /// The timeout the caller put in the request, if the protocol carries one.
    fn timeout(frame: &Self::Frame) -> Option<Duration>;
    fn heartbeat_reply(frame: &Self::Frame) -> Bytes;
    /// A heartbeat request, whose id [`Codec::patch_id`] sets.
    fn heartbeat_request() -> Bytes;
    /// The answer to request `frame` that failed with `error`.
    fn failure(frame: &Self::Frame, error: &Error) -> Bytes;
    /// The status [`Codec::failure`] answers `error` with.
    fn failure_status(error: &Error) -> u16;
    /// A response's status.
    fn status(frame: &Self::Frame) -> u16;
    /// The status of success.
    const OK: u16;
    /// Whether a response reports a failure of the server (for outlier detection).
    fn server_error(frame: &Self::Frame) -> bool;
    /// A response's bytes under the caller's request id.
    fn answer(frame: Self::Frame, id: Self::Id) -> Bytes;
}

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
