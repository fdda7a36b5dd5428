//! The compose backend, judged by the Compose v2 binary (`config -q`) and the compose-spec JSON schema for
//! every stack × host of the example lab, plus the seed rules: ports bound to a host address (never
//! 0.0.0.0), metrics never published, every image pinned by digest, `.env.example` names only.
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

fn ok(o: &std::process::Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        o.status,
        common::stdout(o),
        common::stderr(o)
    );
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

fn yaml(text: &str) -> serde_json::Value {
    serde_yaml_ng::from_str(text).unwrap_or_else(|e| panic!("not YAML: {e}\n{text}"))
}

/// The example lab with its committed (non-secret) renders, via `render` with a store.
fn rendered_lab() -> tempfile::TempDir {
    let t = common::example_lab();
    ok(
        &common::labforge(t.path(), &["secrets", "init"]),
        "secrets init",
    );
    ok(&common::labforge(t.path(), &["render"]), "render");
    t
}

/// Every stack directory the render produced (`stacks/<s>`, `services/<s>`).
fn stack_dirs(root: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for top in ["stacks", "services"] {
        let Ok(rd) = std::fs::read_dir(root.join(top)) else {
            continue;
        };
        for e in rd {
            let p = e.unwrap().path();
            if p.join("docker-compose.yml").is_file() {
                v.push(p);
            }
        }
    }
    v.sort();
    v
}

fn host_envs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("hosts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// Variable names in `.env.example` (asserting the file holds names only).
fn example_names(dir: &Path) -> Vec<String> {
    let text = read(&dir.join(".env.example"));
    let mut names = Vec::new();
    for l in text.lines() {
        let l = l.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let name = l
            .strip_suffix('=')
            .unwrap_or_else(|| panic!("{}: `{l}` carries a value", dir.display()));
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'),
            "`{l}` is not NAME="
        );
        names.push(name.to_string());
    }
    names
}

/// An env file with dummy values for every secret variable of the stack.
fn dummy_secrets(dir: &Path, out: &Path) -> PathBuf {
    let mut s = String::new();
    for n in example_names(dir) {
        if !n.starts_with("LABFORGE_BIND_") {
            s.push_str(&format!("{n}=dummy-{}\n", n.to_lowercase()));
        }
    }
    let p = out.join(format!(
        "secrets-{}.env",
        dir.file_name().unwrap().to_string_lossy()
    ));
    std::fs::write(&p, s).unwrap();
    p
}

fn compose(dir: &Path, env_files: &[&Path], args: &[&str]) -> std::process::Output {
    let mut c = Command::new(common::compose_bin());
    c.current_dir(dir);
    for e in env_files {
        c.arg("--env-file").arg(e);
    }
    c.args(["-f", "docker-compose.yml"]).args(args);
    c.output().expect("running compose")
}

fn variables_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        rest = &rest[i + 2..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        out.insert(rest[..end].to_string());
    }
    out
}

