//! Dubbo 2 frames: a 16-byte head (magic 0xdabb, flags, status, a 64-bit request id, the body's
//! length) and a body. Frames are cut, checked and forwarded as they arrived, with only the
//! request id patched. Routing keys come from the body's first four hessian2 strings (framework
//! version, service path, service version, method); the attachments after the arguments are
//! read only when a route needs them (the group, or another attachment).

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};

use super::FrameError;
use super::hessian::{self, Reader, StringPairs};

pub const MAGIC: [u8; 2] = [0xda, 0xbb];
pub const HEAD_LEN: usize = 16;

/// Flag bits (byte 2).
pub const FLAG_REQUEST: u8 = 0x80;
pub const FLAG_TWO_WAY: u8 = 0x40;
pub const FLAG_EVENT: u8 = 0x20;
pub const SERIALIZATION_MASK: u8 = 0x1f;
/// Serialization id of hessian2, the only one whose keys the proxy reads.
pub const HESSIAN2: u8 = 2;

/// Response status codes (byte 3).
pub mod status {
    pub const OK: u8 = 20;
    pub const CLIENT_TIMEOUT: u8 = 30;
    pub const SERVER_TIMEOUT: u8 = 31;
    pub const BAD_REQUEST: u8 = 40;
    pub const BAD_RESPONSE: u8 = 50;
    pub const SERVICE_NOT_FOUND: u8 = 60;
    pub const SERVICE_ERROR: u8 = 70;
    pub const SERVER_ERROR: u8 = 80;
    pub const CLIENT_ERROR: u8 = 90;
    pub const SERVER_THREADPOOL_EXHAUSTED: u8 = 100;
}

/// The head of a frame, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Head {
    pub flag: u8,
    pub status: u8,
    pub request_id: u64,
    body_len: u32,
}

impl Head {
    pub fn is_request(&self) -> bool {
        self.flag & FLAG_REQUEST != 0
    }

    /// A request that expects a response.
    pub fn is_two_way(&self) -> bool {
        self.flag & FLAG_TWO_WAY != 0
    }

    /// An event: a heartbeat (or a read-only notice).
    pub fn is_event(&self) -> bool {
        self.flag & FLAG_EVENT != 0
    }

    pub fn serialization(&self) -> u8 {
        self.flag & SERIALIZATION_MASK
    }
}

/// One whole frame.
#[derive(Debug)]
pub struct Frame {
    head: Head,
    bytes: BytesMut,
}

/// What a request's body says it calls: the keys routes use, decoded (borrowed from the body
/// when, as usual, they are ASCII); the framework version and the parameter types only
/// located, and read when asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Invocation<'a> {
    /// The service path: the interface's fully qualified name.
    pub path: Cow<'a, str>,
    /// The service version; `None` when the caller sent null.
    pub version: Option<Cow<'a, str>>,
    pub method: Cow<'a, str>,
    /// Where the framework version starts in the body.
    dubbo_at: usize,
    /// Where the parameter types start in the body.
    types_at: usize,
    /// Where the arguments start in the body.
    arguments_at: usize,
}

/// Cuts the next frame off the front of `buf`: `Ok(None)` until all of it has arrived. A frame
/// larger than `max_frame` bytes is refused as soon as its head says so.
pub fn decode(buf: &mut BytesMut, max_frame: usize) -> Result<Option<Frame>, FrameError> {
    let seen = buf.len().min(2);
    if buf[..seen] != MAGIC[..seen] {
        return Err(FrameError::Magic(format!("{:02x?} does not start with the Dubbo magic 0xdabb", &buf[..seen])));
    }
    if buf.len() < HEAD_LEN {
        return Ok(None);
    }
    let head = Head {
        flag: buf[2],
        status: buf[3],
        request_id: u64::from_be_bytes(buf[4..12].try_into().unwrap_or_default()),
        body_len: u32::from_be_bytes(buf[12..16].try_into().unwrap_or_default()),
    };
    let total = HEAD_LEN as u64 + u64::from(head.body_len);
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
    Ok(Some(Frame { head, bytes: buf.split_to(total) }))
}

