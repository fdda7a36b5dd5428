//! The lab's dependency graph (src/spec/deps.rs): the example lab's waves, a cycle refused by `check` with
//! the cycle named, and a deploy where a failing provider stops exactly its dependants (stub connector: no
//! network, no root).

mod common;
use common::*;
use labforge::spec::deps::{Edge, EdgeKind};
use labforge::spec::model::Spec;
use labforge::transport::{BoxFut, Transport};
use serde_json::Value;
use std::sync::{Arc, Mutex};

#[test]
fn example_lab_deploys_in_three_waves_resolver_first() {
    let o = labforge(&repo(), &["plan", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let plan: Value = serde_json::from_slice(&o.stdout).unwrap();
    let waves: Vec<Vec<String>> =
        serde_json::from_value(plan["dependencies"]["waves"].clone()).unwrap();
    // iris serves the lab's resolver (site.nameservers) from its dns stack: everyone else needs it first.
    assert_eq!(waves[0], ["iris"]);
    // hermes mounts atlas's export; the Talos nodes join the cluster domum-cp1 bootstraps.
    let wave = |h: &str| waves.iter().position(|w| w.iter().any(|x| x == h)).unwrap();
    assert!(wave("hermes") > wave("atlas"));
    assert!(wave("prometheus") > wave("atlas"));
    for n in ["domum-cp2", "domum-cp3", "domum-w1"] {
        assert!(wave(n) > wave("domum-cp1"), "{n}");
    }
    assert_eq!(waves.len(), 3, "{waves:?}");
    let edges = plan["dependencies"]["edges"].as_array().unwrap();
    let has = |from: &str, to: &str, kind: &str| {
        edges
            .iter()
            .any(|e| e["from"] == from && e["to"] == to && e["kind"] == kind)
    };
    assert!(has("hermes", "iris/dns", "dns"));
    assert!(has("hermes", "atlas", "nfs"));
    assert!(has("hermes/metrics", "hermes/ingress", "network"));
    assert!(has("hermes/metrics", "hermes/ingress", "scrape"));
    assert!(has("hermes/metrics", "gate:s001-preconditions", "gate"));
    assert!(has("domum-w1", "domum-cp1", "talos"));
    // The human plan prints the waves.
    let o = labforge(&repo(), &["plan"]);
    let s = stdout(&o);
    assert!(s.contains("wave 1: iris"), "{s}");
    assert!(
        s.contains("hermes → atlas (nfs: hermes mounts atlas:/export/appdata"),
        "{s}"
    );
}

#[test]
fn a_dependency_cycle_is_refused_by_check_with_the_cycle_named() {
    let t = example_lab();
    let p = t.path().join("hosts/site.toml");
    let text = std::fs::read_to_string(&p).unwrap();
    // Every SERVERS host also resolves through atlas (10.60.0.20), and atlas through iris: iris ↔ atlas.
    let text = text.replacen(
        "role = \"servers\"\n",
        "role = \"servers\"\nnameservers = [\"10.60.0.20\"]\n",
        1,
    );
    std::fs::write(&p, text).unwrap();
    let o = labforge(t.path(), &["check", "--json"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let errs = v["errors"].as_array().unwrap();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0]["rule"], "SPEC031");
    let m = errs[0]["message"].as_str().unwrap();
    assert!(
        m.contains("atlas → iris → atlas") || m.contains("iris → atlas → iris"),
        "{m}"
    );
    assert!(m.contains("resolves through"), "{m}");
}

/// Fails every connection and records who was tried.
struct Refusing {
    tried: Mutex<Vec<String>>,
}

impl labforge::deploy::Connector for Refusing {
    fn connect<'a>(&'a self, host: &'a str) -> BoxFut<'a, anyhow::Result<Arc<dyn Transport>>> {
        Box::pin(async move {
            self.tried.lock().unwrap().push(host.to_string());
            anyhow::bail!("stub: {host} is down")
        })
    }
    fn verify<'a>(
        &'a self,
        _spec: &'a Spec,
        host: &'a str,
    ) -> BoxFut<'a, labforge::verify::HostReport> {
        Box::pin(async move { panic!("stub verify of {host}") })
    }
}

#[test]
fn a_failing_provider_stops_exactly_its_dependants() {
    let spec = Arc::new(
        labforge::spec::load_dir(&repo().join("hosts"))
            .unwrap()
            .spec
            .unwrap(),
    );
    let names = ["atlas", "hermes", "forge"];
    let sel: Vec<&labforge::spec::model::Host> = names.iter().map(|n| &spec.hosts[*n]).collect();
    let plan = labforge::plan::plan(&spec, &sel);
    let connector = Arc::new(Refusing {
        tried: Mutex::new(Vec::new()),
    });
    let ctx = Arc::new(labforge::deploy::Ctx {
        spec: spec.clone(),
        root: repo(),
        connector: connector.clone(),
        sink: Arc::new(|_: &labforge::deploy::Event| {}),
        confirm_timeout: std::time::Duration::from_secs(5),
        secrets: Arc::new(|n: &str| anyhow::bail!("no secret {n} in this test")),
        dry_run: false,
    });
    // hermes mounts atlas's export (an edge of the plan); forge needs neither.
    let edges: Vec<Edge> = plan.dependencies.edges.clone();
    assert!(edges
        .iter()
        .any(|e| e.from == "hermes" && e.to == "atlas" && e.kind == EdgeKind::Nfs));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let summary = rt.block_on(labforge::deploy::deploy_in_waves(
        ctx,
        plan.hosts.clone(),
        8,
        &edges,
    ));
    let st = |h: &str| {
        summary
            .iter()
            .find(|s| s.host == h)
            .unwrap_or_else(|| panic!("no row for {h}"))
            .clone()
    };
    assert_eq!(st("atlas").status, labforge::deploy::StepStatus::Failed);
    assert_eq!(st("forge").status, labforge::deploy::StepStatus::Failed);
    assert_eq!(st("hermes").status, labforge::deploy::StepStatus::Blocked);
    assert!(st("hermes").detail.contains("not started: waits on atlas"));
    let tried = connector.tried.lock().unwrap().clone();
    assert!(tried.contains(&"atlas".to_string()) && tried.contains(&"forge".to_string()));
    assert!(!tried.contains(&"hermes".to_string()), "{tried:?}");
}