#[test]
fn every_stack_passes_compose_config_for_every_host() {
    let t = rendered_lab();
    let dirs = stack_dirs(t.path());
    let names: Vec<String> = dirs
        .iter()
        .map(|d| {
            d.strip_prefix(t.path())
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(
        names,
        [
            "services/ingress",
            "services/metrics",
            "services/portainer-agent",
            "stacks/dns",
            "stacks/gpu-worker",
            "stacks/monitoring",
            "stacks/platform",
            "stacks/portainer-agent"
        ]
    );
    for d in &dirs {
        let secrets = dummy_secrets(d, t.path());
        let envs = host_envs(d);
        assert!(!envs.is_empty(), "{}: no host env", d.display());
        for he in &envs {
            let o = compose(d, &[he, &secrets], &["config", "-q"]);
            ok(
                &o,
                &format!("config -q of {} with {}", d.display(), he.display()),
            );
            // The resolved model binds every published port to this host's address from its env file.
            let o = compose(d, &[he, &secrets], &["config", "--format", "json"]);
            ok(&o, "config --format json");
            let model: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            let env = read(he);
            let addrs: BTreeSet<&str> = env
                .lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| l.split_once('=').map(|(_, v)| v))
                .collect();
            for (sn, s) in model["services"].as_object().unwrap() {
                for p in s["ports"].as_array().into_iter().flatten() {
                    let ip = p["host_ip"].as_str().unwrap_or("");
                    assert!(
                        addrs.contains(ip) && ip != "0.0.0.0" && ip != "::" && !ip.is_empty(),
                        "{}/{sn}: port bound to `{ip}`",
                        d.display()
                    );
                }
            }
        }
    }
}

#[test]
fn config_fails_without_the_host_bind_address_or_a_secret() {
    let t = rendered_lab();
    let d = t.path().join("stacks/monitoring");
    let secrets = dummy_secrets(&d, t.path());
    let o = compose(&d, &[&secrets], &["config", "-q"]);
    assert!(
        !o.status.success(),
        "config -q passed without LABFORGE_BIND_SERVERS"
    );
    assert!(
        common::stderr(&o).contains("LABFORGE_BIND_SERVERS"),
        "{}",
        common::stderr(&o)
    );
    let he = d.join("hosts/platform.env");
    let o = compose(&d, &[&he], &["config", "-q"]);
    assert!(!o.status.success(), "config -q passed without the secret");
    assert!(common::stderr(&o).contains("GRAFANA_ADMIN_PASSWORD"));
}

#[test]
fn every_compose_file_validates_against_compose_spec() {
    let t = rendered_lab();
    let v = common::validator("compose-go-compose-spec.json");
    for d in stack_dirs(t.path()) {
        let doc = yaml(&read(&d.join("docker-compose.yml")));
        let errs = common::schema_errors(&v, &doc);
        assert!(errs.is_empty(), "{}: {errs:#?}", d.display());
    }
}

#[test]
fn broken_stacks_fail_compose_and_the_schema() {
    let t = rendered_lab();
    let d = t.path().join("stacks/monitoring");
    let secrets = dummy_secrets(&d, t.path());
    let he = d.join("hosts/platform.env");
    let good = read(&d.join("docker-compose.yml"));
    // Undefined network: the services still join `monitoring`, the top level no longer declares it.
    let undefined = good.replace(
        "networks:\n  monitoring:\n    name: monitoring_monitoring\n",
        "",
    );
    assert_ne!(undefined, good);
    std::fs::write(d.join("docker-compose.yml"), &undefined).unwrap();
    let o = compose(&d, &[&he, &secrets], &["config", "-q"]);
    assert!(!o.status.success(), "compose accepted an undefined network");
    assert!(
        common::stderr(&o).contains("undefined network"),
        "{}",
        common::stderr(&o)
    );
    // The same undefined network, declared with a name the spec forbids, and a malformed port: schema errors.
    let v = common::validator("compose-go-compose-spec.json");
    let mut doc = yaml(&good);
    doc["networks"] = serde_json::json!({"monitoring": {"name": "x", "unknown_key": true}});
    assert!(
        !common::schema_errors(&v, &doc).is_empty(),
        "unknown network key accepted"
    );
    let mut doc = yaml(&good);
    doc["services"]["grafana"]["ports"][0]["published"] = serde_json::json!(["3000"]);
    assert!(
        !common::schema_errors(&v, &doc).is_empty(),
        "malformed port accepted"
    );
    let mut doc = yaml(&good);
    doc["services"]["grafana"]["networks"] = serde_json::json!("monitoring");
    assert!(
        !common::schema_errors(&v, &doc).is_empty(),
        "networks as a string accepted"
    );
    std::fs::write(d.join("docker-compose.yml"), &good).unwrap();
    ok(
        &compose(&d, &[&he, &secrets], &["config", "-q"]),
        "restored file",
    );
}

/// Load the example lab's model through the library (no secrets involved).
fn spec() -> labforge::spec::Spec {
    let l = labforge::spec::load_dir(&common::repo().join("hosts")).unwrap();
    l.spec.expect("the example lab is valid")
}

#[test]
fn no_metrics_port_is_published_and_images_are_pinned() {
    let t = rendered_lab();
    let spec = spec();
    for d in stack_dirs(t.path()) {
        let stack = d.file_name().unwrap().to_string_lossy().into_owned();
        let st = &spec.stacks[&stack];
        let doc = yaml(&read(&d.join("docker-compose.yml")));
        for (sn, s) in doc["services"].as_object().unwrap() {
            let image = s["image"].as_str().unwrap();
            let digest = image.rsplit_once("@sha256:").map(|(_, d)| d).unwrap_or("");
            assert!(
                digest.len() == 64 && digest.chars().all(|c| c.is_ascii_hexdigit()),
                "{stack}/{sn}: `{image}` not pinned by digest"
            );
            let metrics = st.services[sn].metrics.as_ref().map(|m| m.port);
            for p in s["ports"].as_array().into_iter().flatten() {
                let target = p["target"].as_u64().unwrap() as u16;
                let published: u16 = p["published"].as_str().unwrap().parse().unwrap();
                assert!(
                    Some(target) != metrics && Some(published) != metrics,
                    "{stack}/{sn}: metrics port published"
                );
                let ip = p["host_ip"].as_str().unwrap();
                assert!(
                    ip.starts_with("${LABFORGE_BIND_") && ip.contains(":?"),
                    "{stack}/{sn}: host_ip `{ip}`"
                );
            }
            if let Some(m) = metrics {
                let expose: Vec<&str> = s["expose"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_str().unwrap())
                    .collect();
                assert!(expose.contains(&m.to_string().as_str()), "{stack}/{sn}");
            }
            // Secrets only by reference.
            for (k, v) in s["environment"].as_object().into_iter().flatten() {
                if let Some(labforge::spec::model::EnvValue::Secret(n)) =
                    st.services[sn].environment.get(k)
                {
                    assert!(v
                        .as_str()
                        .unwrap()
                        .starts_with(&format!("${{{}:?", n.to_uppercase())));
                }
            }
            if st.services[sn].docker_socket {
                let vols = serde_json::to_string(&s["volumes"]).unwrap();
                assert!(vols.contains("/var/run/docker.sock:/var/run/docker.sock:ro"));
            }
            if st.services[sn].gpu {
                assert_eq!(
                    s["deploy"]["resources"]["reservations"]["devices"][0]["driver"],
                    "nvidia"
                );
            }
        }
        // Host env files: every value an address of that host on the spec network, never a wildcard.
        for he in host_envs(&d) {
            let host = he.file_stem().unwrap().to_string_lossy().into_owned();
            for l in read(&he)
                .lines()
                .filter(|l| !l.starts_with('#') && !l.is_empty())
            {
                let (k, v) = l.split_once('=').unwrap();
                let ip: std::net::IpAddr = v.parse().unwrap();
                assert!(!ip.is_unspecified(), "{}: {l}", he.display());
                let net = k.strip_prefix("LABFORGE_BIND_").unwrap().to_lowercase();
                assert_eq!(
                    spec.hosts[&host].address_on(&net),
                    Some(ip),
                    "{}",
                    he.display()
                );
            }
        }
        // Every variable the compose file reads is listed in .env.example, and nothing else.
        let names: BTreeSet<String> = example_names(&d).into_iter().collect();
        assert_eq!(
            names,
            variables_in(&read(&d.join("docker-compose.yml"))),
            "{}",
            d.display()
        );
    }
}

#[test]
fn seed_001_traefik_metrics_entrypoint_and_prometheus_targets() {
    let t = rendered_lab();
    let traefik = yaml(&read(
        &t.path().join("services/ingress/config/traefik/traefik.yml"),
    ));
    assert_eq!(traefik["metrics"]["prometheus"]["entryPoint"], "metrics");
    assert_eq!(traefik["entryPoints"]["metrics"]["address"], ":8082");
    let dynamic = yaml(&read(
        &t.path().join("services/ingress/config/traefik/dynamic.yml"),
    ));
    for (name, r) in dynamic["http"]["routers"].as_object().unwrap() {
        let eps: Vec<&str> = r["entryPoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap())
            .collect();
        assert!(
            !eps.contains(&"metrics"),
            "router {name} on the metrics entrypoint"
        );
    }
    let ingress = yaml(&read(&t.path().join("services/ingress/docker-compose.yml")));
    let ports = serde_json::to_string(&ingress["services"]["traefik"]["ports"]).unwrap();
    assert!(!ports.contains("8082"), "{ports}");
    let targets = |p: &str| -> BTreeMap<String, String> {
        let doc = yaml(&read(&t.path().join(p)));
        doc["scrape_configs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| {
                (
                    j["job_name"].as_str().unwrap().to_string(),
                    j["static_configs"][0]["targets"][0]
                        .as_str()
                        .unwrap()
                        .to_string(),
                )
            })
            .collect()
    };
    let m = targets("services/metrics/config/prometheus/prometheus.yml");
    assert_eq!(m["traefik"], "traefik:8082");
    let mon = targets("stacks/monitoring/config/prometheus/prometheus.yml");
    assert_eq!(mon["node-exporter"], "node-exporter:9100");
    assert_eq!(mon["cadvisor"], "cadvisor:8080");
    assert_eq!(mon["prometheus"], "prometheus:9090");
    assert!(
        !mon.contains_key("traefik"),
        "traefik shares no network with the monitoring stack"
    );
    // Prometheus and Traefik share the ingress stack's proxy network (external in the metrics stack).
    let metrics = yaml(&read(&t.path().join("services/metrics/docker-compose.yml")));
    assert_eq!(metrics["networks"]["proxy"]["external"], true);
    assert_eq!(metrics["networks"]["proxy"]["name"], "ingress_proxy");
    assert_eq!(ingress["networks"]["proxy"]["name"], "ingress_proxy");
    let mounts = serde_json::to_string(&metrics["services"]["prometheus"]["volumes"]).unwrap();
    assert!(mounts.contains("./config/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro"));
}

#[test]
fn a_port_on_a_network_the_host_lacks_is_rejected_clearly() {
    let t = common::example_lab();
    ok(
        &common::labforge(t.path(), &["secrets", "init"]),
        "secrets init",
    );
    // Forge publishes Open WebUI on `servers`; take forge off that network.
    let f = t.path().join("hosts/forge.toml");
    let text = read(&f).replace(
        "[hosts.forge.interfaces.enp5s0]\nmac = \"04:7c:16:60:00:40\"\nnetwork = \"servers\"\naddress = \"10.60.0.40\"\n",
        "[hosts.forge.interfaces.enp5s0]\nmac = \"04:7c:16:60:00:40\"\nnetwork = \"user\"\naddress = \"10.20.0.40\"\n",
    );
    std::fs::write(&f, text).unwrap();
    let o = common::labforge(t.path(), &["render"]);
    assert!(!o.status.success());
    let err = common::stderr(&o);
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("forge") && err.contains("servers"), "{err}");
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn golden_stack(name: &str, stack: &str) {
    let gdir = common::repo().join("tests/golden").join(name);
    let t = tempfile::tempdir().unwrap();
    common::copy_dir(&gdir.join("in"), t.path());
    ok(
        &common::labforge(t.path(), &["secrets", "init"]),
        "secrets init",
    );
    ok(&common::labforge(t.path(), &["render"]), "render");
    let src = t.path().join("stacks").join(stack);
    let mut files = Vec::new();
    walk(&src, &mut files);
    let got: BTreeMap<String, String> = files
        .iter()
        .map(|p| {
            (
                format!(
                    "stacks/{stack}/{}",
                    p.strip_prefix(&src).unwrap().to_string_lossy()
                ),
                read(p),
            )
        })
        .collect();
    let out = gdir.join("out");
    if std::env::var_os("LABFORGE_BLESS").is_some() {
        let _ = std::fs::remove_dir_all(&out);
        for (rel, text) in &got {
            let p = out.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        return;
    }
    assert!(
        out.is_dir(),
        "{} missing: run with LABFORGE_BLESS=1",
        out.display()
    );
    let mut want_files = Vec::new();
    walk(&out, &mut want_files);
    let want: BTreeMap<String, String> = want_files
        .iter()
        .map(|p| {
            (
                p.strip_prefix(&out).unwrap().to_string_lossy().into_owned(),
                read(p),
            )
        })
        .collect();
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>(),
        "golden file set differs (LABFORGE_BLESS=1 to accept)"
    );
    for (rel, text) in &got {
        assert_eq!(
            &want[rel], text,
            "{rel} differs (LABFORGE_BLESS=1 to accept)"
        );
    }
}

#[test]
fn golden_monitoring_stack() {
    golden_stack("stack-monitoring", "monitoring");
}

#[test]
fn golden_platform_stack() {
    golden_stack("stack-platform", "platform");
}

/// Pi-hole v6 on a Docker bridge answers only the container's own subnet unless
/// `FTLCONF_dns_listeningMode` is `ALL` (docs.pi-hole.net, Docker page: "If using Docker's default `bridge`
/// network setting the dns listening mode should be set to 'ALL'"). Read back through the Compose binary.
#[test]
fn pihole_answers_the_lan_not_only_its_bridge_subnet() {
    let t = rendered_lab();
    let d = t.path().join("stacks/dns");
    let secrets = dummy_secrets(&d, t.path());
    let he = host_envs(&d).into_iter().next().expect("iris's env");
    let o = compose(&d, &[&he, &secrets], &["config", "--format", "json"]);
    ok(&o, "config --format json");
    let model: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        model["services"]["pihole"]["environment"]["FTLCONF_dns_listeningMode"],
        "ALL"
    );
    // Without it, check refuses the spec (SPEC032) with the fix.
    let lab = common::example_lab();
    let p = lab.path().join("hosts/stacks/dns.toml");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace(", FTLCONF_dns_listeningMode = \"ALL\"", "");
    std::fs::write(&p, text).unwrap();
    let o = common::labforge(lab.path(), &["check", "--json"]);
    assert_eq!(o.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let errs = v["errors"].as_array().unwrap();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0]["rule"], "SPEC032");
    assert!(errs[0]["help"].as_str().unwrap().contains("\"ALL\""));
}
