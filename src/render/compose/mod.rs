//! The compose backend: one Docker Compose project per stack.
//!
//! Layout (for each stack, per kind of host that runs it):
//! * `stacks/<stack>/` for hosts configured by cloud-init, `services/<stack>/` for NixOS hosts (seed 001's
//!   standard service template; the NixOS backend writes `service.nix` beside these files).
//! * `docker-compose.yml`: images pinned by digest, ports bound to `${LABFORGE_BIND_<NETWORK>}` (the host's
//!   address on that spec network, never 0.0.0.0), metrics ports only in `expose:`, secrets as `${VAR}`.
//! * `.env.example`: every variable the stack reads, names only, with where each value comes from.
//! * `hosts/<host>.env`: the non-secret bind addresses of one host (`--env-file` at deploy).
//! * `config/<service>/…`: config files services need (Traefik static + dynamic config, `prometheus.yml`).
//!
//! Deploy runs `docker compose --env-file hosts/<host>.env --env-file .env up -d` in the uploaded directory,
//! where `.env` (0600) is built from the secrets store; paths inside the stack directory are kept.

use crate::render::{Artifact, Backend, Kind, RenderCtx};
use crate::spec::model::*;
use anyhow::{bail, Result};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

pub struct Compose;

pub const NAME: &str = "compose";

/// Where a stack's files live for one group of hosts.
#[derive(Debug, Clone)]
pub struct StackDir {
    pub stack: String,
    /// `stacks/<stack>` or `services/<stack>`.
    pub dir: String,
    pub hosts: Vec<String>,
}

/// The directories a stack is rendered into: one for NixOS hosts, one for every other host.
pub fn stack_dirs(spec: &Spec, stack: &Stack) -> Vec<StackDir> {
    let mut nixos = Vec::new();
    let mut other = Vec::new();
    for h in &stack.hosts {
        match spec.hosts.get(h).map(|h| h.os) {
            Some(Os::Nixos) => nixos.push(h.clone()),
            Some(Os::Talos) | None => {}
            Some(_) => other.push(h.clone()),
        }
    }
    let mut out = Vec::new();
    if !other.is_empty() {
        out.push(StackDir {
            stack: stack.name.clone(),
            dir: format!("stacks/{}", stack.name),
            hosts: other,
        });
    }
    if !nixos.is_empty() {
        out.push(StackDir {
            stack: stack.name.clone(),
            dir: format!("services/{}", stack.name),
            hosts: nixos,
        });
    }
    out
}

/// The environment variable a published port on spec network `net` binds to.
pub fn bind_var(net: &str) -> String {
    format!("LABFORGE_BIND_{}", env_name(net))
}

/// The `.env` variable that carries secret `name` (upper case, non-alphanumerics as `_`).
pub fn secret_var(name: &str) -> String {
    env_name(name)
}

fn env_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// The spec networks the stack's ports bind on (sorted).
pub fn bind_networks(stack: &Stack) -> BTreeSet<String> {
    stack
        .services
        .values()
        .flat_map(|s| s.ports.iter().map(|p| p.network.clone()))
        .collect()
}

/// The secrets the stack reads (sorted by name).
pub fn stack_secrets(stack: &Stack) -> BTreeSet<String> {
    stack
        .services
        .values()
        .flat_map(|s| s.environment.values())
        .filter_map(|v| match v {
            EnvValue::Secret(n) => Some(n.clone()),
            EnvValue::Literal(_) => None,
        })
        .collect()
}

/// What kind of bundled config a service gets, from its image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    Traefik,
    Prometheus,
    Other,
}

fn flavor(svc: &Service) -> Flavor {
    let last = svc.image.repository.rsplit('/').next().unwrap_or("");
    match last {
        "traefik" => Flavor::Traefik,
        "prometheus" => Flavor::Prometheus,
        _ => Flavor::Other,
    }
}

