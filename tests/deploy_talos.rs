//! `labforge deploy CLUSTER` / `deploy NODE` drive Talos through talosctl, judged by a stand-in talosctl
//! (tests/fixtures/talosctl-standin.py) that parses its arguments as talosctl does, validates every machine
//! config against the pinned Talos v1.13.9 schema, demands mTLS with the cluster's own CA once a node is
//! configured, and keeps the nodes' state: a cluster deploy applies every node (maintenance mode →
//! `--insecure`), bootstraps exactly once, fetches the kubeconfig and checks health; a second deploy
//! changes nothing and does not bootstrap again; without talosctl: exit 2 and the exact commands.

mod common;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

const NODES: [(&str, &str); 4] = [
    ("domum-cp1", "10.60.0.91"),
    ("domum-cp2", "10.60.0.92"),
    ("domum-cp3", "10.60.0.93"),
    ("domum-w1", "10.60.0.94"),
];

struct Lab {
    dir: tempfile::TempDir,
    state: PathBuf,
    bin: PathBuf,
}

impl Lab {
    fn new() -> Lab {
        let dir = example_lab();
        for args in [&["secrets", "init"][..], &["render"][..]] {
            let o = labforge(dir.path(), args);
            assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        }
        let state = dir.path().join("standin-state");
        let bin = dir.path().join("standin-bin");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::create_dir_all(&bin).unwrap();
        let nodes: serde_json::Map<String, Value> = NODES
            .iter()
            .map(|(_, ip)| {
                (
                    ip.to_string(),
                    serde_json::json!({"mode": "maintenance", "config": null}),
                )
            })
            .collect();
        std::fs::write(
            state.join("nodes.json"),
            serde_json::to_string(&nodes).unwrap(),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            repo().join("tests/fixtures/talosctl-standin.py"),
            bin.join("talosctl"),
        )
        .unwrap();
        Lab { dir, state, bin }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    fn deploy(&self, args: &[&str], with_talosctl: bool) -> std::process::Output {
        let path = if with_talosctl {
            format!("{}:/usr/bin:/bin", self.bin.display())
        } else {
            "/usr/bin:/bin".to_string()
        };
        let schema = schema("talos-v1.13.9.schema.json");
        let mut a = vec!["deploy"];
        a.extend_from_slice(args);
        labforge_env(
            self.root(),
            &a,
            &[
                ("PATH", &path),
                ("STANDIN_STATE", self.state.to_str().unwrap()),
                ("STANDIN_TALOS_SCHEMA", schema.to_str().unwrap()),
            ],
        )
    }

    /// The stand-in's calls (argv lists), and clears the log.
    fn calls(&self) -> Vec<Vec<String>> {
        let p = self.state.join("calls.jsonl");
        let text = std::fs::read_to_string(&p).unwrap_or_default();
        let _ = std::fs::remove_file(&p);
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn nodes(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.state.join("nodes.json")).unwrap())
            .unwrap()
    }

    fn set_mode(&self, ip: &str, mode: &str) {
        let mut n = self.nodes();
        n[ip]["mode"] = mode.into();
        std::fs::write(self.state.join("nodes.json"), n.to_string()).unwrap();
    }
}

fn verb(c: &[String]) -> String {
    let mut i = 0;
    while i < c.len() {
        if ["--talosconfig", "--nodes", "--endpoints"].contains(&c[i].as_str()) {
            i += 2;
            continue;
        }
        return c[i].clone();
    }
    String::new()
}

fn count(calls: &[Vec<String>], v: &str, with: &str) -> usize {
    calls
        .iter()
        .filter(|c| verb(c) == v && (with.is_empty() || c.iter().any(|a| a == with)))
        .count()
}