impl Frame {
    pub fn head(&self) -> &Head {
        &self.head
    }

    pub fn body(&self) -> &[u8] {
        &self.bytes[HEAD_LEN..]
    }

    /// The invocation a hessian2 request names; `Ok(None)` for events, responses and other
    /// serializations, whose bodies the proxy does not read.
    pub fn invocation(&self) -> Result<Option<Invocation<'_>>, FrameError> {
        if !self.head.is_request() || self.head.is_event() || self.head.serialization() != HESSIAN2 {
            return Ok(None);
        }
        let malformed = |err: hessian::HessianError| FrameError::Malformed(format!("the request body: {err}"));
        let mut reader = Reader::new(self.body());
        let dubbo_at = reader.position();
        reader.skip_string().map_err(malformed)?;
        let mut next = |what: &str, nullable: bool| -> Result<Option<Cow<'_, str>>, FrameError> {
            match reader.read_string().map_err(malformed)? {
                None if !nullable => Err(FrameError::Malformed(format!("the request body's {what} is null"))),
                found => Ok(found),
            }
        };
        let path = next("service path", false)?.unwrap_or_default();
        let version = next("service version", true)?;
        let method = next("method name", false)?.unwrap_or_default();
        let types_at = reader.position();
        reader.skip_string().map_err(malformed)?;
        Ok(Some(Invocation { path, version, method, dubbo_at, types_at, arguments_at: reader.position() }))
    }

    /// The Dubbo framework version a request names (`2.0.2`).
    pub fn dubbo_version(&self, invocation: &Invocation<'_>) -> Result<Option<Cow<'_, str>>, FrameError> {
        Reader::new(self.body().get(invocation.dubbo_at..).unwrap_or_default())
            .read_string()
            .map_err(|err| FrameError::Malformed(format!("the request body: {err}")))
    }

    /// The JVM descriptors of a request's parameter types (`Ljava/lang/String;I`).
    pub fn parameter_types(&self, invocation: &Invocation<'_>) -> Result<Cow<'_, str>, FrameError> {
        Reader::new(self.body().get(invocation.types_at..).unwrap_or_default())
            .read_string()
            .map(Option::unwrap_or_default)
            .map_err(|err| FrameError::Malformed(format!("the request body: {err}")))
    }

    /// The attachments of a request whose invocation is `invocation`: the string pairs of the
    /// map after the arguments, which are skipped without being decoded.
    pub fn attachments(&self, invocation: &Invocation<'_>) -> Result<StringPairs<'_>, FrameError> {
        let types = self.parameter_types(invocation)?;
        let Some(arity) = hessian::descriptor_arity(&types) else {
            return Err(FrameError::Malformed(format!("parameter types {types:?} are no JVM descriptor")));
        };
        let malformed = |err: hessian::HessianError| FrameError::Malformed(format!("the request body: {err}"));
        let body = self.body();
        let mut reader = Reader::new(body.get(invocation.arguments_at..).unwrap_or_default());
        for _ in 0..arity {
            reader.skip().map_err(malformed)?;
        }
        if reader.position() == body.len() - invocation.arguments_at {
            // Old clients send no attachments at all.
            return Ok(Vec::new());
        }
        Ok(reader.read_string_map().map_err(malformed)?.unwrap_or_default())
    }

    /// Gives the frame another request id.
    pub fn set_request_id(&mut self, id: u64) {
        patch_request_id(&mut self.bytes, id);
        self.head.request_id = id;
    }

    /// The frame's bytes, as they arrived (or as patched).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The frame's bytes, as they go on the wire.
    pub fn into_bytes(self) -> Bytes {
        self.bytes.freeze()
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Gives the whole frame `frame` (as [`decode`] cut it) request id `id`.
pub fn patch_request_id(frame: &mut [u8], id: u64) {
    frame[4..12].copy_from_slice(&id.to_be_bytes());
}

/// A heartbeat request under request id `id`: a two-way hessian2 event whose body is null.
pub fn heartbeat_request(id: u64) -> Bytes {
    let mut out = BytesMut::with_capacity(HEAD_LEN + 1);
    out.extend_from_slice(&MAGIC);
    out.put_u8(FLAG_REQUEST | FLAG_TWO_WAY | FLAG_EVENT | HESSIAN2);
    out.put_u8(0);
    out.put_u64(id);
    out.put_u32(1);
    out.put_u8(b'N');
    out.freeze()
}

/// The answer to a heartbeat request: an event response whose body is hessian2 null.
pub fn heartbeat_reply(request: &Head) -> Bytes {
    let mut out = response_head(request, FLAG_EVENT, status::OK, 1);
    out.put_u8(b'N');
    out.freeze()
}

/// A failure response to `request` (`status::SERVICE_NOT_FOUND`, `status::SERVER_TIMEOUT`…)
/// whose body is the error message as a hessian2 string, as Dubbo's own error responses are.
pub fn error_reply(request: &Head, status: u8, message: &str) -> Bytes {
    let body = hessian_string(message);
    let mut out = response_head(request, 0, status, body.len() as u32);
    out.extend_from_slice(&body);
    out.freeze()
}

fn response_head(request: &Head, flags: u8, status: u8, body_len: u32) -> BytesMut {
    let mut out = BytesMut::with_capacity(HEAD_LEN + body_len as usize);
    out.extend_from_slice(&MAGIC);
    // The response uses the request's serialization, even when it is not hessian2: its body
    // (a string or null) then reads as garbage, but such callers get a status they can act on.
    out.put_u8(flags | (request.flag & SERIALIZATION_MASK));
    out.put_u8(status);
    out.put_u64(request.request_id);
    out.put_u32(body_len);
    out
}

/// A hessian2 string as Java's Hessian2Output writes it: non-final `R` chunks of 32,768 UTF-16
/// units (one less when a surrogate pair would be split), then a final chunk in the shortest form.
fn hessian_string(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 3);
    let chars: Vec<char> = text.chars().collect();
    let units = |it: &[char]| it.iter().map(|c| c.len_utf16()).sum::<usize>();
    let mut rest = &chars[..];
    loop {
        // Chunks split between characters, so a chunk may hold one unit less than the maximum.
        let mut take = 0;
        let mut count = 0;
        while take < rest.len() && count + rest[take].len_utf16() <= 0x8000 {
            count += rest[take].len_utf16();
            take += 1;
        }
        let (chunk, after) = rest.split_at(take);
        let len = units(chunk);
        if after.is_empty() {
            match len {
                0..=31 => out.push(len as u8),
                32..=1023 => out.extend_from_slice(&[0x30 + (len >> 8) as u8, len as u8]),
                _ => out.extend_from_slice(&[b'S', (len >> 8) as u8, len as u8]),
            }
        } else {
            out.extend_from_slice(&[b'R', (len >> 8) as u8, len as u8]);
        }
        // Each UTF-16 unit as one to three bytes, as Java's encoder writes them: a supplementary
        // character becomes two encoded surrogates (CESU-8), not one four-byte sequence.
        let mut pair = [0u16; 2];
        for c in chunk {
            for &unit in c.encode_utf16(&mut pair).iter() {
                match unit {
                    0..=0x7f => out.push(unit as u8),
                    0x80..=0x7ff => out.extend_from_slice(&[0xc0 | (unit >> 6) as u8, 0x80 | (unit & 0x3f) as u8]),
                    _ => out.extend_from_slice(&[0xe0 | (unit >> 12) as u8, 0x80 | ((unit >> 6) & 0x3f) as u8, 0x80 | (unit & 0x3f) as u8]),
                }
            }
        }
        rest = after;
        if rest.is_empty() {
            return out;
        }
    }
}

#[cfg(test)]
pub(super) fn hessian_string_for_tests(text: &str) -> Vec<u8> {
    hessian_string(text)
}
