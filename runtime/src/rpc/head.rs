//! An RPC request as compiled routes see it: the five keys MOSN routes Bolt and Dubbo by
//! (`service`, `interface`, `version`, `group`, `method`) and the request's string headers
//! (Bolt's header map, Dubbo's attachments).

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

/// The routing keys of one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcHead {
    protocol: RpcProtocol,
    /// The interface's fully qualified name: what picks the route table.
    interface: String,
    /// Bolt: the service name as sent (`interface:version[:uniqueId]`); Dubbo: the interface.
    service: String,
    version: Option<String>,
    /// The Dubbo group; empty when none was sent (and always for Bolt).
    group: String,
    method: String,
    headers: Vec<(String, String)>,
}

impl RpcHead {
    /// The keys of a Bolt request: the `service` header (else `sofa_head_target_service`),
    /// split into interface and version, and the method.
    pub fn bolt(frame: &bolt::Frame) -> Result<RpcHead, FrameError> {
        let service = frame.service().unwrap_or_default().to_owned();
        let mut parts = service.splitn(3, ':');
        let interface = parts.next().unwrap_or_default().to_owned();
        let version = parts.next().map(str::to_owned);
        let method = frame.method()?.unwrap_or_default();
        let headers = frame
            .headers()
            .filter_map(|(key, value)| Some((std::str::from_utf8(key?).ok()?.to_owned(), std::str::from_utf8(value?).ok()?.to_owned())))
            .collect();
        Ok(RpcHead { protocol: RpcProtocol::Bolt, interface, service, version, group: String::new(), method, headers })
    }

    /// The keys of a Dubbo request: the service path (attachment `interface` overrides it),
    /// version, method and, when `attachments` is set, group and attachments, whose reading
    /// means skipping the arguments. `Ok(None)` for frames that carry no invocation.
    pub fn dubbo(frame: &dubbo::Frame, attachments: bool) -> Result<Option<RpcHead>, FrameError> {
        let Some(invocation) = frame.invocation()? else { return Ok(None) };
        let headers = if attachments { frame.attachments(&invocation)? } else { Vec::new() };
        let attachment = |key: &str| headers.iter().find(|(name, _)| name == key).map(|(_, value)| value.clone());
        let interface = attachment("interface").unwrap_or_else(|| invocation.path.clone());
        let version = invocation.version.clone().filter(|it| !it.is_empty()).or_else(|| attachment("version"));
        let group = attachment("group").unwrap_or_default();
        Ok(Some(RpcHead {
            protocol: RpcProtocol::Dubbo,
            service: interface.clone(),
            interface,
            version,
            group,
            method: invocation.method,
            headers,
        }))
    }

    /// Keys from their values (tests, the interpreter).
    pub fn from_parts(protocol: RpcProtocol, interface: &str, version: Option<&str>, group: &str, method: &str) -> RpcHead {
        let service = match (protocol, version) {
            (RpcProtocol::Bolt, Some(version)) => format!("{interface}:{version}"),
            _ => interface.to_owned(),
        };
        RpcHead {
            protocol,
            interface: interface.to_owned(),
            service,
            version: version.map(str::to_owned),
            group: group.to_owned(),
            method: method.to_owned(),
            headers: Vec::new(),
        }
    }

    /// The same keys with these headers (Bolt header keys or Dubbo attachments).
    pub fn with_headers(mut self, headers: Vec<(String, String)>) -> RpcHead {
        self.headers = headers;
        self
    }

    /// The same keys with this service name (Bolt's `interface:version[:uniqueId]`).
    pub fn with_service(mut self, service: &str) -> RpcHead {
        service.clone_into(&mut self.service);
        self
    }

    pub fn protocol(&self) -> RpcProtocol {
        self.protocol
    }

    pub fn interface(&self) -> &str {
        &self.interface
    }

    pub fn service(&self) -> &str {
        &self.service
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

    /// A Bolt header or Dubbo attachment; the first of several with one key.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str())
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }
}
