//! Issue 14, point 4: every problem at once. One bad value never drops its file, its table or its stack; each
//! mistake gives exactly one diagnostic with the full field path, the location of the offending value (not its
//! table header), a fix, and no Rust type names.
mod common;

use std::path::Path;

/// One reported error, from `check --json`.
#[derive(Debug, PartialEq)]
struct Got {
    rule: String,
    path: String,
    line: u64,
    column: u64,
}

fn check_json(cwd: &Path, args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let o = common::labforge(cwd, args);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\n{}",
            common::stdout(&o),
            common::stderr(&o)
        )
    });
    (o.status.code(), v)
}

fn errors(v: &serde_json::Value) -> Vec<Got> {
    v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| Got {
            rule: e["rule"].as_str().unwrap().to_string(),
            path: e["path"].as_str().unwrap().to_string(),
            line: e["line"].as_u64().unwrap_or(0),
            column: e["column"].as_u64().unwrap_or(0),
        })
        .collect()
}

/// Words a Rust or serde error would use and an operator would not.
const RUST_WORDS: &[&str] = &[
    "i8",
    "i16",
    "i32",
    "i64",
    "i128",
    "u8",
    "u16",
    "u32",
    "u64",
    "u128",
    "usize",
    "f64",
    "map",
    "sequence",
    "struct",
    "enum",
    "Option",
    "Vec",
    "String",
    "serde",
    "invalid type",
];

fn assert_operator_words(case: &str, text: &str) {
    for w in text.split(|c: char| !c.is_ascii_alphanumeric() && c != '_') {
        assert!(
            !RUST_WORDS.contains(&w),
            "{case}: `{w}` (a Rust type word) in: {text}"
        );
    }
    for phrase in ["invalid type", "expected one of `"] {
        assert!(!text.contains(phrase), "{case}: serde wording in: {text}");
    }
}

/// Where `needle` starts on the `# expect` line number `nth` (0-based) of the case: (line, column), 1-based.
fn expected_at(text: &str, nth: usize, needle: &str) -> (u64, u64) {
    let (i, line) = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains("# expect "))
        .nth(nth)
        .expect("an # expect line");
    let col = line
        .find(needle)
        .unwrap_or_else(|| panic!("`{needle}` not on line {}: {line}", i + 1));
    ((i + 1) as u64, line[..col].chars().count() as u64 + 1)
}