/// Config files of a service: (path relative to the stack dir, target in the container).
fn config_files(svc: &Service) -> Vec<(String, &'static str)> {
    match flavor(svc) {
        Flavor::Traefik => vec![
            (
                format!("config/{}/traefik.yml", svc.name),
                "/etc/traefik/traefik.yml",
            ),
            (
                format!("config/{}/dynamic.yml", svc.name),
                "/etc/traefik/dynamic.yml",
            ),
        ],
        Flavor::Prometheus => vec![(
            format!("config/{}/prometheus.yml", svc.name),
            "/etc/prometheus/prometheus.yml",
        )],
        Flavor::Other => Vec::new(),
    }
}

/// Every committed file of a stack directory, relative to the directory, with its kind and hosts.
pub fn dir_files(stack: &Stack, sd: &StackDir) -> Vec<(String, Kind, Vec<String>)> {
    let mut v = vec![
        (
            "docker-compose.yml".to_string(),
            Kind::ComposeFile,
            sd.hosts.clone(),
        ),
        (
            ".env.example".to_string(),
            Kind::EnvExample,
            sd.hosts.clone(),
        ),
    ];
    for svc in stack.services.values() {
        for (p, _) in config_files(svc) {
            v.push((p, Kind::ConfigFile, sd.hosts.clone()));
        }
    }
    for h in &sd.hosts {
        v.push((format!("hosts/{h}.env"), Kind::ConfigFile, vec![h.clone()]));
    }
    v
}

impl Backend for Compose {
    fn name(&self) -> &'static str {
        NAME
    }
    fn plan(&self, spec: &Spec) -> Vec<Artifact> {
        let mut out = Vec::new();
        for st in spec.stacks.values() {
            for sd in stack_dirs(spec, st) {
                for (rel, kind, hosts) in dir_files(st, &sd) {
                    out.push(
                        Artifact::new(format!("{}/{rel}", sd.dir), kind, NAME, hosts)
                            .stack(&st.name),
                    );
                }
            }
        }
        out
    }
    fn render(&self, ctx: &RenderCtx, artifacts: &[&Artifact]) -> Result<Vec<(String, Vec<u8>)>> {
        let spec = ctx.spec;
        let want: BTreeSet<&str> = artifacts.iter().map(|a| a.path.as_str()).collect();
        let mut out = Vec::new();
        for st in spec.stacks.values() {
            for sd in stack_dirs(spec, st) {
                let files = dir_files(st, &sd);
                if !files
                    .iter()
                    .any(|(rel, _, _)| want.contains(format!("{}/{rel}", sd.dir).as_str()))
                {
                    continue;
                }
                for (rel, bytes) in render_dir(spec, st, &sd)? {
                    let p = format!("{}/{rel}", sd.dir);
                    if want.contains(p.as_str()) {
                        out.push((p, bytes));
                    }
                }
            }
        }
        Ok(out)
    }
    fn owned_dirs(&self) -> Vec<&'static str> {
        vec!["stacks"]
    }
}

/// Render every file of one stack directory: (path relative to the directory, bytes).
pub fn render_dir(spec: &Spec, st: &Stack, sd: &StackDir) -> Result<Vec<(String, Vec<u8>)>> {
    render_dir_for(spec, st, sd, None)
}

