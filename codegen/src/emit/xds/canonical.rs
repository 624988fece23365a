//! A virtual host's canonical bytes: its protobuf encoding with every `typed_per_filter_config`
//! map taken out, then those maps' entries sorted by name, each length-prefixed (prost keeps
//! maps in hash order, which differs between processes).
//!
//! meshc digests them into each compiled sidecar (`virtual_host_digest`), and the sidecar's
//! xDS client digests what Pilot serves the same way to tell an unchanged host; the runtime
//! includes this file by path, so the two cannot drift.

use envoy_types::pb::envoy::config::route::v3::VirtualHost;
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

/// The canonical bytes of `host`.
pub fn canonical_bytes(host: &VirtualHost) -> Vec<u8> {
    let mut host = host.clone();
    let mut maps = vec![std::mem::take(&mut host.typed_per_filter_config)];
    maps.extend(host.routes.iter_mut().map(|it| std::mem::take(&mut it.typed_per_filter_config)));
    let mut bytes = host.encode_to_vec();
    for map in maps {
        let mut entries: Vec<(String, Any)> = map.into_iter().collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        bytes.extend_from_slice(&(entries.len() as u64).to_le_bytes());
        for (name, value) in entries {
            let value = value.encode_to_vec();
            bytes.extend_from_slice(&(name.len() as u64).to_le_bytes());
            bytes.extend_from_slice(name.as_bytes());
            bytes.extend_from_slice(&(value.len() as u64).to_le_bytes());
            bytes.extend_from_slice(&value);
        }
    }
    bytes
}
