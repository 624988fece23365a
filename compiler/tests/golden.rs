//! Golden tests: the whole pipeline against expected files under golden/.
//!
//! - `golden/ok/<case>/`: the mesh is `examples/<case>` when that exists, else `spec/` in the
//!   case; the expected outputs are `ir.json` (the IR), `check.txt` (warnings, if any) and,
//!   when the case has a `requests.txt` of `meshc explain` arguments, `explain.txt`.
//! - `golden/err/<case>/spec/`: a mesh with at least one error; `diagnostics.txt` is the
//!   rendered diagnostics.
//!
//! Update every expected file with `UPDATE_EXPECT=1 cargo test -p meshc --test golden`, then
//! review `git diff golden/`. Without the variable nothing is written, and an expected file
//! that the case no longer produces is an error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use meshc::source::{DiskFs, MemFs};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn updating() -> bool {
    std::env::var_os("UPDATE_EXPECT").is_some()
}

fn cases(kind: &str) -> Vec<PathBuf> {
    let dir = root().join("golden").join(kind);
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("cannot list {}: {err}", dir.display()))
        .map(|it| it.expect("directory entry").path())
        .filter(|it| it.is_dir())
        .collect();
    cases.sort();
    cases
}

/// The mesh directory of an ok case.
fn ok_mesh_dir(case: &Path) -> PathBuf {
    let example = root().join("examples").join(case.file_name().expect("case name"));
    if example.is_dir() { example } else { case.join("spec") }
}

/// Compares `actual` with the expected file, or writes it when updating. Returns a failure message.
fn expect_file(path: &Path, actual: &str) -> Option<String> {
    let expected = std::fs::read_to_string(path).ok();
    if expected.as_deref() == Some(actual) {
        return None;
    }
    if updating() {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap_or_else(|err| panic!("cannot create {}: {err}", parent.display()));
        }
        std::fs::write(path, actual).unwrap_or_else(|err| panic!("cannot write {}: {err}", path.display()));
        return None;
    }
    Some(match expected {
        None => format!("{} is missing; run with UPDATE_EXPECT=1 to create it", path.display()),
        Some(expected) => format!("{} differs:\n{}", path.display(), first_difference(&expected, actual)),
    })
}

fn first_difference(expected: &str, actual: &str) -> String {
    for (index, (e, a)) in expected.lines().zip(actual.lines()).enumerate() {
        if e != a {
            return format!("  line {}:\n  expected: {e}\n  actual:   {a}", index + 1);
        }
    }
    format!("  expected {} lines, got {}", expected.lines().count(), actual.lines().count())
}

/// Fails on files in the case directory that the case does not produce (stale expectations).
fn stale_files(case: &Path, produced: &[&str], failures: &mut Vec<String>) {
    for entry in std::fs::read_dir(case).expect("case directory") {
        let entry = entry.expect("directory entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "spec" || name == "requests.txt" || produced.contains(&name.as_str()) {
            continue;
        }
        if updating() && entry.path().is_file() {
            std::fs::remove_file(entry.path()).expect("remove stale file");
        } else {
            failures.push(format!("{} is not produced by the case (stale?)", entry.path().display()));
        }
    }
}

