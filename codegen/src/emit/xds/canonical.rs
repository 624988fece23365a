//! A virtual host's canonical bytes: its protobuf encoding with every map taken out, then
//! those maps' entries sorted by name, each length-prefixed (prost keeps maps in hash order,
//! which differs between processes). The maps are the host's and each route's
//! `typed_per_filter_config`, and each route's metadata (`filter_metadata`, whose structs
//! are maps too, and `typed_filter_metadata`).
//!
//! meshc digests them into each compiled sidecar (`virtual_host_digest`), and the sidecar's
//! xDS client digests what Pilot serves the same way to tell an unchanged host; the runtime
//! includes this file by path, so the two cannot drift.

use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::envoy::config::route::v3::VirtualHost;
use envoy_types::pb::google::protobuf::{Any, Struct, Value, value::Kind};
use prost::Message;

/// The canonical bytes of `host`.
pub fn canonical_bytes(host: &VirtualHost) -> Vec<u8> {
    let mut host = host.clone();
    let mut maps = vec![std::mem::take(&mut host.typed_per_filter_config)];
    maps.extend(host.routes.iter_mut().map(|it| std::mem::take(&mut it.typed_per_filter_config)));
    // Which routes had metadata, and what: appended after the maps, each after its route's
    // position, so that the same metadata on another route gives other bytes.
    let metadata: Vec<(usize, Metadata)> =
        host.routes.iter_mut().enumerate().filter_map(|(index, it)| Some((index, it.metadata.take()?))).collect();
    let mut bytes = host.encode_to_vec();
    for map in maps {
        let mut entries: Vec<(String, Any)> = map.into_iter().collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        put_len(&mut bytes, entries.len());
        for (name, value) in entries {
            put_bytes(&mut bytes, name.as_bytes());
            put_bytes(&mut bytes, &value.encode_to_vec());
        }
    }
    for (index, metadata) in metadata {
        put_len(&mut bytes, index);
        let mut filters: Vec<(&String, &Struct)> = metadata.filter_metadata.iter().collect();
        filters.sort_by(|a, b| a.0.cmp(b.0));
        put_len(&mut bytes, filters.len());
        for (name, fields) in filters {
            put_bytes(&mut bytes, name.as_bytes());
            put_struct(&mut bytes, fields);
        }
        let mut typed: Vec<(&String, &Any)> = metadata.typed_filter_metadata.iter().collect();
        typed.sort_by(|a, b| a.0.cmp(b.0));
        put_len(&mut bytes, typed.len());
        for (name, value) in typed {
            put_bytes(&mut bytes, name.as_bytes());
            put_bytes(&mut bytes, &value.encode_to_vec());
        }
    }
    bytes
}

fn put_len(bytes: &mut Vec<u8>, len: usize) {
    bytes.extend_from_slice(&(len as u64).to_le_bytes());
}

fn put_bytes(bytes: &mut Vec<u8>, value: &[u8]) {
    put_len(bytes, value.len());
    bytes.extend_from_slice(value);
}

/// A struct's fields sorted by name, each value tagged by its kind.
fn put_struct(bytes: &mut Vec<u8>, value: &Struct) {
    let mut fields: Vec<(&String, &Value)> = value.fields.iter().collect();
    fields.sort_by(|a, b| a.0.cmp(b.0));
    put_len(bytes, fields.len());
    for (name, value) in fields {
        put_bytes(bytes, name.as_bytes());
        put_value(bytes, value);
    }
}

fn put_value(bytes: &mut Vec<u8>, value: &Value) {
    match &value.kind {
        None => bytes.push(0),
        Some(Kind::NullValue(_)) => bytes.push(1),
        Some(Kind::NumberValue(it)) => {
            bytes.push(2);
            bytes.extend_from_slice(&it.to_bits().to_le_bytes());
        }
        Some(Kind::StringValue(it)) => {
            bytes.push(3);
            put_bytes(bytes, it.as_bytes());
        }
        Some(Kind::BoolValue(it)) => bytes.extend_from_slice(&[4, u8::from(*it)]),
        Some(Kind::StructValue(it)) => {
            bytes.push(5);
            put_struct(bytes, it);
        }
        Some(Kind::ListValue(it)) => {
            bytes.push(6);
            put_len(bytes, it.values.len());
            for value in &it.values {
                put_value(bytes, value);
            }
        }
    }
}