/// Each case in the corpus, with the exact diagnostics it must give: (rule, field path, the text of the
/// offending value on its `# expect` line). Nothing else may be reported.
/// (rule, field path, offending value text).
type Want = (&'static str, &'static str, &'static str);

const CASES: &[(&str, &[Want])] = &[
    (
        "float-for-integer-in-site",
        &[("SPEC003", "site.hardening.ssh_port", "22.5")],
    ),
    (
        "float-for-integer-vlan",
        &[("SPEC003", "networks.mgmt.vlan", "99.0")],
    ),
    (
        "integer-too-large",
        &[("SPEC003", "networks.mgmt.vlan", "99999999999999999999")],
    ),
    (
        "wrong-type-in-one-export",
        &[("SPEC003", "hosts.store1.exports[1].read_only", "\"yes\"")],
    ),
    (
        "wrong-type-export-path",
        &[("SPEC003", "hosts.store1.exports[1].path", "5")],
    ),
    (
        "two-unknown-keys-in-one-table",
        &[
            ("SPEC002", "site.colour", "colour"),
            ("SPEC002", "site.local", "local"),
        ],
    ),
    (
        "datetime-for-string",
        &[("SPEC003", "hosts.store1.description", "2024-01-01")],
    ),
    (
        "wrong-type-in-stack",
        &[("SPEC003", "stacks.web.services.app.expose[0]", "\"9113\"")],
    ),
    (
        "wrong-type-stack-port",
        &[(
            "SPEC003",
            "stacks.web.services.app.ports[0].host",
            "\"8080\"",
        )],
    ),
    (
        "stack-networks-not-a-table",
        &[("SPEC003", "stacks.web.networks", "[\"front\"]")],
    ),
    (
        "unknown-key-in-nested-table",
        &[("SPEC002", "stacks.web.services.app.metrics.paht", "paht")],
    ),
    (
        "unknown-key-docker-network",
        &[("SPEC002", "stacks.web.networks.front.internl", "internl")],
    ),
    (
        "wrong-type-deep-in-list",
        &[("SPEC003", "hosts.alpha.mounts[0].options[1]", "5")],
    ),
    (
        "wrong-type-required-cidr",
        &[("SPEC003", "networks.mgmt.cidr", "10")],
    ),
    (
        "wrong-type-interface-network",
        &[("SPEC003", "hosts.alpha.interfaces.eth0.network", "99")],
    ),
    (
        "wrong-type-cluster-node",
        &[("SPEC003", "clusters.k.control_planes[1]", "2")],
    ),
    (
        "wrong-type-secret-source",
        &[("SPEC003", "secrets.app_password.source", "true")],
    ),
    (
        "wrong-type-env-value",
        &[(
            "SPEC003",
            "stacks.web.services.app.environment.APP_MODE",
            "1 }",
        )],
    ),
    (
        "list-for-a-table",
        &[("SPEC003", "hosts.cp3.talos", "[\"/dev/sda\"]")],
    ),
    (
        "missing-required-key",
        &[("SPEC005", "networks.mgmt.vlan", "[networks.mgmt]")],
    ),
    ("renamed-host-header", &[("SPEC005", "hosts.pi1", "pi1")]),
    ("no-site-header", &[("SPEC005", "site", "site")]),
    ("wrong-type-site", &[("SPEC003", "site", "\"lab\"")]),
    (
        "wrong-type-ssh-keys",
        &[("SPEC003", "site.admins[0].ssh_keys", "\"ssh-ed25519")],
    ),
    (
        "wrong-type-vlan",
        &[("SPEC003", "networks.mgmt.vlan", "\"99\"")],
    ),
    (
        "wrong-type-disposable",
        &[("SPEC003", "hosts.alpha.disposable", "\"yes\"")],
    ),
    ("unknown-top-level-table", &[("SPEC002", "hostz", "hostz")]),
];

#[test]
fn each_type_or_key_mistake_gives_one_diagnostic_at_the_value_with_its_full_path() {
    let dir = common::repo().join("tests/fixtures/bad-specs");
    let mut failures = Vec::new();
    for (case, want) in CASES {
        let file = dir.join(format!("{case}.toml"));
        let text = std::fs::read_to_string(&file).unwrap();
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("spec")).unwrap();
        std::fs::write(t.path().join("spec/site.toml"), &text).unwrap();
        let (code, v) = check_json(t.path(), &["--spec", "spec", "check", "--json"]);
        assert_eq!(code, Some(2), "{case}: exit code");
        let want: Vec<Got> = want
            .iter()
            .enumerate()
            .map(|(i, (rule, path, needle))| {
                let (line, column) = expected_at(&text, i, needle);
                Got {
                    rule: rule.to_string(),
                    path: path.to_string(),
                    line,
                    column,
                }
            })
            .collect();
        let got = errors(&v);
        if got != want {
            failures.push(format!(
                "{case}:\n  want {want:?}\n  got  {got:?}\n  {}",
                serde_json::to_string_pretty(&v["errors"]).unwrap()
            ));
        }
        for e in v["errors"].as_array().unwrap() {
            let help = e["help"].as_str().unwrap();
            assert!(!help.is_empty(), "{case}: no fix in {e}");
            assert_eq!(e["file"], "spec/site.toml", "{case}");
            assert_operator_words(case, e["message"].as_str().unwrap());
            assert_operator_words(case, help);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn no_message_in_the_corpus_names_a_rust_type() {
    for e in std::fs::read_dir(common::repo().join("tests/fixtures/bad-specs")).unwrap() {
        let case = e.unwrap().path();
        let t = tempfile::tempdir().unwrap();
        let spec = t.path().join("spec");
        if case.is_dir() {
            common::copy_dir(&case, &spec);
        } else {
            std::fs::create_dir(&spec).unwrap();
            std::fs::copy(&case, spec.join(case.file_name().unwrap())).unwrap();
        }
        let (_, v) = check_json(t.path(), &["--spec", "spec", "check", "--json"]);
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        for e in v["errors"].as_array().unwrap() {
            assert_operator_words(&name, e["message"].as_str().unwrap());
            assert_operator_words(&name, e["help"].as_str().unwrap());
        }
    }
}

#[test]
fn a_long_value_is_elided_in_the_message() {
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir(t.path().join("spec")).unwrap();
    let long = "x".repeat(500);
    let base = std::fs::read_to_string(common::repo().join("tests/base-spec.toml")).unwrap();
    let text = base.replace("vlan = 99", &format!("vlan = \"{long}\""));
    std::fs::write(t.path().join("spec/site.toml"), text).unwrap();
    let (code, v) = check_json(t.path(), &["--spec", "spec", "check", "--json"]);
    assert_eq!(code, Some(2));
    let errs = v["errors"].as_array().unwrap();
    assert_eq!(errs.len(), 1, "{errs:?}");
    let msg = errs[0]["message"].as_str().unwrap();
    assert!(msg.contains('…') && msg.len() < 200, "{msg}");
}

/// Edit one file of the example lab, run `check --json` there.
fn lab_with(file: &str, from: &str, to: &str) -> (Option<i32>, serde_json::Value, String) {
    let lab = common::example_lab();
    let p = lab.path().join("hosts").join(file);
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.contains(from), "{file} has no `{from}`");
    let text = text.replacen(from, to, 1);
    std::fs::write(&p, &text).unwrap();
    let (code, v) = check_json(lab.path(), &["check", "--json"]);
    (code, v, text)
}

fn located(text: &str, needle: &str) -> (u64, u64) {
    let at = text.find(needle).unwrap();
    let line = text[..at].matches('\n').count() as u64 + 1;
    let ls = text[..at].rfind('\n').map(|i| i + 1).unwrap_or(0);
    (line, text[ls..at].chars().count() as u64 + 1)
}

#[test]
fn regression_a_float_for_an_integer_in_site_toml_gives_one_error_not_79() {
    let (code, v, text) = lab_with("site.toml", "max_auth_tries = 3", "max_auth_tries = 3.0");
    assert_eq!(code, Some(2));
    let (line, column) = located(&text, "max_auth_tries = 3.0");
    let column = column + "max_auth_tries = ".len() as u64;
    assert_eq!(
        errors(&v),
        vec![Got {
            rule: "SPEC003".into(),
            path: "site.hardening.max_auth_tries".into(),
            line,
            column
        }],
        "{v}"
    );
    assert!(v["errors"][0]["file"]
        .as_str()
        .unwrap()
        .ends_with("hosts/site.toml"));
}

#[test]
fn regression_a_wrong_type_in_one_export_leaves_the_host_and_its_other_exports() {
    let (code, v, text) = lab_with("atlas.toml", "read_only = true", "read_only = \"yes\"");
    assert_eq!(code, Some(2));
    let (line, column) = located(&text, "read_only = \"yes\"");
    let column = column + "read_only = ".len() as u64;
    assert_eq!(
        errors(&v),
        vec![Got {
            rule: "SPEC003".into(),
            path: "hosts.atlas.exports[1].read_only".into(),
            line,
            column
        }],
        "{v}"
    );
}

#[test]
fn regression_one_unknown_key_does_not_hide_the_next() {
    let (code, v, text) = lab_with(
        "site.toml",
        "max_auth_tries = 3",
        "max_auth_tries = 3\nmax_tries = 3\nlogin_grace = 30",
    );
    assert_eq!(code, Some(2));
    let got = errors(&v);
    let paths: Vec<&str> = got.iter().map(|g| g.path.as_str()).collect();
    assert_eq!(
        paths,
        ["site.hardening.max_tries", "site.hardening.login_grace"],
        "{v}"
    );
    assert_eq!(
        (got[0].line, got[0].column),
        located(&text, "max_tries = 3\n")
    );
    assert!(got.iter().all(|g| g.rule == "SPEC002"));
    let help = v["errors"][1]["help"].as_str().unwrap();
    assert!(help.contains("login_grace_time"), "{help}");
}

/// The kinds of wrong value tried for a `key = value` line.
fn wrong_values(v: &str) -> &'static [&'static str] {
    let v = v.trim();
    if v.starts_with('"') {
        &["5", "2024-01-01", "true", "[\"a\"]"]
    } else if v == "true" || v == "false" {
        &["\"yes\"", "1"]
    } else if v.starts_with('[') && v.ends_with(']') {
        &["\"x\"", "7"]
    } else if v.starts_with('{') {
        &["\"x\"", "[1]"]
    } else if v.parse::<i64>().is_ok() {
        &["\"5\"", "5.5"]
    } else {
        &[]
    }
}

/// Load `files` (name, text) in-process; each error as `line:col [rule] path: message` with its file.
fn load(files: &[(String, String)]) -> Vec<(String, usize, String)> {
    let loaded = labforge::spec::load_bytes(
        files
            .iter()
            .map(|(n, t)| (Path::new(n.as_str()), t.as_bytes())),
    );
    loaded
        .diagnostics
        .errors
        .iter()
        .map(|e| {
            (
                e.file.clone().unwrap_or_default(),
                e.line.unwrap_or(0),
                format!(
                    "{}:{}:{} [{}] {}: {}",
                    e.file.as_deref().unwrap_or(""),
                    e.line.unwrap_or(0),
                    e.column.unwrap_or(0),
                    e.rule,
                    e.path,
                    e.message
                ),
            )
        })
        .collect()
}

/// Every `key = value` line of `files`, given a value of the wrong kind, and every table given an unknown
/// key, gives exactly one error, on that line — whatever the field (a property over a whole spec).
fn one_error_per_mutation(files: &[(String, String)]) -> (usize, Vec<String>) {
    assert!(
        load(files).is_empty(),
        "the spec must be valid: {:?}",
        load(files)
    );
    let mut failures = Vec::new();
    let mut tried = 0;
    for (fi, (name, text)) in files.iter().enumerate() {
        let lines: Vec<&str> = text.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let mut edits: Vec<String> = Vec::new();
            if let Some((k, v)) = l.split_once(" = ") {
                if !k.starts_with('#') && !k.contains('.') && !k.starts_with(' ') {
                    edits.extend(wrong_values(v).iter().map(|w| format!("{k} = {w}")));
                }
            }
            let t = l.trim();
            // (Talos patches are free-form tables, checked against the Talos schema by their own rule.)
            if t.starts_with('[') && t.ends_with(']') && !t.contains(".patches") {
                edits.push(format!("{l}\nzz_unknown = 1"));
            }
            for edit in edits {
                tried += 1;
                let mut t: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
                t[i] = edit.clone();
                let mut fs = files.to_vec();
                fs[fi].1 = t.join("\n") + "\n";
                let want_line = if edit.contains("zz_unknown") {
                    i + 2
                } else {
                    i + 1
                };
                let errs = load(&fs);
                if errs.len() != 1 || errs[0].1 != want_line || errs[0].0 != *name {
                    failures.push(format!(
                        "{name}:{} `{}`: {}",
                        i + 1,
                        edit.replace('\n', "⏎"),
                        errs.iter()
                            .map(|e| e.2.clone())
                            .collect::<Vec<_>>()
                            .join(" | ")
                    ));
                }
            }
        }
    }
    (tried, failures)
}

#[test]
fn any_value_of_the_wrong_kind_anywhere_is_exactly_one_error_on_its_line() {
    let base = std::fs::read_to_string(common::repo().join("tests/base-spec.toml")).unwrap();
    let (tried, failures) = one_error_per_mutation(&[("site.toml".to_string(), base)]);
    assert!(tried > 100, "only {tried} mutations");
    assert!(
        failures.is_empty(),
        "{} of {tried} mutations:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn any_value_of_the_wrong_kind_anywhere_in_the_example_lab_is_exactly_one_error_on_its_line() {
    let lab = common::example_lab();
    let mut files = Vec::new();
    fn walk(d: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "toml") {
                out.push(p);
            }
        }
    }
    let mut paths = Vec::new();
    walk(&lab.path().join("hosts"), &mut paths);
    paths.sort();
    for p in paths {
        let rel = p.strip_prefix(lab.path()).unwrap().display().to_string();
        files.push((rel, std::fs::read_to_string(&p).unwrap()));
    }
    let (tried, failures) = one_error_per_mutation(&files);
    assert!(tried > 300, "only {tried} mutations");
    assert!(
        failures.is_empty(),
        "{} of {tried} mutations:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
