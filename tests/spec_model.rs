//! Validation semantics on small specs: layered defaults, exceptions, warnings vs errors.
mod common;

use std::path::Path;

fn load(text: &str) -> labforge::spec::Loaded {
    labforge::spec::load_bytes([(Path::new("hosts/site.toml"), text.as_bytes())])
}

fn base() -> String {
    std::fs::read_to_string(common::repo().join("tests/base-spec.toml")).unwrap()
}

#[test]
fn layers_apply_site_then_role_then_tags_then_host() {
    let text = base()
        + r#"
[site.defaults]
packages = ["htop"]
[roles.compute]
packages = ["qemu-kvm"]
virtualisation = { cpu_mode = "host-passthrough" }
[tags.fast]
packages = ["tmux"]
hardening = { max_auth_tries = 2 }
"#;
    let text = text.replace(
        "role = \"compute\"\ndisposable = true",
        "role = \"compute\"\ntags = [\"fast\"]\npackages = [\"git\"]\ndisposable = true",
    );
    let l = load(&text);
    assert!(
        !l.diagnostics.has_errors(),
        "{}",
        l.diagnostics.render(&l.sources)
    );
    let spec = l.spec.unwrap();
    let h = &spec.hosts["alpha"];
    assert_eq!(h.packages, ["htop", "qemu-kvm", "tmux", "git"]);
    assert_eq!(
        h.virtualisation.as_ref().unwrap().cpu_mode,
        "host-passthrough"
    );
    assert_eq!(h.hardening.max_auth_tries, 2);
    assert_eq!(
        spec.hosts["store1"].hardening.max_auth_tries, 3,
        "layers apply only to their hosts"
    );
    assert_eq!(spec.hosts["store1"].packages, ["htop"]);
}

#[test]
fn the_example_lab_uses_layers_for_the_pis_and_compute() {
    let l = labforge::spec::load_dir(&common::repo().join("hosts")).unwrap();
    let spec = l.spec.unwrap();
    let p = &spec.hosts["prometheus"];
    assert!(p.disposable, "role compute is disposable by default");
    for pkg in [
        "qemu-kvm",
        "libvirt-daemon-system",
        "nfs-common",
        "htop",
        "docker.io",
    ] {
        assert!(p.packages.iter().any(|x| x == pkg), "{pkg}");
    }
    assert_eq!(
        spec.hosts["iris"].arch,
        labforge::spec::model::Arch::Aarch64
    );
    assert_eq!(spec.hosts["hestia"].os, labforge::spec::model::Os::Nixos);
    assert_eq!(spec.hosts["hestia"].state_version.as_deref(), Some("25.05"));
    assert_eq!(spec.clusters["domum"].control_planes.len(), 3);
    assert_eq!(
        p.management_address(&spec).unwrap().to_string(),
        "10.99.0.10"
    );
}

#[test]
fn an_exception_turns_a_finding_into_a_warning_and_a_stale_one_is_reported() {
    let text = base().replace(
        "ports = [{ host = 8080, container = 80, network = \"servers\" }]",
        "ports = [{ host = 8080, container = 80, network = \"servers\" }, { host = 9113, network = \"servers\" }]",
    );
    let l = load(&text);
    assert!(l
        .diagnostics
        .errors
        .iter()
        .any(|d| d.rule == "S001-METRICS-INTERNAL"));
    let with_exc = text.replace(
        "persistent_paths = [\"/srv/data\"]\n",
        "persistent_paths = [\"/srv/data\"]\nexceptions = [{ rule = \"S001-METRICS-INTERNAL\", subject = \"stacks.web.services.app.metrics\", reason = \"scraped from the monitoring VLAN on purpose\" }, { rule = \"S000-SVC-BIND\", subject = \"stacks.web.services.app.ports[7]\", reason = \"left over from an old layout\" }]\n",
    );
    let l = load(&with_exc);
    assert!(
        !l.diagnostics.has_errors(),
        "{}",
        l.diagnostics.render(&l.sources)
    );
    assert!(l.diagnostics.warnings.iter().any(
        |d| d.rule == "S001-METRICS-INTERNAL" && d.message.contains("allowed by an exception")
    ));
    assert!(l
        .diagnostics
        .warnings
        .iter()
        .any(|d| d.rule == "SPEC022" && d.message.contains("matches no finding")));
}

#[test]
fn every_problem_is_reported_at_once_and_sorted() {
    let text = base()
        .replace("address = \"10.99.0.10\"", "address = \"10.98.0.10\"")
        .replace("permit_root_login = \"no\"", "permit_root_login = \"yes\"")
        .replace("from = \"store1\"", "from = \"store9\"");
    let l = load(&text);
    let rules: Vec<&str> = l.diagnostics.errors.iter().map(|d| d.rule).collect();
    for r in ["SPEC012", "S000-ROOT-LOGIN", "SPEC016"] {
        assert!(rules.contains(&r), "{r} missing from {rules:?}");
    }
    let lines: Vec<usize> = l
        .diagnostics
        .errors
        .iter()
        .map(|d| d.line.unwrap())
        .collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted, "errors are sorted by location");
}

#[test]
fn rule_ids_are_unique_and_documented() {
    let doc = std::fs::read_to_string(common::repo().join("docs/rules.md")).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for r in labforge::spec::rules::RULES {
        assert!(seen.insert(r.id), "duplicate rule id {}", r.id);
        assert!(
            doc.contains(&format!("`{}`", r.id)),
            "docs/rules.md does not document {}",
            r.id
        );
    }
}

#[test]
fn loader_survives_garbage_without_panicking() {
    for input in [
        &b"\xff\xfe"[..],
        b"[[[",
        b"site = 1",
        b"[hosts.a]\ninterfaces = 3",
        b"[site]\nname=1\n[site]",
        b"",
    ] {
        let l = labforge::spec::load_bytes([(Path::new("x.toml"), input)]);
        let _ = l.diagnostics.render(&l.sources);
        assert!(l.spec.is_none() || l.diagnostics.errors.is_empty());
    }
}

#[test]
fn regression_layer_errors_name_their_layer_not_a_bare_field() {
    let text = base() + "\n[roles.compute]\npackages = [\"bad package!\"]\n";
    let l = load(&text);
    let e = l
        .diagnostics
        .errors
        .iter()
        .find(|d| d.rule == "SPEC003")
        .expect("bad package reported");
    assert_eq!(e.path, "roles.compute.packages[0]");
    assert!(e.line.is_some());
}