fn events(o: &std::process::Output) -> Vec<Value> {
    stdout(o)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn summary(o: &std::process::Output) -> Vec<(String, String)> {
    let ev = events(o);
    let s = ev
        .iter()
        .find(|e| e["event"] == "summary")
        .unwrap_or_else(|| panic!("no summary: {}\n{}", stdout(o), stderr(o)));
    s["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["host"].as_str().unwrap().to_string(),
                h["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn cluster_deploy_applies_every_node_bootstraps_once_and_a_second_deploy_changes_nothing() {
    let lab = Lab::new();
    let o = lab.deploy(&["domum", "--json"], true);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    let calls = lab.calls();
    // Every node: its config read (refused: maintenance), maintenance probed, applied with --insecure.
    assert_eq!(count(&calls, "apply-config", "--insecure"), 4, "{calls:?}");
    for (_, ip) in NODES {
        assert!(
            calls.iter().any(|c| verb(c) == "apply-config"
                && c.contains(&"--insecure".to_string())
                && c.contains(&ip.to_string())),
            "{ip} not applied: {calls:?}"
        );
        assert_eq!(lab.nodes()[ip]["mode"], "configured");
    }
    assert_eq!(count(&calls, "bootstrap", ""), 1, "{calls:?}");
    assert_eq!(count(&calls, "kubeconfig", ""), 1);
    assert_eq!(count(&calls, "health", ""), 1);
    // In the plan's order: every apply before the bootstrap, the bootstrap before kubeconfig and health.
    let pos = |v: &str| calls.iter().rposition(|c| verb(c) == v).unwrap();
    assert!(pos("apply-config") < pos("bootstrap"));
    assert!(pos("bootstrap") < pos("kubeconfig") && pos("kubeconfig") < pos("health"));
    assert!(lab.root().join("out/talos/domum/kubeconfig").is_file());
    let s = summary(&o);
    assert!(
        s.contains(&("cluster:domum".into(), "changed".into())),
        "{s:?}"
    );
    for (n, _) in NODES {
        assert!(s.contains(&(n.into(), "changed".into())), "{s:?}");
    }
    // No event carries key material from the talosconfig or the machine configs.
    let tc = std::fs::read_to_string(lab.root().join("out/talos/domum/talosconfig")).unwrap();
    let key = tc
        .lines()
        .find_map(|l| l.trim().strip_prefix("key: "))
        .unwrap();
    assert!(!stdout(&o).contains(key) && !stderr(&o).contains(key));

    // Second deploy: every node already runs its config; etcd has members: nothing applied, no bootstrap.
    let o = lab.deploy(&["domum", "--json"], true);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    let calls = lab.calls();
    assert_eq!(count(&calls, "apply-config", ""), 0, "{calls:?}");
    assert_eq!(count(&calls, "bootstrap", ""), 0, "{calls:?}");
    assert_eq!(count(&calls, "etcd", ""), 1);
    let s = summary(&o);
    for (n, _) in NODES {
        assert!(s.contains(&(n.into(), "unchanged".into())), "{s:?}");
    }
    assert!(
        s.contains(&("cluster:domum".into(), "unchanged".into())),
        "{s:?}"
    );
}

#[test]
fn a_changed_config_is_applied_with_the_talosconfig_and_only_to_that_node() {
    let lab = Lab::new();
    assert_eq!(
        lab.deploy(&["domum", "--json"], true).status.code(),
        Some(0)
    );
    lab.calls();
    // The operator changes w1's config (another hostname document, as a render after a spec edit would).
    let p = lab.root().join("out/talos/domum/domum-w1.yaml");
    let text = std::fs::read_to_string(&p).unwrap();
    let mut n = lab.nodes();
    n["10.60.0.94"]["config"] = text.replace("domum-w1", "domum-w1-old").into();
    std::fs::write(lab.state.join("nodes.json"), n.to_string()).unwrap();
    // --dry-run says so and changes nothing.
    let o = lab.deploy(&["domum-w1", "--dry-run", "--json"], true);
    assert_eq!(o.status.code(), Some(1), "{}\n{}", stdout(&o), stderr(&o));
    assert_eq!(count(&lab.calls(), "apply-config", ""), 0);
    let o = lab.deploy(&["domum-w1", "--json"], true);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    let calls = lab.calls();
    let applies: Vec<&Vec<String>> = calls.iter().filter(|c| verb(c) == "apply-config").collect();
    assert_eq!(applies.len(), 1, "{calls:?}");
    assert!(!applies[0].contains(&"--insecure".to_string()));
    assert!(applies[0].contains(&"--talosconfig".to_string()));
    assert!(applies[0].contains(&"10.60.0.94".to_string()));
    // `deploy NODE` runs no cluster step.
    assert_eq!(
        count(&calls, "bootstrap", "") + count(&calls, "health", ""),
        0
    );
    assert_eq!(
        lab.nodes()["10.60.0.94"]["config"].as_str(),
        Some(text.as_str())
    );
}

#[test]
fn an_unreachable_node_fails_and_the_cluster_steps_wait_on_it() {
    let lab = Lab::new();
    lab.set_mode("10.60.0.93", "down");
    let o = lab.deploy(&["domum", "--json"], true);
    assert_eq!(o.status.code(), Some(1), "{}\n{}", stdout(&o), stderr(&o));
    let s = summary(&o);
    assert!(s.contains(&("domum-cp3".into(), "failed".into())), "{s:?}");
    assert!(s.contains(&("domum-cp1".into(), "changed".into())), "{s:?}");
    assert!(
        s.contains(&("cluster:domum".into(), "blocked".into())),
        "{s:?}"
    );
    let calls = lab.calls();
    assert_eq!(count(&calls, "bootstrap", ""), 0, "{calls:?}");
    let ev = events(&o);
    assert!(ev.iter().any(|e| e["event"] == "step"
        && e["status"] == "blocked"
        && e["detail"].as_str().unwrap().contains("waits on domum-cp3")));
}

#[test]
fn without_talosctl_deploy_exits_2_with_the_exact_commands() {
    let lab = Lab::new();
    let o = lab.deploy(&["domum"], false);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("`talosctl` is not on PATH"), "{e}");
    // Exactly the plan's commands (what `labforge plan` prints for the cluster).
    let p = labforge(lab.root(), &["plan", "--json"]);
    let plan: Value = serde_json::from_slice(&p.stdout).unwrap();
    let cmds = plan["clusters"][0]["commands"].as_array().unwrap();
    assert_eq!(cmds.len(), 7);
    for c in cmds {
        assert!(e.contains(c.as_str().unwrap()), "missing {c} in:\n{e}");
    }
    assert!(lab.calls().is_empty());
}

fn verify_status(v: &Value, host: &str, id: &str) -> String {
    v["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == host)
        .unwrap_or_else(|| panic!("no report for {host}: {v}"))["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no {id} for {host}"))["status"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn verify_compares_each_node_s_version_and_machine_config_with_the_plan() {
    let lab = Lab::new();
    assert_eq!(
        lab.deploy(&["domum", "--json"], true).status.code(),
        Some(0)
    );
    let run = |lab: &Lab| {
        let schema = schema("talos-v1.13.9.schema.json");
        let path = format!("{}:/usr/bin:/bin", lab.bin.display());
        let o = labforge_env(
            lab.root(),
            &["verify", "domum", "--json"],
            &[
                ("PATH", &path),
                ("STANDIN_STATE", lab.state.to_str().unwrap()),
                ("STANDIN_TALOS_SCHEMA", schema.to_str().unwrap()),
            ],
        );
        let v: Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}\n{}", stdout(&o), stderr(&o)));
        (o.status.code(), v)
    };
    let (code, v) = run(&lab);
    assert_eq!(code, Some(0), "{v}");
    for (n, _) in NODES {
        assert_eq!(verify_status(&v, n, "talos.version"), "pass");
        assert_eq!(verify_status(&v, n, "talos.machineconfig"), "pass");
    }
    // Drift on w1 and an old Talos on cp2: exactly those checks fail.
    let mut n = lab.nodes();
    let c = n["10.60.0.94"]["config"]
        .as_str()
        .unwrap()
        .replace("domum-w1", "other");
    n["10.60.0.94"]["config"] = c.into();
    n["10.60.0.92"]["tag"] = "v1.12.4".into();
    std::fs::write(lab.state.join("nodes.json"), n.to_string()).unwrap();
    let (code, v) = run(&lab);
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(verify_status(&v, "domum-w1", "talos.machineconfig"), "fail");
    assert_eq!(verify_status(&v, "domum-w1", "talos.version"), "pass");
    assert_eq!(verify_status(&v, "domum-cp2", "talos.version"), "fail");
    assert_eq!(
        verify_status(&v, "domum-cp2", "talos.machineconfig"),
        "pass"
    );
    assert_eq!(
        verify_status(&v, "domum-cp1", "talos.machineconfig"),
        "pass"
    );
}
