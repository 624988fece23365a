//! Property tests of the whole pipeline: whatever the input (random text, random tokens of
//! the language, or mutations of the examples' specs and snapshots), compiling never panics
//! and ends in exactly one of two ways: an IR, or at least one error.
//!
//! The case counts keep the run short; `PROPTEST_CASES` raises them for a longer soak.

use std::path::Path;

use meshc::source::MemFs;
use proptest::prelude::*;

fn example(name: &str) -> MemFs {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("root").join("examples").join(name);
    MemFs::from_dir(&dir).expect("read the example")
}

/// 128 cases per property, or `PROPTEST_CASES`.
fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|it| it.parse().ok()).unwrap_or(128)
}

/// The property every compilation must have.
fn compiles_or_explains(fs: &MemFs) -> Result<(), TestCaseError> {
    let compilation = meshc::compile(fs);
    // Rendering must not panic either, and must name every error.
    let rendered = compilation.render_plain();
    prop_assert_eq!(compilation.ir.is_some(), !compilation.has_errors(), "{}", rendered);
    if let Some(ir) = &compilation.ir {
        prop_assert!(serde_json::to_string(ir).is_ok());
    } else {
        prop_assert!(rendered.contains("error"), "no error rendered: {}", rendered);
    }
    Ok(())
}

/// Tokens of the language, so random sequences get past the first character.
fn token() -> impl Strategy<Value = String> {
    let words = prop::sample::select(vec![
        "service",
        "routes",
        "route",
        "match",
        "to",
        "subset",
        "port",
        "weight",
        "workload",
        "serves",
        "calls",
        "authorization",
        "workloads",
        "action",
        "allow",
        "deny",
        "rule",
        "from",
        "when",
        "in",
        "not_in",
        "not",
        "telemetry",
        "access_log",
        "request_id",
        "tracing",
        "on",
        "off",
        "header",
        "path",
        "method",
        "query",
        "authority",
        "version",
        "group",
        "exact",
        "prefix",
        "regex",
        "present",
        "absent",
        "timeout",
        "retries",
        "per_try_timeout",
        "fault",
        "delay",
        "abort",
        "grpc",
        "mirror",
        "redirect",
        "respond",
        "rewrite",
        "protocol",
        "http",
        "bolt",
        "dubbo",
        "tcp",
        "load_balancer",
        "ring_hash",
        "maglev",
        "limits",
        "outlier_detection",
        "health_check",
        "tls",
        "reviews",
        "ratings",
        "productpage",
        "v1",
        "v2",
        "v3",
        "{",
        "}",
        ",",
        "=",
        "*",
        "\"x\"",
        "\"/api\"",
        "\"[\"",
        "\"end-user\"",
        "9080",
        "0",
        "99999",
        "1s",
        "250ms",
        "1.5s",
        "10%",
        "150%",
        "100/s",
        "rate_limit",
        "burst",
        "per_source",
        "methods",
        "paths",
        "principals",
        "\"com.ex.OrderFacade\"",
        "\"gray/com.ex.DemoService:1.0.0\"",
        "#c\n",
        "\n",
    ]);
    words.prop_map(str::to_owned)
}

fn with_spec(mut fs: MemFs, spec: String) -> MemFs {
    let names: Vec<String> = fs.files.keys().filter(|it| it.ends_with(".mesh")).cloned().collect();
    for name in names {
        fs.files.remove(&name);
    }
    fs.insert("fuzz.mesh", spec);
    fs
}

/// Deletes, duplicates or replaces a random slice of the text.
fn mutate(text: &[u8], edits: &[(usize, usize, u8, u8)]) -> Vec<u8> {
    let mut out = text.to_vec();
    for &(at, len, kind, byte) in edits {
        if out.is_empty() {
            break;
        }
        let start = at % out.len();
        let end = (start + len % 64).min(out.len());
        match kind % 4 {
            0 => {
                out.drain(start..end);
            }
            1 => {
                let copy: Vec<u8> = out[start..end].to_vec();
                out.splice(start..start, copy);
            }
            2 => out[start] = byte,
            _ => out.truncate(start),
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_as_a_spec(spec in "\\PC{0,400}") {
        compiles_or_explains(&with_spec(example("bookinfo"), spec))?;
    }

    #[test]
    fn random_token_sequences_as_a_spec(tokens in prop::collection::vec(token(), 0..120)) {
        compiles_or_explains(&with_spec(example("bookinfo"), tokens.join(" ")))?;
    }

    #[test]
    fn mutated_example_specs(which in 0usize..4, edits in prop::collection::vec((any::<usize>(), any::<usize>(), any::<u8>(), any::<u8>()), 1..6)) {
        let name = ["bookinfo", "sofa-shop", "dubbo-demo", "multi-registry"][which];
        let mut fs = example(name);
        let spec = fs.files.keys().find(|it| it.ends_with(".mesh")).cloned().expect("a spec");
        let mutated = mutate(&fs.files[&spec], &edits);
        fs.insert(spec, mutated);
        compiles_or_explains(&fs)?;
    }

    #[test]
    fn mutated_registry_snapshots(which in 0usize..4, file in any::<prop::sample::Index>(), edits in prop::collection::vec((any::<usize>(), any::<usize>(), any::<u8>(), any::<u8>()), 1..6)) {
        let name = ["bookinfo", "sofa-shop", "dubbo-demo", "multi-registry"][which];
        let mut fs = example(name);
        let registries: Vec<String> = fs.files.keys().filter(|it| it.starts_with("registry/")).cloned().collect();
        let path = file.get(&registries).clone();
        let mutated = mutate(&fs.files[&path], &edits);
        fs.insert(path, mutated);
        compiles_or_explains(&fs)?;
    }

    #[test]
    fn mutated_manifests(which in 0usize..4, edits in prop::collection::vec((any::<usize>(), any::<usize>(), any::<u8>(), any::<u8>()), 1..4)) {
        let name = ["bookinfo", "sofa-shop", "dubbo-demo", "multi-registry"][which];
        let mut fs = example(name);
        let mutated = mutate(&fs.files["mesh.toml"], &edits);
        fs.insert("mesh.toml", mutated);
        compiles_or_explains(&fs)?;
    }
}
