//! SOFA Bolt v1 and v2 frames: cut from a byte stream, checked, read for routing keys, and
//! forwarded as the bytes they arrived as, with only the request id patched (and the v2 CRC32
//! trailer recomputed when the frame carries one).
//!
//! Layouts (big-endian): v1 requests have a 22-byte fixed head, v1 responses 20; v2 adds a
//! version byte after the protocol code and a switch byte after the codec (24 and 22 bytes).
//! Then come the class name, the header map and the content. A v2 frame whose version byte is 2
//! and whose switch has bit 0 set ends in a CRC32 of everything before it, as sofa-bolt's
//! `RpcCommandEncoderV2` writes it.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};

use super::FrameError;

/// Protocol codes: the first byte of a frame.
pub const V1: u8 = 0x01;
pub const V2: u8 = 0x02;

/// Command types (byte 1 in v1, byte 2 in v2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Response,
    Request,
    /// A request that gets no response.
    Oneway,
}

/// Command codes.
pub mod cmd {
    pub const HEARTBEAT: u16 = 0;
    pub const REQUEST: u16 = 1;
    pub const RESPONSE: u16 = 2;
}

/// Response status codes (sofa-bolt's `ResponseStatus`).
pub mod status {
    pub const SUCCESS: u16 = 0;
    pub const ERROR: u16 = 1;
    pub const SERVER_EXCEPTION: u16 = 2;
    pub const SERVER_THREADPOOL_BUSY: u16 = 4;
    pub const NO_PROCESSOR: u16 = 6;
    pub const TIMEOUT: u16 = 7;
    pub const CODEC_EXCEPTION: u16 = 9;
    pub const CONNECTION_CLOSED: u16 = 0x10;
}

/// Header keys SOFARPC clients route by.
pub const SERVICE: &[u8] = b"service";
pub const TARGET_SERVICE: &[u8] = b"sofa_head_target_service";
pub const METHOD: &[u8] = b"sofa_head_method_name";

/// A Java null in the header map: a length with no bytes after it.
const NULL_LENGTH: u32 = u32::MAX;

/// Hessian2, Bolt's codec code 1: the content is a SOFARPC request object whose `methodName`
/// field names the method when the header map does not.
pub const HESSIAN2: u8 = 1;

/// The fixed head of a frame, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    /// `V1` or `V2`.
    pub protocol: u8,
    /// v2's protocol version byte (1 or 2); 0 for v1.
    pub version: u8,
    pub kind: Kind,
    pub cmd: u16,
    pub request_id: u32,
    pub codec: u8,
    /// v2's switch byte; 0 for v1.
    pub switch: u8,
    /// Requests: the caller's timeout in milliseconds, negative for none.
    pub timeout_ms: i32,
    /// Responses: the status.
    pub status: u16,
    class_len: u16,
    header_len: u16,
    content_len: u32,
    /// Whether the frame ends in a CRC32 trailer.
    crc: bool,
}

impl Head {
    fn fixed_len(protocol: u8, kind: Kind) -> usize {
        match (protocol, kind) {
            (V1, Kind::Response) => 20,
            (V1, _) => 22,
            (_, Kind::Response) => 22,
            (_, _) => 24,
        }
    }

    /// Offset of the request id.
    fn id_offset(protocol: u8) -> usize {
        if protocol == V1 { 5 } else { 6 }
    }

    pub fn is_heartbeat(&self) -> bool {
        self.cmd == cmd::HEARTBEAT
    }

    /// The request's own timeout, when it set one.
    pub fn timeout(&self) -> Option<std::time::Duration> {
        (self.kind != Kind::Response && self.timeout_ms > 0).then(|| std::time::Duration::from_millis(self.timeout_ms as u64))
    }
}

/// One whole frame.
#[derive(Debug)]
pub struct Frame {
    head: Head,
    bytes: BytesMut,
}

