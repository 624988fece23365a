//! `mesh.toml`: the mesh's name and namespace, its spec files and its registry snapshots.
//!
//! The field names here are a contract (users and tools write them); new fields may be added,
//! existing ones are never renamed.

use meshc_codegen::ir::RegistryKind;
use serde::Deserialize;
use toml::Spanned;

use crate::diag::{Code, Diagnostic};
use crate::source::{FileId, Span};

/// The manifest file name.
pub const MANIFEST: &str = "mesh.toml";

/// A checked manifest, with spans into `mesh.toml`.
#[derive(Clone, Debug)]
pub struct Manifest {
    /// The manifest's file.
    pub file: FileId,
    /// `[mesh] name`.
    pub name: String,
    /// `[mesh] namespace`: where short names resolve (default `default`).
    pub namespace: String,
    /// `[mesh] cluster_domain` (default `svc.cluster.local`).
    pub cluster_domain: String,
    /// `[mesh] trust_domain` (default `cluster.local`).
    pub trust_domain: String,
    /// `[mesh] specs`: explicit spec files, when given.
    pub specs: Option<Vec<(String, Span)>>,
    /// `[[registry]]` entries, in manifest order.
    pub registries: Vec<RegistryEntry>,
}

/// One `[[registry]]` entry.
#[derive(Clone, Debug)]
pub struct RegistryEntry {
    /// The registry's name: every instance it lists carries it as its origin.
    pub name: String,
    /// Where the name is written.
    pub name_span: Span,
    /// The snapshot format.
    pub kind: RegistryKind,
    /// The snapshot path relative to the mesh directory, normalised.
    pub path: String,
    /// Where the path is written.
    pub path_span: Span,
    /// Merge precedence, higher wins (default 0).
    pub priority: i64,
    /// The namespace of this registry's non-RPC services, when the format does not carry one.
    pub namespace: Option<String>,
    /// The whole entry.
    pub span: Span,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    mesh: Spanned<RawMesh>,
    #[serde(default)]
    registry: Vec<Spanned<RawRegistry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMesh {
    name: Spanned<String>,
    namespace: Option<Spanned<String>>,
    cluster_domain: Option<Spanned<String>>,
    trust_domain: Option<Spanned<String>>,
    specs: Option<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistry {
    name: Spanned<String>,
    kind: Spanned<String>,
    path: Spanned<String>,
    priority: Option<i64>,
    namespace: Option<Spanned<String>>,
}

/// Parses and checks `mesh.toml`; `None` when it is unusable.
pub fn parse(file: FileId, text: &str, diagnostics: &mut Vec<Diagnostic>) -> Option<Manifest> {
    let span = |range: std::ops::Range<usize>| Span::new(file, range);
    let raw: RawManifest = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(err) => {
            let at = err.span().unwrap_or(0..0);
            let message = err.message().trim_end_matches('.').to_owned();
            diagnostics.push(Diagnostic::error(Code::Manifest, format!("invalid {MANIFEST}: {message}")).primary(span(at), ""));
            return None;
        }
    };
    let mesh = raw.mesh.into_inner();
    let mut ok = true;
    let mut check_name = |value: &Spanned<String>, what: &str, rule: fn(&str) -> bool, expected: &str| {
        if !rule(value.get_ref()) {
            ok = false;
            diagnostics.push(
                Diagnostic::error(Code::Manifest, format!("invalid {what} `{}`", value.get_ref()))
                    .primary(span(value.span()), format!("expected {expected}")),
            );
        }
    };
    check_name(&mesh.name, "mesh name", is_dns_label, "a DNS label: lower-case letters, digits and `-`");
    let namespace = mesh.namespace.as_ref().map_or_else(|| "default".to_owned(), |it| it.get_ref().clone());
    if let Some(value) = &mesh.namespace {
        check_name(value, "namespace", is_dns_label, "a DNS label: lower-case letters, digits and `-`");
    }
    if let Some(value) = &mesh.cluster_domain {
        check_name(value, "cluster domain", is_dns_name, "a DNS name such as `svc.cluster.local`");
    }
    if let Some(value) = &mesh.trust_domain {
        check_name(value, "trust domain", is_dns_name, "a DNS name such as `cluster.local`");
    }

    let specs = mesh.specs.as_ref().map(|specs| {
        specs
            .iter()
            .map(|it| {
                let path = crate::source::normalize(it.get_ref());
                if !path.ends_with(".mesh") || it.get_ref().starts_with('/') {
                    diagnostics.push(
                        Diagnostic::error(Code::Manifest, format!("spec file `{}` is not a relative `*.mesh` path", it.get_ref()))
                            .primary(span(it.span()), ""),
                    );
                }
                (path, span(it.span()))
            })
            .collect()
    });

    let mut registries: Vec<RegistryEntry> = Vec::new();
    for entry in &raw.registry {
        let whole = span(entry.span());
        let entry = entry.get_ref();
        let kind = RegistryKind::ALL.iter().copied().find(|it| it.as_str() == entry.kind.get_ref());
        let Some(kind) = kind else {
            let kinds: Vec<_> = RegistryKind::ALL.iter().map(|it| it.as_str()).collect();
            diagnostics.push(
                Diagnostic::error(Code::Manifest, format!("unknown registry kind `{}`", entry.kind.get_ref()))
                    .primary(span(entry.kind.span()), "not a registry kind")
                    .help(format!("use one of: {}", kinds.join(", "))),
            );
            continue;
        };
        let raw_path = entry.path.get_ref();
        if raw_path.starts_with('/') || raw_path.is_empty() {
            diagnostics.push(
                Diagnostic::error(Code::Manifest, format!("registry path `{raw_path}` must be relative to the mesh directory"))
                    .primary(span(entry.path.span()), ""),
            );
            continue;
        }
        if !is_dns_label(entry.name.get_ref()) {
            diagnostics.push(
                Diagnostic::error(Code::Manifest, format!("invalid registry name `{}`", entry.name.get_ref()))
                    .primary(span(entry.name.span()), "expected a DNS label: lower-case letters, digits and `-`"),
            );
            continue;
        }
        if let Some(previous) = registries.iter().find(|it| it.name == *entry.name.get_ref()) {
            diagnostics.push(
                Diagnostic::error(Code::DuplicateName, format!("registry `{}` is declared twice", previous.name))
                    .primary(span(entry.name.span()), "declared again here")
                    .secondary(previous.name_span, "first declared here"),
            );
            continue;
        }
        if let Some(ns) = &entry.namespace
            && !is_dns_label(ns.get_ref())
        {
            diagnostics.push(
                Diagnostic::error(Code::Manifest, format!("invalid namespace `{}`", ns.get_ref()))
                    .primary(span(ns.span()), "expected a DNS label: lower-case letters, digits and `-`"),
            );
            continue;
        }
        registries.push(RegistryEntry {
            name: entry.name.get_ref().clone(),
            name_span: span(entry.name.span()),
            kind,
            path: crate::source::normalize(raw_path),
            path_span: span(entry.path.span()),
            priority: entry.priority.unwrap_or(0),
            namespace: entry.namespace.as_ref().map(|it| it.get_ref().clone()),
            span: whole,
        });
    }

    ok.then(|| Manifest {
        file,
        name: mesh.name.get_ref().clone(),
        namespace,
        cluster_domain: mesh.cluster_domain.map_or_else(|| "svc.cluster.local".to_owned(), |it| it.into_inner()),
        trust_domain: mesh.trust_domain.map_or_else(|| "cluster.local".to_owned(), |it| it.into_inner()),
        specs,
        registries,
    })
}

/// RFC 1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn is_dns_label(text: &str) -> bool {
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.iter().all(|it| it.is_ascii_lowercase() || it.is_ascii_digit() || *it == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// Dot-separated DNS labels.
pub fn is_dns_name(text: &str) -> bool {
    text.len() <= 253 && text.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> (Option<Manifest>, Vec<Diagnostic>) {
        let mut diagnostics = Vec::new();
        let manifest = parse(FileId(0), text, &mut diagnostics);
        (manifest, diagnostics)
    }

    #[test]
    fn defaults_fill_in() {
        let (manifest, diagnostics) = parse_text("[mesh]\nname = \"shop\"\n");
        assert!(diagnostics.is_empty());
        let manifest = manifest.unwrap();
        assert_eq!(manifest.namespace, "default");
        assert_eq!(manifest.cluster_domain, "svc.cluster.local");
        assert_eq!(manifest.trust_domain, "cluster.local");
        assert!(manifest.registries.is_empty());
    }

    #[test]
    fn registry_entries_keep_their_fields() {
        let text =
            "[mesh]\nname = \"m\"\n[[registry]]\nname = \"k8s\"\nkind = \"kubernetes\"\npath = \"./registry/k8s.yaml\"\npriority = 10\n";
        let (manifest, diagnostics) = parse_text(text);
        assert!(diagnostics.is_empty(), "{diagnostics:?}");
        let entry = &manifest.unwrap().registries[0];
        assert_eq!(
            (entry.name.as_str(), entry.kind, entry.path.as_str(), entry.priority),
            ("k8s", RegistryKind::Kubernetes, "registry/k8s.yaml", 10)
        );
    }

    #[test]
    fn unknown_kind_lists_the_kinds() {
        let text = "[mesh]\nname = \"m\"\n[[registry]]\nname = \"z\"\nkind = \"eureka\"\npath = \"z.json\"\n";
        let (_, diagnostics) = parse_text(text);
        assert_eq!(diagnostics.len(), 1);
        assert!(diagnostics[0].help.as_deref().unwrap().contains("sofa-registry"));
    }

    #[test]
    fn unknown_fields_are_errors_with_a_span() {
        let (manifest, diagnostics) = parse_text("[mesh]\nnme = \"m\"\n");
        assert!(manifest.is_none());
        assert_eq!(diagnostics[0].code, Code::Manifest);
        assert!(diagnostics[0].message.contains("nme"), "{}", diagnostics[0].message);
    }
}
