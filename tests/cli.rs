//! The real binary on the example lab and small specs: exit codes, JSON, completions, man pages, secrets, gates.
mod common;

use common::{labforge, labforge_env, stderr, stdout};

#[test]
fn check_on_the_example_lab_exits_0() {
    let o = labforge(&common::repo(), &["check"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).starts_with("ok: 13 hosts"), "{}", stdout(&o));
}

#[test]
fn check_json_is_machine_readable_and_quiet_on_stderr() {
    let o = labforge(&common::repo(), &["check", "--json"]);
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert!(v["errors"].as_array().unwrap().is_empty());
    assert!(stderr(&o).is_empty(), "{}", stderr(&o));
}

#[test]
fn missing_spec_dir_is_an_input_error() {
    let t = tempfile::tempdir().unwrap();
    let o = labforge(t.path(), &["--spec", "nope", "check"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("reading spec directory nope"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn empty_spec_dir_says_what_to_do() {
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir(t.path().join("hosts")).unwrap();
    let o = labforge(t.path(), &["check"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no spec files"), "{}", stderr(&o));
}

#[test]
fn usage_errors_exit_2() {
    let o = labforge(&common::repo(), &["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
    let o = labforge(&common::repo(), &["plan", "--nope"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn help_has_examples_and_exit_codes() {
    let o = labforge(&common::repo(), &["--help"]);
    assert_eq!(o.status.code(), Some(0));
    let s = stdout(&o);
    assert!(
        s.contains("Examples:")
            && s.contains("Exit codes: 0 ok, 1 checks failed or drift, 2 usage or input error"),
        "{s}"
    );
}

#[test]
fn plan_json_covers_every_host_and_is_deterministic() {
    let a = labforge(&common::repo(), &["plan", "--json"]);
    let b = labforge(&common::repo(), &["plan", "--json"]);
    assert_eq!(a.status.code(), Some(0), "{}", stderr(&a));
    assert_eq!(
        a.stdout, b.stdout,
        "plan --json must be byte-identical between runs"
    );
    let v: serde_json::Value = serde_json::from_slice(&a.stdout).unwrap();
    assert_eq!(v["format_version"], 1);
    let hosts: Vec<&str> = v["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        hosts,
        [
            "atlas",
            "ceres",
            "domum-cp1",
            "domum-cp2",
            "domum-cp3",
            "domum-w1",
            "forge",
            "hermes",
            "hestia",
            "iris",
            "platform",
            "prometheus",
            "vulcan"
        ]
    );
    assert!(
        !String::from_utf8_lossy(&a.stdout).contains("/work/"),
        "plan must not leak absolute paths"
    );
}

#[test]
fn plan_of_one_host_and_unknown_host() {
    let o = labforge(&common::repo(), &["plan", "--json", "prometheus"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["hosts"].as_array().unwrap().len(), 1);
    assert_eq!(v["hosts"][0]["connect"], "10.99.0.10");
    assert_eq!(v["hosts"][0]["image"]["kind"], "base-plus-seed");
    let o = labforge(&common::repo(), &["plan", "prometeus"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("did you mean `prometheus`"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn plan_orders_operator_gates_around_their_stack() {
    let o = labforge(&common::repo(), &["plan", "--json", "hermes"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ids: Vec<&str> = v["hosts"][0]["deploy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    let pos = |id: &str| {
        ids.iter()
            .position(|x| *x == id)
            .unwrap_or_else(|| panic!("{id} not in {ids:?}"))
    };
    // The switch installs everything (the gated stack's unit waits for the gate's host marker), so the rest
    // of the host — Traefik, which seed 001 wants deployed and stable first — deploys before the sign-off;
    // the gate then stands between the switch and starting the gated stack.
    assert!(pos("hermes:nixos-switch") < pos("hermes:gate:s001-preconditions"));
    assert!(pos("hermes:gate:s001-preconditions") < pos("hermes:stack-start:metrics"));
    assert!(pos("hermes:stack-start:metrics") < pos("hermes:gate:s001-validation"));
    let gate = &v["hosts"][0]["deploy"][pos("hermes:gate:s001-preconditions")];
    assert_eq!(gate["requires_gate"], "s001-preconditions");
}

/// Every `sha256` in a plan is the hash of a rendered file's bytes (checked to be one), replaced by a marker:
/// the render goldens pin the bytes, the plan snapshots pin the structure.
fn redact_hashes(v: &mut serde_json::Value) -> usize {
    match v {
        serde_json::Value::Object(m) => {
            let mut n = 0;
            for (k, x) in m.iter_mut() {
                if k == "sha256" {
                    let h = x.as_str().expect("sha256 is a string");
                    assert!(
                        h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()),
                        "{h}"
                    );
                    *x = "[sha256]".into();
                    n += 1;
                } else {
                    n += redact_hashes(x);
                }
            }
            n
        }
        serde_json::Value::Array(a) => a.iter_mut().map(redact_hashes).sum(),
        _ => 0,
    }
}

#[test]
fn plan_json_snapshot_of_the_base_spec() {
    let t = tempfile::tempdir().unwrap();
    std::fs::create_dir(t.path().join("hosts")).unwrap();
    std::fs::copy(
        common::repo().join("tests/base-spec.toml"),
        t.path().join("hosts/site.toml"),
    )
    .unwrap();
    let o = labforge(t.path(), &["plan", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let mut v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(redact_hashes(&mut v) > 0, "the plan hashes its artifacts");
    insta::assert_json_snapshot!("plan_base_spec", v);
}

#[test]
fn plan_json_snapshot_of_the_example_lab() {
    let o = labforge(&common::repo(), &["plan", "--json"]);
    let mut v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(redact_hashes(&mut v) > 0, "the plan hashes its artifacts");
    insta::assert_json_snapshot!("plan_example_lab", v, { ".spec_revision" => "[revision]" });
}

#[test]
fn completions_and_man_pages_are_generated_from_clap() {
    for sh in ["bash", "zsh", "fish"] {
        let o = labforge(&common::repo(), &["completions", sh]);
        assert_eq!(o.status.code(), Some(0));
        assert!(stdout(&o).contains("labforge"), "{sh}");
    }
    let t = tempfile::tempdir().unwrap();
    let o = labforge(t.path(), &["man", "man"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let page = std::fs::read_to_string(t.path().join("man/labforge.1")).unwrap();
    assert!(page.contains(".TH labforge"), "{page}");
    assert!(t.path().join("man/labforge-check.1").exists());
}

#[test]
fn graph_is_dot_with_every_host() {
    let o = labforge(&common::repo(), &["graph"]);
    assert_eq!(o.status.code(), Some(0));
    let s = stdout(&o);
    assert!(s.starts_with("graph \"homelab\" {"));
    for h in ["prometheus", "atlas", "domum-w1", "iris"] {
        assert!(s.contains(&format!("\"host:{h}\"")), "{h}");
    }
}

#[test]
fn secrets_store_round_trip_never_shows_plaintext() {
    let t = common::example_lab();
    let id = t.path().join("id.txt");
    let env = [("LABFORGE_AGE_IDENTITY", id.to_str().unwrap())];
    let o = labforge_env(t.path(), &["secrets", "init"], &env);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stdout(&o).trim().starts_with("age1"));
    let ident = std::fs::read_to_string(&id).unwrap();
    assert!(ident.contains(concat!("AGE-SECRET", "-KEY-1")));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&id).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let o = labforge_env(t.path(), &["secrets", "generate"], &env);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let canary = "CANARY-7f3a9c2e-secret-value";
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_labforge"));
    c.args(["secrets", "set", "grafana_admin_password"])
        .current_dir(t.path())
        .env("LABFORGE_AGE_IDENTITY", &id);
    c.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(canary.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(!stderr(&o).contains(canary) && !stdout(&o).contains(canary));

    let f = std::fs::read_to_string(t.path().join("secrets/grafana_admin_password.age")).unwrap();
    assert!(f.starts_with("-----BEGIN AGE ENCRYPTED FILE-----"));
    assert!(!f.contains(canary));
    let o = labforge_env(t.path(), &["secrets", "list", "--json"], &env);
    assert!(!stdout(&o).contains(canary));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let row = v
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "grafana_admin_password")
        .unwrap();
    assert_eq!(row["present"], true);
    let o = labforge_env(t.path(), &["plan", "--json"], &env);
    assert!(!stdout(&o).contains(canary) && !stderr(&o).contains(canary));
}

#[test]
fn secrets_set_refuses_unknown_or_non_store_secrets() {
    let t = common::example_lab();
    let o = labforge(t.path(), &["secrets", "set", "nope"]);
    assert_eq!(o.status.code(), Some(2));
    let o = labforge(t.path(), &["secrets", "set", "portainer_edge_key"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("does not live in the store"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn gates_are_pending_and_cannot_be_confirmed_without_a_person() {
    let t = common::example_lab();
    let o = labforge(t.path(), &["gate", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v
        .as_array()
        .unwrap()
        .iter()
        .all(|g| g["status"] == "pending"));
    // No TTY on stdin: labforge refuses and writes nothing.
    let o = labforge(
        t.path(),
        &["gate", "confirm", "s001-preconditions", "--by", "bot"],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("never confirms a gate by itself"),
        "{}",
        stderr(&o)
    );
    assert!(!t.path().join("gates").exists());
    let o = labforge(t.path(), &["gate", "show", "s001-validation"]);
    assert!(
        stdout(&o).contains("[ ] Metrics survive host reboot"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn rebuild_refuses_hosts_whose_data_would_be_lost_with_exit_2() {
    // Not disposable, and a persistent path on a local disk that is not disposable: both are listed.
    let o = labforge(&common::repo(), &["rebuild", "atlas", "--boot", "qemu"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("refusing to rebuild `atlas`"), "{e}");
    assert!(e.contains("host `atlas` is not disposable"), "{e}");
    assert!(
        e.contains("persistent path /export is on disk `tank`"),
        "{e}"
    );
    assert!(o.stdout.is_empty(), "a refusal prints no phase table");
    // A disposable host still needs a destination.
    let o = labforge(&common::repo(), &["rebuild", "vulcan"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--flash DEV"), "{}", stderr(&o));
    // Talos nodes are not rebuilt over SSH.
    let o = labforge(&common::repo(), &["rebuild", "domum-w1", "--boot", "qemu"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("talosctl"), "{}", stderr(&o));
}