/// Cuts the next frame off the front of `buf`: `Ok(None)` until all of it has arrived. A frame
/// larger than `max_frame` bytes is refused as soon as its head says so.
pub fn decode(buf: &mut BytesMut, max_frame: usize) -> Result<Option<Frame>, FrameError> {
    let Some(&protocol) = buf.first() else { return Ok(None) };
    if protocol != V1 && protocol != V2 {
        return Err(FrameError::Magic(format!("byte 0x{protocol:02x} starts no Bolt frame")));
    }
    let type_at = if protocol == V1 { 1 } else { 2 };
    let Some(&kind) = buf.get(type_at) else { return Ok(None) };
    let kind = match kind {
        0 => Kind::Response,
        1 => Kind::Request,
        2 => Kind::Oneway,
        other => return Err(FrameError::Malformed(format!("command type {other} is none of response (0), request (1), oneway (2)"))),
    };
    let fixed = Head::fixed_len(protocol, kind);
    if buf.len() < fixed {
        return Ok(None);
    }
    let head = parse_head(&buf[..fixed], protocol, kind);
    let body = usize::from(head.class_len) + usize::from(head.header_len) + head.content_len as usize;
    let total = fixed as u64 + body as u64 + if head.crc { 4 } else { 0 };
    if total > max_frame as u64 {
        return Err(FrameError::TooLarge { size: total, limit: max_frame });
    }
    let total = total as usize;
    if buf.len() < total {
        // Room for what is missing, up to a read's worth: a head that announces a large frame
        // does not buy the memory before the bytes arrive.
        buf.reserve((total - buf.len()).min(super::RESERVE_AHEAD));
        return Ok(None);
    }
    let bytes = buf.split_to(total);
    if head.crc {
        let (frame, trailer) = bytes.split_at(total - 4);
        let sent = u32::from_be_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
        let computed = crc32fast::hash(frame);
        if sent != computed {
            return Err(FrameError::Malformed(format!("CRC32 trailer 0x{sent:08x}, but the frame's is 0x{computed:08x}")));
        }
    }
    let frame = Frame { head, bytes };
    frame.check_header_map()?;
    Ok(Some(frame))
}

fn parse_head(bytes: &[u8], protocol: u8, kind: Kind) -> Head {
    let u16_at = |at: usize| u16::from_be_bytes([bytes[at], bytes[at + 1]]);
    let u32_at = |at: usize| u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    // v2 shifts everything after the protocol code by one byte, and after the codec by one more.
    let (shift, version, switch) = if protocol == V1 { (0, 0, 0) } else { (1, bytes[1], bytes[11]) };
    let cmd = u16_at(2 + shift);
    let request_id = u32_at(5 + shift);
    let codec = bytes[9 + shift];
    let rest = 10 + 2 * shift;
    let (timeout_ms, status, lengths) = match kind {
        Kind::Response => (0, u16_at(rest), rest + 2),
        Kind::Request | Kind::Oneway => (u32_at(rest) as i32, 0, rest + 4),
    };
    Head {
        protocol,
        version,
        kind,
        cmd,
        request_id,
        codec,
        switch,
        timeout_ms,
        status,
        class_len: u16_at(lengths),
        header_len: u16_at(lengths + 2),
        content_len: u32_at(lengths + 4),
        crc: protocol == V2 && version == 2 && switch & 1 == 1,
    }
}

impl Frame {
    pub fn head(&self) -> &Head {
        &self.head
    }

    fn fixed_len(&self) -> usize {
        Head::fixed_len(self.head.protocol, self.head.kind)
    }

    /// The class name (`com.alipay.sofa.rpc.core.request.SofaRequest`).
    pub fn class(&self) -> &[u8] {
        let start = self.fixed_len();
        &self.bytes[start..start + usize::from(self.head.class_len)]
    }

    fn header_bytes(&self) -> &[u8] {
        let start = self.fixed_len() + usize::from(self.head.class_len);
        &self.bytes[start..start + usize::from(self.head.header_len)]
    }

    /// The content: the serialized request or response, opaque to the proxy.
    pub fn content(&self) -> &[u8] {
        let start = self.fixed_len() + usize::from(self.head.class_len) + usize::from(self.head.header_len);
        &self.bytes[start..start + self.head.content_len as usize]
    }