#[test]
fn golden_ok() {
    let mut failures = Vec::new();
    let cases = cases("ok");
    assert!(!cases.is_empty(), "no golden/ok cases");
    for case in cases {
        let compilation = meshc::compile(&DiskFs::new(ok_mesh_dir(&case)));
        let rendered = compilation.render_plain();
        if compilation.has_errors() || compilation.io_error {
            failures.push(format!("{}: expected no errors:\n{rendered}", case.display()));
            continue;
        }
        let ir = compilation.ir.as_ref().expect("no errors means an IR");
        let mut produced = vec!["ir.json"];
        failures.extend(expect_file(&case.join("ir.json"), &(serde_json::to_string_pretty(ir).expect("IR serialises") + "\n")));
        if !rendered.is_empty() {
            produced.push("check.txt");
            failures.extend(expect_file(&case.join("check.txt"), &rendered));
        }
        if case.join("requests.txt").is_file() {
            produced.push("explain.txt");
            failures.extend(expect_file(&case.join("explain.txt"), &explain_all(ir, &case.join("requests.txt"))));
        }
        produced.push("routes.txt");
        failures.extend(expect_file(&case.join("routes.txt"), &meshc_codegen::emit::report::routes_txt(ir)));
        produced.push("crates");
        failures.extend(expect_crates(&case, ir));
        produced.push("xds");
        let workloads: Vec<&meshc_codegen::ir::Workload> = ir.workloads.iter().collect();
        failures.extend(expect_tree(&case.join("xds"), &meshc_codegen::emit::xds::json_files(ir, &workloads)));
        stale_files(&case, &produced, &mut failures);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn golden_err() {
    let mut failures = Vec::new();
    let cases = cases("err");
    assert!(!cases.is_empty(), "no golden/err cases");
    for case in cases {
        let compilation = meshc::compile(&DiskFs::new(case.join("spec")));
        if compilation.diagnostics.is_empty() {
            failures.push(format!("{}: expected diagnostics, got none", case.display()));
            continue;
        }
        if compilation.ir.is_some() && compilation.diagnostics.iter().all(|it| it.is_error()) {
            failures.push(format!("{}: an IR was produced despite errors", case.display()));
        }
        failures.extend(expect_file(&case.join("diagnostics.txt"), &compilation.render_plain()));
        stale_files(&case, &["diagnostics.txt"], &mut failures);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// The generated crates of every workload, under `crates/`, with the runtime referred to by
/// its path from there, so that `tests/generated` can build them as they are.
fn expect_crates(case: &Path, ir: &meshc_codegen::ir::Mesh) -> Vec<String> {
    let options = meshc_codegen::emit::EmitOptions {
        runtime_path: "../../../../../runtime".to_owned(),
        regenerate: "UPDATE_EXPECT=1 cargo test -p meshc --test golden".to_owned(),
    };
    let workloads: Vec<&meshc_codegen::ir::Workload> = ir.workloads.iter().collect();
    expect_tree(&case.join("crates"), &meshc_codegen::emit::emit(ir, &workloads, &options))
}

/// Generated files under `dir`, and nothing else there.
fn expect_tree(dir: &Path, files: &[meshc_codegen::emit::GeneratedFile]) -> Vec<String> {
    let dir = dir.to_path_buf();
    let mut failures: Vec<String> = files.iter().filter_map(|file| expect_file(&dir.join(&file.path), &file.text)).collect();
    // Files there that the emitter no longer writes are stale.
    let expected: std::collections::BTreeSet<PathBuf> = files.iter().map(|it| dir.join(&it.path)).collect();
    let mut stack = vec![dir.clone()];
    while let Some(current) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&current) else { continue };
        for entry in entries {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if !expected.contains(&path) {
                if updating() {
                    std::fs::remove_file(&path).expect("remove a stale file");
                } else {
                    failures.push(format!("{} is not produced by the case (stale?)", path.display()));
                }
            }
        }
    }
    failures
}

/// Runs each line of `requests.txt` (arguments of `meshc explain`, shell-quoted) through the
/// interpreter, as the CLI does.
fn explain_all(ir: &meshc_codegen::ir::Mesh, requests: &Path) -> String {
    let text = std::fs::read_to_string(requests).expect("requests.txt");
    let mut out = String::new();
    for line in text.lines().filter(|it| !it.trim().is_empty() && !it.starts_with('#')) {
        out.push_str(&format!("$ meshc explain {line}\n"));
        let words = split_words(line);
        match meshc::explain::explain_words(ir, &words) {
            Ok(explanation) => out.push_str(&meshc::explain::render(&explanation)),
            Err(err) => out.push_str(&format!("error: {err}\n")),
        }
        out.push('\n');
    }
    out
}

fn split_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut quote = None;
    let mut in_word = false;
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (None, c) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

/// Determinism: the same mesh with its registry entries listed in reverse order and the
/// entries of each registry snapshot reversed compiles to the same IR (file hashes aside)
/// and to the same diagnostics.
#[test]
fn output_does_not_depend_on_input_order() {
    let mut failures = Vec::new();
    let dirs: Vec<PathBuf> = cases("ok").iter().map(|it| ok_mesh_dir(it)).chain(cases("err").iter().map(|it| it.join("spec"))).collect();
    for dir in dirs {
        let original = load_dir(&dir);
        let shuffled = shuffle(&original);
        let a = meshc::compile(&original);
        let b = meshc::compile(&shuffled);
        let strip = |ir: &Option<meshc_codegen::ir::Mesh>| {
            ir.clone().map(|mut ir| {
                ir.registries.iter_mut().for_each(|it| it.sha256.clear());
                ir.specs.iter_mut().for_each(|it| it.sha256.clear());
                ir
            })
        };
        if strip(&a.ir) != strip(&b.ir) {
            failures.push(format!("{}: the IR changed when the input order changed", dir.display()));
        }
        // And the generated crates are byte-identical.
        let crates = |ir: &Option<meshc_codegen::ir::Mesh>| {
            ir.as_ref().map(|ir| {
                let options = meshc_codegen::emit::EmitOptions { runtime_path: "runtime".to_owned(), regenerate: "meshc build".to_owned() };
                let workloads: Vec<&meshc_codegen::ir::Workload> = ir.workloads.iter().collect();
                meshc_codegen::emit::emit(ir, &workloads, &options)
            })
        };
        if crates(&a.ir) != crates(&b.ir) {
            failures.push(format!("{}: the generated crates changed when the input order changed", dir.display()));
        }
        let xds = |ir: &Option<meshc_codegen::ir::Mesh>| {
            ir.as_ref().map(|ir| meshc_codegen::emit::xds::json_files(ir, &ir.workloads.iter().collect::<Vec<_>>()))
        };
        if xds(&a.ir) != xds(&b.ir) {
            failures.push(format!("{}: the xDS resources changed when the input order changed", dir.display()));
        }
        // Entries moved within a file are reported at their new positions, so compare the
        // findings as a set; their order for a given input is fixed by position.
        let messages = |c: &meshc::Compilation| {
            let mut all = c.diagnostics.iter().map(|it| format!("{} {}", it.code, it.message)).collect::<Vec<_>>();
            all.sort();
            all
        };
        if messages(&a) != messages(&b) {
            failures.push(format!("{}: diagnostics changed with the input order:\n{:?}\n{:?}", dir.display(), messages(&a), messages(&b)));
        }
        // And the same input twice gives byte-identical JSON.
        let again = meshc::compile(&original);
        let json = |c: &meshc::Compilation| c.ir.as_ref().map(|it| serde_json::to_string(it).expect("serialises"));
        if json(&a) != json(&again) {
            failures.push(format!("{}: two compilations of the same input differ", dir.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn load_dir(dir: &Path) -> MemFs {
    MemFs::from_dir(dir).unwrap_or_else(|err| panic!("cannot read {}: {err}", dir.display()))
}

fn shuffle(fs: &MemFs) -> MemFs {
    let mut out = MemFs::new();
    let files: BTreeMap<String, Vec<u8>> = fs.files.clone();
    for (path, bytes) in files {
        let Ok(text) = String::from_utf8(bytes.clone()) else {
            out.insert(path, bytes);
            continue;
        };
        let shuffled = if path == "mesh.toml" {
            reverse_registry_entries(&text)
        } else if path.ends_with(".json") {
            reverse_json_array(&text).unwrap_or(text)
        } else if path.ends_with(".txt") {
            let mut lines: Vec<&str> = text.lines().collect();
            lines.reverse();
            lines.join("\n") + "\n"
        } else {
            text
        };
        out.insert(path, shuffled);
    }
    out
}

fn reverse_registry_entries(text: &str) -> String {
    let mut parts: Vec<&str> = text.split("[[registry]]").collect();
    if parts.len() < 3 {
        return text.to_owned();
    }
    let head = parts.remove(0);
    let mut entries: Vec<String> = parts.iter().map(|it| format!("[[registry]]{}", it.trim_end())).collect();
    entries.reverse();
    format!("{head}{}\n", entries.join("\n\n"))
}

fn reverse_json_array(text: &str) -> Option<String> {
    let mut value: serde_json::Value = serde_json::from_str(text).ok()?;
    value.as_array_mut()?.reverse();
    serde_json::to_string_pretty(&value).ok()
}

#[test]
fn every_example_has_a_golden_case() {
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(root().join("examples")).expect("examples") {
        let entry = entry.expect("entry");
        if entry.path().is_dir() && !root().join("golden/ok").join(entry.file_name()).is_dir() {
            missing.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    assert!(missing.is_empty(), "examples without golden/ok cases: {missing:?}");
}
