//! The `meshc` command line as users and scripts see it: exit codes, output formats, and
//! `explain`'s answers for the examples.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use meshc_codegen::ir;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn meshc(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshc")).args(args).current_dir(root()).output().expect("run meshc")
}

fn code(output: &Output) -> i32 {
    output.status.code().expect("exit code")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn check_passes_on_every_example() {
    for example in ["bookinfo", "sofa-shop", "dubbo-demo", "multi-registry"] {
        let output = meshc(&["check", &format!("examples/{example}")]);
        assert_eq!(code(&output), 0, "{example}: {}", stderr(&output));
        assert!(!stderr(&output).contains("error"), "{example}: {}", stderr(&output));
        // A clean check says so in one line, with what it read.
        let said = stderr(&output);
        assert!(said.starts_with(&format!("meshc: no problems in examples/{example} (")), "{example}: {said}");
        assert!(said.contains(" spec file") && said.contains(" workload"), "{example}: {said}");
    }
}

#[test]
fn check_exits_1_on_errors_and_names_the_code() {
    let output = meshc(&["check", "golden/err/unknown-service/spec"]);
    assert_eq!(code(&output), 1);
    let text = stderr(&output);
    assert!(text.contains("error[E0101]: unknown service `reveiws`"), "{text}");
    // Named from the current directory, as the mesh directory was given.
    assert!(text.contains("golden/err/unknown-service/spec/a.mesh:3:8"), "{text}");
}

#[test]
fn warnings_alone_exit_0() {
    let output = meshc(&["check", "golden/err/weights/spec"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert!(stderr(&output).contains("warning[E0205]"));
}

#[test]
fn io_and_usage_problems_exit_2() {
    let missing = meshc(&["check", "no/such/mesh"]);
    assert_eq!(code(&missing), 2);
    assert!(stderr(&missing).contains("mesh.toml"), "{}", stderr(&missing));
    assert_eq!(code(&meshc(&["check", "--no-such-flag"])), 2);
    assert_eq!(code(&meshc(&["check", "examples/bookinfo", "--format", "yaml"])), 2);
    assert_eq!(code(&meshc(&["ir", "no/such/mesh"])), 2);
    assert_eq!(code(&meshc(&["explain", "examples/bookinfo", "--from", "nobody", "GET", "http://reviews:9080/"])), 2);
    assert_eq!(code(&meshc(&["explain", "examples/bookinfo", "--from", "productpage", "GET", "not a url"])), 2);
    assert_eq!(code(&meshc(&["frobnicate"])), 2);
    // The method left out: the directory is not taken for one.
    let no_method = meshc(&["explain", "examples/bookinfo", "--from", "productpage", "http://reviews:9080/"]);
    assert_eq!(code(&no_method), 2);
    assert!(stderr(&no_method).contains("the method is missing"), "{}", stderr(&no_method));
}

#[test]
fn help_and_version_exit_0() {
    let help = meshc(&["--help"]);
    assert_eq!(code(&help), 0);
    for command in ["check", "ir", "explain"] {
        assert!(stdout(&help).contains(command), "{}", stdout(&help));
    }
    assert_eq!(code(&meshc(&["--version"])), 0);
}

#[test]
fn json_diagnostics_carry_positions_and_counts() {
    let output = meshc(&["check", "golden/err/shadowed-prefix/spec", "--format", "json"]);
    assert_eq!(code(&output), 1);
    let json: serde_json::Value = serde_json::from_str(&stdout(&output)).expect("JSON on stdout");
    assert_eq!(json["errors"], 4);
    let first = &json["diagnostics"][0];
    assert_eq!(first["code"], "E0202");
    assert_eq!(first["istio"], "IST0131");
    assert_eq!(first["labels"][0]["file"], "a.mesh");
    assert_eq!(first["labels"][0]["line"], 6);
    assert_eq!(first["labels"][0]["primary"], true);
}

#[test]
fn ir_is_json_that_reads_back() {
    let output = meshc(&["ir", "examples/bookinfo"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let mesh: ir::Mesh = serde_json::from_str(&stdout(&output)).expect("the IR deserialises");
    assert_eq!(mesh.name, "bookinfo");
    let reviews = mesh.services.iter().find(|it| it.name == "reviews").expect("reviews");
    assert_eq!(reviews.host, "reviews.default.svc.cluster.local");
    assert_eq!(reviews.instances.len(), 3);
    let names: Vec<&str> = reviews.subsets.iter().map(|it| it.name.as_str()).collect();
    assert_eq!(names, ["v1", "v2", "v3"]);
    // Dense ids: each element sits at its own index.
    assert!(mesh.services.iter().enumerate().all(|(index, it)| it.id.index() == index));
    assert!(mesh.clusters.iter().enumerate().all(|(index, it)| it.id.index() == index));
    assert!(mesh.clusters.windows(2).all(|it| it[0].name < it[1].name));
}

#[test]
fn ir_is_not_printed_when_the_mesh_has_errors() {
    let output = meshc(&["ir", "golden/err/many-errors/spec"]);
    assert_eq!(code(&output), 1);
    assert!(stdout(&output).is_empty());
}

fn explain_json(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["explain", "examples/bookinfo", "--format", "json"];
    all.extend_from_slice(args);
    let output = meshc(&all);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    serde_json::from_str(&stdout(&output)).expect("JSON on stdout")
}

#[test]
fn explain_sends_jason_to_reviews_v2() {
    let json = explain_json(&["--from", "productpage", "-H", "end-user: jason", "GET", "http://reviews:9080/reviews/1"]);
    assert_eq!(json["route"], "jason");
    assert_eq!(json["destinations"][0]["subset"], "v2");
    assert_eq!(json["destinations"][0]["weight"], 100);
    assert_eq!(json["destinations"][0]["instances"][0]["endpoint"], "10.244.1.16:9080");
}

#[test]
fn explain_splits_everyone_else_between_v1_and_v3() {
    let json = explain_json(&["--from", "productpage", "-H", "end-user: maria", "GET", "http://reviews:9080/reviews/1"]);
    assert_eq!(json["route"], "everyone-else");
    assert_eq!(json["routes"][0]["matched"], false);
    assert!(json["routes"][0]["reason"].as_str().unwrap().contains("maria"));
    let split: Vec<(String, u64)> = json["destinations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|it| (it["subset"].as_str().unwrap().to_owned(), it["weight"].as_u64().unwrap()))
        .collect();
    assert_eq!(split, [("v1".to_owned(), 90), ("v3".to_owned(), 10)]);
}

#[test]
fn explain_gives_404_for_hosts_out_of_scope_or_unknown() {
    let json = explain_json(&["--from", "productpage", "GET", "http://ratings:9080/ratings/1"]);
    assert_eq!(json["status"], 404);
    assert!(json["no_table"]["reason"].as_str().unwrap().contains("may not call"));
    let json = explain_json(&["--from", "productpage", "GET", "http://nowhere.example.com/"]);
    assert_eq!(json["status"], 404);
}

#[test]
fn explain_applies_the_ratings_allow_policy() {
    let json = explain_json(&["--from", "reviews", "GET", "http://ratings:9080/ratings/1"]);
    let verdict = &json["destinations"][0]["authz"][0];
    assert_eq!(verdict["workload"], "ratings");
    assert_eq!(verdict["allowed"], true);
    assert_eq!(verdict["policy"], "ratings-callers");
    // Only GET is allowed.
    let json = explain_json(&["--from", "reviews", "POST", "http://ratings:9080/ratings/1"]);
    assert_eq!(json["destinations"][0]["authz"][0]["allowed"], false);
}

fn copy_dir(from: &Path, to: &Path) {
    let files = meshc::source::MemFs::from_dir(from).expect("read");
    for (path, bytes) in &files.files {
        let target = to.join(path);
        std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
        std::fs::write(target, bytes).expect("write");
    }
}

#[test]
fn diff_exits_0_without_differences_and_1_with_them() {
    let same = meshc(&["diff", "examples/bookinfo", "examples/bookinfo"]);
    assert_eq!(code(&same), 0, "{}", stderr(&same));
    assert!(stdout(&same).contains("no routing difference"));

    let changed = std::env::temp_dir().join(format!("meshc-cli-diff-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&changed);
    copy_dir(&root().join("examples/bookinfo"), &changed);
    let spec = std::fs::read_to_string(changed.join("bookinfo.mesh")).expect("read");
    std::fs::write(changed.join("bookinfo.mesh"), spec.replace("weight 90", "weight 80").replace("weight 10", "weight 20")).expect("write");
    let output = meshc(&["diff", "examples/bookinfo", changed.to_str().expect("utf-8"), "--format", "json"]);
    assert_eq!(code(&output), 1, "{}", stderr(&output));
    let json: serde_json::Value = serde_json::from_str(&stdout(&output)).expect("JSON");
    assert_eq!(json[0]["kind"], "changed");
    assert_eq!(json[0]["path"], "reviews.default.svc.cluster.local:9080 / everyone-else");
    assert!(json[0]["after"].as_str().expect("after").contains("v3|reviews.default.svc.cluster.local 20%"));
    let _ = std::fs::remove_dir_all(&changed);
}

#[test]
fn diff_against_a_git_revision_reads_the_directory_from_git() {
    // The committed bookinfo against itself at HEAD: what a fresh clone holds.
    let output = meshc(&["diff", "examples/bookinfo", "--git", "HEAD"]);
    assert_eq!(code(&output), 0, "{}{}", stdout(&output), stderr(&output));
    let output = meshc(&["diff", "examples/bookinfo", "--git", "no-such-revision"]);
    assert_eq!(code(&output), 2);
}

#[test]
fn diff_of_a_mesh_with_errors_exits_2() {
    let output = meshc(&["diff", "examples/bookinfo", "golden/err/unknown-service/spec"]);
    assert_eq!(code(&output), 2);
    assert!(stderr(&output).contains("does not compile"));
}