    /// The header map's pairs in order; a null key or value reads as `None`.
    pub fn headers(&self) -> Headers<'_> {
        Headers { rest: self.header_bytes() }
    }

    /// The first value of header `key`.
    pub fn header(&self, key: &[u8]) -> Option<&[u8]> {
        self.headers().find(|(name, _)| *name == Some(key)).and_then(|(_, value)| value)
    }

    fn check_header_map(&self) -> Result<(), FrameError> {
        let mut rest = self.header_bytes();
        while !rest.is_empty() {
            for part in ["key", "value"] {
                let Some((len, after)) = split_len(rest) else {
                    return Err(FrameError::Malformed(format!("the header map ends inside a {part}'s length")));
                };
                rest = after;
                if len == NULL_LENGTH {
                    continue;
                }
                if len as usize > rest.len() {
                    return Err(FrameError::Malformed(format!(
                        "a header {part} of {len} bytes runs past the header map's {} bytes",
                        self.head.header_len
                    )));
                }
                rest = &rest[len as usize..];
            }
        }
        Ok(())
    }

    /// The service the request names: header `service`, else `sofa_head_target_service`.
    pub fn service(&self) -> Option<&str> {
        let value = self.header(SERVICE).or_else(|| self.header(TARGET_SERVICE))?;
        std::str::from_utf8(value).ok()
    }

    /// The method the request names: header `sofa_head_method_name`, else, for hessian2
    /// content, the `methodName` field of the request object (sofa-rpc-node sends no method
    /// header); `None` when neither says.
    pub fn method(&self) -> Result<Option<Cow<'_, str>>, FrameError> {
        if let Some(value) = self.header(METHOD) {
            return Ok(std::str::from_utf8(value).ok().map(Cow::Borrowed));
        }
        if self.head.codec != HESSIAN2 || self.head.kind == Kind::Response || self.content().is_empty() {
            return Ok(None);
        }
        // Content the reader cannot follow (another class, a serializer's extension) names no
        // method a route could match; the request still routes by its service.
        Ok(super::hessian::Reader::new(self.content()).read_object_field("methodName").ok().flatten())
    }

    /// Gives the frame another request id, recomputing its CRC32 trailer when it has one.
    pub fn set_request_id(&mut self, id: u32) {
        patch_request_id(&mut self.bytes, id);
        self.head.request_id = id;
    }

    /// The frame's bytes, as they go on the wire.
    pub fn into_bytes(self) -> Bytes {
        self.bytes.freeze()
    }

    /// The frame's bytes, as they arrived (or as patched).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Gives the whole frame `frame` (as [`decode`] cut it) request id `id`, recomputing its CRC32
/// trailer when it has one; a frame that has that id already is left as it is.
pub fn patch_request_id(frame: &mut [u8], id: u32) {
    let (protocol, version, switch) = (frame[0], frame.get(1).copied().unwrap_or(0), frame.get(11).copied().unwrap_or(0));
    let at = Head::id_offset(protocol);
    if frame[at..at + 4] == id.to_be_bytes() {
        return;
    }
    frame[at..at + 4].copy_from_slice(&id.to_be_bytes());
    if protocol == V2 && version == 2 && switch & 1 == 1 {
        let end = frame.len() - 4;
        let crc = crc32fast::hash(&frame[..end]);
        frame[end..].copy_from_slice(&crc.to_be_bytes());
    }
}

fn split_len(bytes: &[u8]) -> Option<(u32, &[u8])> {
    let (len, rest) = bytes.split_first_chunk::<4>()?;
    Some((u32::from_be_bytes(*len), rest))
}

/// An iterator over a header map's pairs.
#[derive(Debug)]
pub struct Headers<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Headers<'a> {
    type Item = (Option<&'a [u8]>, Option<&'a [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        // The map was checked when the frame was cut, so every length fits.
        let mut item = [None, None];
        for slot in &mut item {
            let (len, rest) = split_len(self.rest)?;
            self.rest = rest;
            if len != NULL_LENGTH {
                let (value, rest) = self.rest.split_at_checked(len as usize)?;
                *slot = Some(value);
                self.rest = rest;
            }
        }
        Some((item[0], item[1]))
    }
}

/// A response to `request` with `status` and nothing else (no class, header or content), as
/// the proxy answers for itself: heartbeats (status 0, command code heartbeat), and failures
/// such as no route (`status::NO_PROCESSOR`) or a timeout (`status::TIMEOUT`). It keeps the
/// request's protocol, version, codec and switch, so it carries a CRC32 trailer when the
/// request did.
/// A heartbeat request under request id `id`, as sofa-bolt's heartbeat trigger sends it: Bolt
/// v1, no timeout (-1), no class, header or content.
pub fn heartbeat_request(id: u32) -> Bytes {
    let mut out = BytesMut::with_capacity(22);
    out.put_u8(V1);
    out.put_u8(1);
    out.put_u16(cmd::HEARTBEAT);
    out.put_u8(1);
    out.put_u32(id);
    out.put_u8(HESSIAN2);
    out.put_i32(-1);
    out.put_u16(0);
    out.put_u16(0);
    out.put_u32(0);
    out.freeze()
}

pub fn reply(request: &Head, status: u16) -> Bytes {
    let cmd = if request.is_heartbeat() { cmd::HEARTBEAT } else { cmd::RESPONSE };
    let mut out = BytesMut::with_capacity(26);
    out.put_u8(request.protocol);
    if request.protocol == V2 {
        out.put_u8(request.version);
    }
    out.put_u8(0);
    out.put_u16(cmd);
    out.put_u8(1);
    out.put_u32(request.request_id);
    out.put_u8(request.codec);
    if request.protocol == V2 {
        out.put_u8(request.switch);
    }
    out.put_u16(status);
    out.put_u16(0);
    out.put_u16(0);
    out.put_u32(0);
    if request.crc {
        let crc = crc32fast::hash(&out);
        out.put_u32(crc);
    }
    out.freeze()
}
