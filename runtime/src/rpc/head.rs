//! An RPC request as compiled routes see it: the five keys MOSN routes Bolt and Dubbo by
//! (`service`, `interface`, `version`, `group`, `method`) and the request's string headers
//! (Bolt's header map, Dubbo's attachments).

use std::borrow::Cow;

use super::FrameError;
use super::{bolt, dubbo};

/// Which RPC protocol a request came in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RpcProtocol {
    Bolt,
    Dubbo,
}

impl RpcProtocol {
    pub fn name(self) -> &'static str {
        match self {
            RpcProtocol::Bolt => "bolt",
            RpcProtocol::Dubbo => "dubbo",
        }
    }
}

/// The routing keys of one request, borrowed from its frame where they are (as usual) ASCII
/// there: reading them allocates nothing.
#[derive(Clone, Debug)]
pub struct RpcHead<'a> {
    protocol: RpcProtocol,
    /// The interface's fully qualified name: what picks the route table.
    interface: Cow<'a, str>,
    /// Bolt: the service name as sent (`interface:version[:uniqueId]`); Dubbo: `None`, the
    /// interface.
    service: Option<Cow<'a, str>>,
    version: Option<Cow<'a, str>>,
    /// The Dubbo group; empty when none was sent (and always for Bolt).
    group: Cow<'a, str>,
    method: Cow<'a, str>,
    headers: Headers<'a>,
}

/// A request's string headers.
#[derive(Clone, Debug)]
enum Headers<'a> {
    /// Dubbo's attachments (when read), or given ones.
    Pairs(Vec<(Cow<'a, str>, Cow<'a, str>)>),
    /// A Bolt frame's header map, searched where it lies when a route or a policy asks for a
    /// header: most never do, and collecting every pair cost each request an allocation.
    Bolt(&'a bolt::Frame),
}

impl<'a> RpcHead<'a> {
    /// The keys of a Bolt request: the `service` header (else `sofa_head_target_service`),
    /// split into interface and version, and the method.
    pub fn bolt(frame: &'a bolt::Frame) -> Result<RpcHead<'a>, FrameError> {
        let service = frame.service().unwrap_or_default();
        let mut parts = service.splitn(3, ':');
        let interface = Cow::Borrowed(parts.next().unwrap_or_default());
        let version = parts.next().map(Cow::Borrowed);
        let method = frame.method()?.unwrap_or_default();
        Ok(RpcHead {
            protocol: RpcProtocol::Bolt,
            interface,
            service: Some(Cow::Borrowed(service)),
            version,
            group: Cow::Borrowed(""),
            method,
            headers: Headers::Bolt(frame),
        })
    }

    /// The keys of a Dubbo request: the service path (attachment `interface` overrides it),
    /// version, method and, when `attachments` is set, group and attachments, whose reading
    /// means skipping the arguments. `Ok(None)` for frames that carry no invocation.
    pub fn dubbo(frame: &'a dubbo::Frame, attachments: bool) -> Result<Option<RpcHead<'a>>, FrameError> {
        let Some(invocation) = frame.invocation()? else { return Ok(None) };
        let headers = if attachments { frame.attachments(&invocation)? } else { Vec::new() };
        let attachment = |key: &str| headers.iter().find(|(name, _)| name == key).map(|(_, value)| value.clone());
        let interface = attachment("interface").unwrap_or(invocation.path);
        let version = invocation.version.filter(|it| !it.is_empty()).or_else(|| attachment("version"));
        let group = attachment("group").unwrap_or_default();
        let headers = Headers::Pairs(headers);
        Ok(Some(RpcHead { protocol: RpcProtocol::Dubbo, interface, service: None, version, group, method: invocation.method, headers }))
    }

    /// Keys from their values (tests, the interpreter).
    pub fn from_parts(protocol: RpcProtocol, interface: &'a str, version: Option<&'a str>, group: &'a str, method: &'a str) -> RpcHead<'a> {
        let service = match (protocol, version) {
            (RpcProtocol::Bolt, Some(version)) => Some(Cow::Owned(format!("{interface}:{version}"))),
            (RpcProtocol::Bolt, None) => Some(Cow::Borrowed(interface)),
            (RpcProtocol::Dubbo, _) => None,
        };
        RpcHead {
            protocol,
            interface: Cow::Borrowed(interface),
            service,
            version: version.map(Cow::Borrowed),
            group: Cow::Borrowed(group),
            method: Cow::Borrowed(method),
            headers: Headers::Pairs(Vec::new()),
        }
    }

    /// The same keys with these headers (Bolt header keys or Dubbo attachments).
    pub fn with_headers(mut self, headers: Vec<(Cow<'a, str>, Cow<'a, str>)>) -> RpcHead<'a> {
        self.headers = Headers::Pairs(headers);
        self
    }

    /// The same keys with this service name (Bolt's `interface:version[:uniqueId]`).
    pub fn with_service(mut self, service: &'a str) -> RpcHead<'a> {
        self.service = Some(Cow::Borrowed(service));
        self
    }

    pub fn protocol(&self) -> RpcProtocol {
        self.protocol
    }

    pub fn interface(&self) -> &str {
        &self.interface
    }

    pub fn service(&self) -> &str {
        self.service.as_deref().unwrap_or(&self.interface)
    }

    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    pub fn method(&self) -> &str {
        &self.method
    }

    /// A Bolt header or Dubbo attachment; the first of several with one key. Keys and values
    /// that are not UTF-8 (or null) are not there.
    pub fn header(&self, name: &str) -> Option<&str> {
        match &self.headers {
            Headers::Pairs(pairs) => pairs.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_ref()),
            Headers::Bolt(frame) => frame.headers().find_map(|(key, value)| {
                if key? != name.as_bytes() {
                    return None;
                }
                std::str::from_utf8(value?).ok()
            }),
        }
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
}