/// [`render_dir`], with the per-host env files limited to `only_host` when given (a host's own seed needs
/// only its own: rendering every host's would make seeding N hosts quadratic).
pub fn render_dir_for(
    spec: &Spec,
    st: &Stack,
    sd: &StackDir,
    only_host: Option<&str>,
) -> Result<Vec<(String, Vec<u8>)>> {
    let sources = stack_sources(spec, &st.name);
    let mut out = Vec::new();
    out.push((
        "docker-compose.yml".to_string(),
        compose_file(spec, st, &sources)?.into_bytes(),
    ));
    out.push((
        ".env.example".to_string(),
        env_example(spec, st, sd, &sources)?.into_bytes(),
    ));
    for svc in st.services.values() {
        match flavor(svc) {
            Flavor::Traefik => {
                out.push((
                    format!("config/{}/traefik.yml", svc.name),
                    traefik_static(svc, &sources)?.into_bytes(),
                ));
                out.push((
                    format!("config/{}/dynamic.yml", svc.name),
                    traefik_dynamic(spec, st, svc, &sources)?.into_bytes(),
                ));
            }
            Flavor::Prometheus => out.push((
                format!("config/{}/prometheus.yml", svc.name),
                prometheus_config(spec, st, svc, &sources)?.into_bytes(),
            )),
            Flavor::Other => {}
        }
    }
    for h in sd
        .hosts
        .iter()
        .filter(|h| only_host.is_none_or(|o| o == h.as_str()))
    {
        out.push((
            format!("hosts/{h}.env"),
            host_env(spec, st, h, &sources)?.into_bytes(),
        ));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------------------
// Spec file names for headers

fn stack_sources(spec: &Spec, stack: &str) -> Vec<String> {
    let files = spec.stacks.get(stack).and_then(|s| s.loc).map(|l| l.file);
    spec.sources.spec_names(files)
}

/// The spec files a host's configuration comes from (its own file and the site file).
pub fn host_sources(spec: &Spec, host: &str) -> Vec<String> {
    let files = [spec.site.loc, spec.hosts.get(host).and_then(|h| h.loc)];
    spec.sources
        .spec_names(files.into_iter().flatten().map(|l| l.file))
}

/// The header comment of a generated file (`#` comments).
pub fn header(sources: &[String], extra: &str) -> String {
    let mut s = format!(
        "# Generated by labforge from {} - do not edit; change the spec and run `labforge render`.\n",
        sources.join(", ")
    );
    for l in extra.lines() {
        s.push_str("# ");
        s.push_str(l);
        s.push('\n');
    }
    s
}

fn yaml<T: Serialize>(v: &T) -> Result<String> {
    Ok(serde_yaml_ng::to_string(v)?)
}

/// Escape `$` for Compose interpolation in a literal value.
fn literal(s: &str) -> String {
    s.replace('$', "$$")
}

// ---------------------------------------------------------------------------------------------------------
// docker-compose.yml

#[derive(Serialize)]
struct ComposeDoc {
    name: String,
    services: BTreeMap<String, ComposeService>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    networks: BTreeMap<String, ComposeNetwork>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    volumes: BTreeMap<String, ComposeVolume>,
}

#[derive(Serialize)]
struct ComposeService {
    image: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    command: Vec<String>,
    restart: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    depends_on: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    environment: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ports: Vec<ComposePort>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    expose: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    networks: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    volumes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deploy: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct ComposePort {
    target: u16,
    published: String,
    host_ip: String,
    protocol: &'static str,
}

#[derive(Serialize)]
struct ComposeNetwork {
    name: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    external: bool,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    internal: bool,
}

#[derive(Serialize)]
struct ComposeVolume {}

fn compose_file(spec: &Spec, st: &Stack, sources: &[String]) -> Result<String> {
    let mut services = BTreeMap::new();
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    for s in stack_secrets(st) {
        let var = secret_var(&s);
        if let Some(other) = vars.insert(var.clone(), s.clone()) {
            bail!(
                "stack `{}`: secrets `{other}` and `{s}` would both be the variable {var}; rename one of them",
                st.name
            );
        }
        if !spec.secrets.contains_key(&s) {
            bail!(
                "stack `{}` reads secret `{s}`, which is not declared: add [secrets.{s}] to the spec",
                st.name
            );
        }
    }
    for svc in st.services.values() {
        if svc.image.digest.is_none() {
            bail!(
                "stacks.{}.services.{}.image `{}` is not pinned by digest: append @sha256:<digest>",
                st.name,
                svc.name,
                svc.image
            );
        }
        let environment = svc
            .environment
            .iter()
            .map(|(k, v)| {
                let val = match v {
                    EnvValue::Literal(s) => literal(s),
                    EnvValue::Secret(n) => format!(
                        "${{{}:?secret {n}: labforge deploy writes it to .env}}",
                        secret_var(n)
                    ),
                };
                (k.clone(), val)
            })
            .collect();
        let mut ports = Vec::new();
        for p in &svc.ports {
            if svc.metrics.as_ref().is_some_and(|m| m.port == p.container) {
                bail!(
                    "stacks.{}.services.{}: metrics port {} is published; metrics stay on the Docker network (seed 001 §5.1)",
                    st.name,
                    svc.name,
                    p.container
                );
            }
            ports.push(ComposePort {
                target: p.container,
                published: p.host.to_string(),
                host_ip: format!("${{{}:?set by labforge deploy}}", bind_var(&p.network)),
                protocol: p.protocol.as_str(),
            });
        }
        let mut expose: BTreeSet<u16> = svc.expose.iter().copied().collect();
        if let Some(m) = &svc.metrics {
            expose.insert(m.port);
        }
        let mut volumes: Vec<String> = svc
            .volumes
            .iter()
            .map(|v| match v {
                VolumeMount::Named {
                    name,
                    target,
                    read_only,
                } => format!("{name}:{target}{}", if *read_only { ":ro" } else { "" }),
                VolumeMount::Bind {
                    source,
                    target,
                    read_only,
                } => format!(
                    "{}:{target}{}",
                    literal(source),
                    if *read_only { ":ro" } else { "" }
                ),
            })
            .collect();
        for (rel, target) in config_files(svc) {
            volumes.push(format!("./{rel}:{target}:ro"));
        }
        if svc.docker_socket {
            volumes.push("/var/run/docker.sock:/var/run/docker.sock:ro".into());
        }
        let deploy = svc.gpu.then(|| {
            serde_json::json!({"resources": {"reservations": {"devices": [
                {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}
            ]}}})
        });
        services.insert(
            svc.name.clone(),
            ComposeService {
                image: svc.image.to_string(),
                command: svc.command.iter().map(|c| literal(c)).collect(),
                restart: svc.restart.clone(),
                user: svc.user.clone(),
                depends_on: svc.depends_on.clone(),
                environment,
                ports,
                expose: expose.iter().map(|p| p.to_string()).collect(),
                networks: svc.networks.clone(),
                volumes,
                deploy,
            },
        );
    }
    let networks = st
        .networks
        .iter()
        .map(|(n, dn)| {
            (
                n.clone(),
                ComposeNetwork {
                    name: dn.docker_name(&st.name, n),
                    external: dn.external.is_some(),
                    internal: dn.internal,
                },
            )
        })
        .collect();
    let volumes = st
        .volumes
        .iter()
        .map(|v| (v.clone(), ComposeVolume {}))
        .collect();
    let doc = ComposeDoc {
        name: st.name.clone(),
        services,
        networks,
        volumes,
    };
    let extra = format!(
        "Stack `{}`{}.\nRun with: docker compose --env-file hosts/<host>.env --env-file .env up -d\n(hosts/<host>.env: this host's bind addresses; .env: secrets, written 0600 by labforge deploy).",
        st.name,
        st.description
            .as_ref()
            .map(|d| format!(": {d}"))
            .unwrap_or_default()
    );
    Ok(format!("{}{}", header(sources, &extra), yaml(&doc)?))
}

// ---------------------------------------------------------------------------------------------------------
// .env.example and hosts/<host>.env

fn env_example(spec: &Spec, st: &Stack, sd: &StackDir, sources: &[String]) -> Result<String> {
    let mut s = header(
        sources,
        &format!(
            "Every variable stack `{}` reads, names only - never put values in this file.\nlabforge deploy uploads hosts/<host>.env and writes .env (mode 0600) from the secrets store.",
            st.name
        ),
    );
    for net in bind_networks(st) {
        s.push_str(&format!(
            "\n# Address of the host on spec network `{net}` that published ports bind to (never 0.0.0.0);\n# set per host in hosts/<host>.env ({} host file(s) here).\n{}=\n",
            sd.hosts.len(),
            bind_var(&net)
        ));
    }
    for name in stack_secrets(st) {
        let Some(sr) = spec.secrets.get(&name) else {
            bail!(
                "stack `{}` reads secret `{name}`, which is not declared: add [secrets.{name}] to the spec",
                st.name
            );
        };
        let from = match &sr.source {
            SecretSource::Store => format!("the labforge secrets store (secrets/{name}.age)"),
            SecretSource::Env(v) => format!("the operator's environment variable {v} at deploy"),
            SecretSource::File(p) => format!("the file {p} on the operator's machine at deploy"),
        };
        s.push_str(&format!(
            "\n# Secret `{name}`{}; value from {from}.\n{}=\n",
            sr.description
                .as_ref()
                .map(|d| format!(" ({})", d.replace('\n', " ")))
                .unwrap_or_default(),
            secret_var(&name)
        ));
    }
    Ok(s)
}

fn host_env(spec: &Spec, st: &Stack, host: &str, sources: &[String]) -> Result<String> {
    let h = spec
        .hosts
        .get(host)
        .ok_or_else(|| anyhow::anyhow!("internal error: stack host `{host}` is not in the spec"))?;
    let mut s = header(
        sources,
        &format!(
            "Bind addresses of host `{host}` for stack `{}` (not secret). Used as --env-file at deploy.",
            st.name
        ),
    );
    for net in bind_networks(st) {
        let Some(addr) = h.address_on(&net) else {
            let ports: Vec<String> = st
                .services
                .values()
                .flat_map(|svc| {
                    svc.ports
                        .iter()
                        .filter(|p| p.network == net)
                        .map(move |p| format!("{}:{}", svc.name, p.host))
                })
                .collect();
            bail!(
                "stack `{}` publishes {} on network `{net}`, but host `{host}` has no static address on `{net}`: \
                 give hosts.{host} an interface with an address on `{net}`, or remove the stack from the host \
                 (ports bind to the host's address on their network, never 0.0.0.0)",
                st.name,
                ports.join(", ")
            );
        };
        s.push_str(&format!("{}={addr}\n", bind_var(&net)));
    }
    Ok(s)
}

// ---------------------------------------------------------------------------------------------------------
// Traefik

fn entrypoint_name(port: u16) -> String {
    match port {
        80 => "web".into(),
        443 => "websecure".into(),
        p => format!("port{p}"),
    }
}

fn traefik_static(svc: &Service, sources: &[String]) -> Result<String> {
    let mut eps = serde_json::Map::new();
    let has_443 = svc.ports.iter().any(|p| p.container == 443);
    for p in &svc.ports {
        let mut ep = serde_json::json!({
            "address": format!(":{}{}", p.container, if p.protocol == Proto::Udp { "/udp" } else { "" })
        });
        if p.container == 80 && has_443 {
            ep["http"] = serde_json::json!({"redirections": {"entryPoint": {"to": "websecure", "scheme": "https"}}});
        }
        if p.container == 443 {
            ep["http"] = serde_json::json!({"tls": {}});
        }
        eps.insert(entrypoint_name(p.container), ep);
    }
    let mut doc = serde_json::json!({
        "global": {"checkNewVersion": false, "sendAnonymousUsage": false},
        "log": {"level": "INFO"},
        "api": {"dashboard": false, "insecure": false},
        "providers": {"file": {"filename": "/etc/traefik/dynamic.yml", "watch": true}},
    });
    if let Some(m) = &svc.metrics {
        eps.insert(
            "metrics".into(),
            serde_json::json!({"address": format!(":{}", m.port)}),
        );
        doc["metrics"] = serde_json::json!({"prometheus": {
            "entryPoint": "metrics",
            "addEntryPointsLabels": true,
            "addRoutersLabels": true,
            "addServicesLabels": true,
        }});
    }
    doc["entryPoints"] = serde_json::Value::Object(eps);
    let extra = format!(
        "Traefik static configuration for service `{}`.{}",
        svc.name,
        if svc.metrics.is_some() {
            "\nThe `metrics` entrypoint is internal (exposed on the Docker network only, never published) and no router uses it."
        } else {
            ""
        }
    );
    Ok(format!("{}{}", header(sources, &extra), yaml(&doc)?))
}

/// Services of the stack Traefik routes to: they share a Docker network with it, publish no ports of their
/// own and expose one.
fn routed_services<'a>(st: &'a Stack, traefik: &Service) -> Vec<(&'a Service, u16)> {
    st.services
        .values()
        .filter(|s| s.name != traefik.name && s.ports.is_empty())
        .filter(|s| s.networks.iter().any(|n| traefik.networks.contains(n)))
        .filter_map(|s| {
            let metrics = s.metrics.as_ref().map(|m| m.port);
            s.expose
                .iter()
                .copied()
                .find(|p| Some(*p) != metrics)
                .map(|p| (s, p))
        })
        .collect()
}

fn traefik_dynamic(
    spec: &Spec,
    st: &Stack,
    traefik: &Service,
    sources: &[String],
) -> Result<String> {
    let secure = traefik.ports.iter().any(|p| p.container == 443);
    let public_eps: Vec<String> = if secure {
        vec!["websecure".into()]
    } else {
        traefik
            .ports
            .iter()
            .filter(|p| p.protocol == Proto::Tcp)
            .map(|p| entrypoint_name(p.container))
            .collect()
    };
    let mut routers = serde_json::Map::new();
    let mut services = serde_json::Map::new();
    for (s, port) in routed_services(st, traefik) {
        let mut r = serde_json::json!({
            "rule": format!("Host(`{}.{}`)", s.name, spec.site.domain),
            "entryPoints": public_eps,
            "service": s.name,
        });
        if secure {
            r["tls"] = serde_json::json!({});
        }
        routers.insert(s.name.clone(), r);
        services.insert(
            s.name.clone(),
            serde_json::json!({"loadBalancer": {"servers": [{"url": format!("http://{}:{port}", s.name)}]}}),
        );
    }
    let doc = if routers.is_empty() {
        serde_json::json!({})
    } else {
        serde_json::json!({"http": {"routers": routers, "services": services}})
    };
    let extra = format!(
        "Traefik dynamic configuration: one router per service of stack `{}` behind `{}` (Host `<service>.{}`).",
        st.name, traefik.name, spec.site.domain
    );
    Ok(format!("{}{}", header(sources, &extra), yaml(&doc)?))
}

// ---------------------------------------------------------------------------------------------------------
// Prometheus

/// Scrape targets of a Prometheus service: every service in the spec that declares `metrics`, shares a
/// Docker network with it (by Docker-level name) and runs on a host the scraper runs on.
/// Returns (job name, target `service:port`, metrics path), sorted by job.
pub fn scrape_targets(spec: &Spec, st: &Stack, scraper: &Service) -> Vec<(String, String, String)> {
    let my_nets: BTreeSet<String> = scraper
        .networks
        .iter()
        .filter_map(|n| st.networks.get(n).map(|dn| dn.docker_name(&st.name, n)))
        .collect();
    let mut found: Vec<(String, String, String, String)> = Vec::new();
    for other in spec.stacks.values() {
        if !other.hosts.iter().any(|h| st.hosts.contains(h)) {
            continue;
        }
        for svc in other.services.values() {
            let Some(m) = &svc.metrics else { continue };
            let shares = svc.networks.iter().any(|n| {
                other
                    .networks
                    .get(n)
                    .is_some_and(|dn| my_nets.contains(&dn.docker_name(&other.name, n)))
            });
            if shares {
                found.push((
                    other.name.clone(),
                    svc.name.clone(),
                    format!("{}:{}", svc.name, m.port),
                    m.path.clone(),
                ));
            }
        }
    }
    let mut out: Vec<(String, String, String)> = Vec::new();
    for (stack, name, target, path) in &found {
        let dup = found.iter().filter(|f| &f.1 == name).count() > 1;
        let job = if dup {
            format!("{stack}-{name}")
        } else {
            name.clone()
        };
        out.push((job, target.clone(), path.clone()));
    }
    out.sort();
    out.dedup();
    out
}

fn prometheus_config(spec: &Spec, st: &Stack, svc: &Service, sources: &[String]) -> Result<String> {
    let jobs: Vec<serde_json::Value> = scrape_targets(spec, st, svc)
        .into_iter()
        .map(|(job, target, path)| {
            serde_json::json!({
                "job_name": job,
                "metrics_path": path,
                "static_configs": [{"targets": [target]}],
            })
        })
        .collect();
    let doc = serde_json::json!({
        "global": {"scrape_interval": "30s", "evaluation_interval": "30s"},
        "scrape_configs": jobs,
    });
    let extra = format!(
        "Prometheus configuration for `{}` of stack `{}`: scrapes every service that declares `metrics` and\nshares a Docker network with it, by service name (no secrets, no published ports).",
        svc.name, st.name
    );
    Ok(format!("{}{}", header(sources, &extra), yaml(&doc)?))
}
