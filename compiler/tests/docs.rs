//! The documentation stays true: examples in the language reference parse, every diagnostic
//! code is listed, and every source file says what it owns.

use std::path::{Path, PathBuf};

use meshc::diag::Code;
use meshc::source::{FileId, MemFs};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn reference() -> String {
    std::fs::read_to_string(root().join("mesh-specs/README.md")).expect("mesh-specs/README.md")
}

/// The fenced blocks of a Markdown text in a language.
fn blocks(text: &str, language: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match &mut current {
            None if line.trim() == format!("```{language}") => current = Some(String::new()),
            Some(block) if line.trim() == "```" => {
                out.push(std::mem::take(block));
                current = None;
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None => {}
        }
    }
    out
}

#[test]
fn spec_examples_in_the_reference_parse() {
    let examples = blocks(&reference(), "mesh");
    assert!(examples.len() >= 6, "expected the reference's examples, found {}", examples.len());
    for (index, example) in examples.iter().enumerate() {
        let mut diagnostics = Vec::new();
        let file = meshc::syntax::parse(FileId(0), example, &mut diagnostics);
        assert!(file.is_some() && diagnostics.is_empty(), "example {} does not parse: {diagnostics:?}\n{example}", index + 1);
    }
}

#[test]
fn manifest_and_native_examples_in_the_reference_load() {
    let toml_blocks = blocks(&reference(), "toml");
    let manifest = toml_blocks.iter().find(|it| it.contains("[mesh]")).expect("a manifest example");
    let native = toml_blocks.iter().find(|it| it.contains("[[service]]")).expect("a native registry example");
    let manifest = manifest.replace("specs = [\"routes.mesh\"]", "specs = []").replace("kind = \"kubernetes\"", "kind = \"native\"");
    let mut fs = MemFs::new();
    fs.insert("mesh.toml", manifest).insert("registry/k8s.yaml", native.clone());
    let compilation = meshc::compile(&fs);
    assert!(!compilation.has_errors(), "{}", compilation.render_plain());
    let ir = compilation.ir.expect("an IR");
    let reviews = &ir.services[0];
    assert_eq!((reviews.name.as_str(), reviews.namespace.as_str()), ("reviews", "default"));
    assert_eq!(ir.instances[0].locality.subzone.as_deref(), Some("rack-7"));
}

#[test]
fn every_diagnostic_code_is_documented_with_its_istio_code() {
    let text = reference();
    for code in Code::ALL {
        let row = text.lines().find(|it| it.starts_with(&format!("| {} |", code.as_str())));
        let Some(row) = row else { panic!("{} is not in the table of mesh-specs/README.md", code.as_str()) };
        let istio = row.split('|').nth(2).map(str::trim).unwrap_or("");
        assert_eq!(istio, code.istio().unwrap_or(""), "the Istio code of {} differs in the reference", code.as_str());
    }
}

#[test]
fn every_rust_file_starts_by_saying_what_it_owns() {
    let mut missing = Vec::new();
    let mut stack = vec![root().join("compiler"), root().join("codegen"), root().join("runtime"), root().join("xtask")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                if !path.ends_with("target") {
                    stack.push(path);
                }
            } else if path.extension().is_some_and(|it| it == "rs") {
                let text = std::fs::read_to_string(&path).expect("read");
                if !text.starts_with("//!") {
                    missing.push(path.strip_prefix(root()).unwrap_or(&path).display().to_string());
                }
            }
        }
    }
    missing.sort();
    assert!(missing.is_empty(), "files without a `//!` first line: {missing:?}");
}
