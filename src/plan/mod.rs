//! The plan: a pure function from the validated model to serializable steps (nix-installer style).
//!
//! `labforge plan --json` prints exactly this; `render`, `image`, `deploy` and `rebuild` consume it.
//! The JSON form is documented in docs/plan-json.md and stable within `format_version`.

pub mod exposure;

use crate::render;
use crate::spec::model::*;
use serde::Serialize;

pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Plan {
    pub format_version: u32,
    pub spec_revision: String,
    pub site: String,
    /// The spec's networks (one VLAN each): what the exposure policies' sources and addresses refer to.
    pub networks: Vec<NetworkPlan>,
    pub hosts: Vec<HostPlan>,
    pub clusters: Vec<ClusterPlan>,
    pub gates: Vec<GatePlan>,
    /// The planned hosts' dependencies (edges from a planned host) and their deploy waves.
    pub dependencies: crate::spec::deps::Graph,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NetworkPlan {
    pub name: String,
    pub vlan: u16,
    pub cidr: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    pub role: NetRole,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct HostPlan {
    pub name: String,
    pub os: Os,
    pub arch: Arch,
    pub board: Board,
    pub role: String,
    pub disposable: bool,
    /// Where labforge connects (the management address), if the host runs SSH.
    pub connect: Option<String>,
    pub artifacts: Vec<render::Artifact>,
    pub image: ImagePlan,
    pub deploy: Vec<Step>,
    /// The exposure policy (docs/plan-json.md): every flow the host's firewall allows; none for Talos.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exposure: Option<exposure::Exposure>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ImagePlan {
    /// `nix build .#images.<host>` (sd-image for Pis, raw-efi for x86).
    NixBuild {
        attr: String,
        variant: String,
        build: BuildMode,
        output: String,
    },
    /// A vendor base image with this host's cloud-init seed written in.
    BasePlusSeed {
        base: Option<String>,
        seed_in: String,
        output: String,
    },
    /// A Debian image built from packages with mmdebstrap.
    Mmdebstrap {
        suite: String,
        layout: String,
        /// `native`, or `emulated` for an aarch64 image built on the (x86_64) controller.
        build: BuildMode,
        output: String,
    },
    /// Talos Image Factory image for the node's schematic (ID computed offline; see render::talos::schematic).
    TalosFactory {
        cluster: String,
        output: String,
        #[serde(flatten, skip_serializing_if = "Option::is_none")]
        images: Option<render::talos::NodeImages>,
    },
}

/// How an image for another architecture is built.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum BuildMode {
    Native,
    /// aarch64 on an x86_64 controller: binfmt/QEMU emulation or a remote aarch64 builder if configured.
    EmulatedOrRemote,
    /// aarch64 on an x86_64 controller through binfmt_misc + qemu-user only (mmdebstrap runs the arm64
    /// maintainer scripts emulated; there is no remote builder for it).
    Emulated,
}

/// One file of an upload: the rendered `source` (relative to the spec root), where it goes on the host, and
/// the sha256 of the bytes the plan expects (absent only when the plan could not render it).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UploadFile {
    pub source: String,
    pub to: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// What an upload installs.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum UploadPurpose {
    /// sshd drop-ins: checked against labforge's own algorithms, validated with `sshd -t`, then reloaded.
    SshdDropin,
    /// A Compose stack's files.
    Stack { stack: String },
}

/// A Unix file mode; serialized as four octal digits (`"0644"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMode(pub u32);

impl Serialize for FileMode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl std::fmt::Display for FileMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Step {
    /// Stable within a plan: `<host>:<action>[:<object>]`.
    pub id: String,
    pub action: Action,
    pub description: String,
    /// An operator-validated gate that must be signed off before this step runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requires_gate: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Action {
    /// Wait for SSH with the host key from the secrets store (strict, no TOFU).
    ConnectPinned {
        address: String,
        port: u16,
    },
    /// Upload files atomically (temp + rename) with owner and mode; each file's bytes on disk must be the ones
    /// the plan rendered (`sha256`), else deploy refuses it.
    Upload {
        /// What the files are: deploy backs up an sshd drop-in or a stack's files before changing them.
        purpose: UploadPurpose,
        files: Vec<UploadFile>,
        dest: String,
        mode: FileMode,
        owner: String,
    },
    /// Upload the stack's `.env` built from the secrets store, mode 0600.
    UploadEnv {
        stack: String,
        dest: String,
    },
    /// `sshd -t` on the host before reloading it.
    SshdValidate,
    SshdReload,
    /// Load the nftables ruleset (atomic `nft -f`).
    FirewallApply {
        file: String,
        /// The ruleset's bytes as the plan rendered them.
        #[serde(skip_serializing_if = "Option::is_none")]
        sha256: Option<String>,
    },
    ComposeUp {
        stack: String,
        dir: String,
    },
    /// Copy the flake and run `nixos-rebuild switch`, confirm on a fresh connection, else roll back.
    NixosSwitch {
        flake_attr: String,
    },
    /// Operator-validated gate: labforge shows evidence and waits for `labforge gate confirm`.
    Gate {
        gate: String,
    },
    /// Start a NixOS stack unit that waits behind a `before` gate (its unit's ConditionPathExists is the gate's
    /// host marker, written when the gate step passed): `systemctl start` once the switch is done.
    StackStart {
        stack: String,
        unit: String,
    },
    /// Run `labforge verify` checks against the host.
    Verify,
    /// `talosctl apply-config`: `--insecure` when the node answers only in maintenance mode (first install),
    /// else authenticated with the cluster's talosconfig; nothing is applied when the node's machine config
    /// already equals `config`.
    TalosApplyConfig {
        node: String,
        config: String,
        talosconfig: String,
    },
    /// `talosctl bootstrap`, exactly once per cluster: skipped when etcd already lists members.
    TalosBootstrap {
        node: String,
        talosconfig: String,
    },
    /// `talosctl kubeconfig OUT` (admin credentials: written under out/, never committed).
    TalosKubeconfig {
        node: String,
        endpoints: Vec<String>,
        talosconfig: String,
        out: String,
    },
    /// `talosctl health` with a bounded wait.
    TalosHealth {
        node: String,
        endpoints: Vec<String>,
        talosconfig: String,
        wait_timeout_s: u64,
    },
}

impl Action {
    /// The talosctl arguments of a Talos action, exactly as deploy runs them (`plan` prints these).
    /// `insecure`: the maintenance-mode form of apply-config (first install).
    pub fn talosctl_args(&self, insecure: bool) -> Option<Vec<String>> {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        Some(match self {
            Action::TalosApplyConfig {
                node,
                config,
                talosconfig,
            } => {
                if insecure {
                    s(&[
                        "apply-config",
                        "--insecure",
                        "--nodes",
                        node,
                        "--file",
                        config,
                    ])
                } else {
                    s(&[
                        "--talosconfig",
                        talosconfig,
                        "apply-config",
                        "--nodes",
                        node,
                        "--endpoints",
                        node,
                        "--file",
                        config,
                    ])
                }
            }
            Action::TalosBootstrap { node, talosconfig } => s(&[
                "--talosconfig",
                talosconfig,
                "bootstrap",
                "--nodes",
                node,
                "--endpoints",
                node,
            ]),
            Action::TalosKubeconfig {
                node,
                endpoints,
                talosconfig,
                out,
            } => s(&[
                "--talosconfig",
                talosconfig,
                "kubeconfig",
                out,
                "--force",
                "--merge=false",
                "--nodes",
                node,
                "--endpoints",
                &endpoints.join(","),
            ]),
            Action::TalosHealth {
                node,
                endpoints,
                talosconfig,
                wait_timeout_s,
            } => s(&[
                "--talosconfig",
                talosconfig,
                "health",
                "--nodes",
                node,
                "--endpoints",
                &endpoints.join(","),
                "--wait-timeout",
                &format!("{wait_timeout_s}s"),
            ]),
            _ => return None,
        })
    }

    /// The talosctl command line of a Talos action, for an operator to run by hand.
    pub fn talosctl_command(&self, insecure: bool) -> Option<String> {
        self.talosctl_args(insecure).map(|a| {
            std::iter::once("talosctl".to_string())
                .chain(a.iter().map(|x| crate::transport::sq_if_needed(x)))
                .collect::<Vec<_>>()
                .join(" ")
        })
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ClusterPlan {
    pub name: String,
    pub talos_version: String,
    pub kubernetes_version: String,
    pub endpoint: String,
    pub control_planes: Vec<String>,
    pub workers: Vec<String>,
    pub artifacts: Vec<render::Artifact>,
    /// What `labforge deploy CLUSTER` runs after every node's apply step, in order (bootstrap → kubeconfig →
    /// health); the nodes' own `talos-apply` steps are in their host plans.
    pub steps: Vec<Step>,
    /// The exact operator commands, in order (first install → bootstrap → kubeconfig → health), from the
    /// typed steps (apply in its first-install form).
    pub commands: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GatePlan {
    pub id: String,
    pub seed: String,
    pub title: String,
    pub when: GateWhen,
    pub stack: String,
    pub hosts: Vec<String>,
    pub checklist: Vec<String>,
}

/// Which hosts to plan; empty = all. Unknown names are an input error.
pub fn select<'a>(spec: &'a Spec, names: &[String]) -> Result<Vec<&'a Host>, String> {
    if names.is_empty() {
        return Ok(spec.hosts.values().collect());
    }
    let mut out = Vec::new();
    for n in names {
        match spec.hosts.get(n) {
            Some(h) => out.push(h),
            None => {
                let known: Vec<&str> = spec.hosts.keys().map(|s| s.as_str()).collect();
                let hint = crate::spec::closest(n, &known)
                    .map(|s| format!(" (did you mean `{s}`?)"))
                    .unwrap_or_default();
                return Err(format!("no host named `{n}` in the spec{hint}"));
            }
        }
    }
    Ok(out)
}

pub fn plan(spec: &Spec, hosts: &[&Host]) -> Plan {
    let backends = render::backends();
    let all_artifacts: Vec<render::Artifact> = backends.iter().flat_map(|b| b.plan(spec)).collect();
    // host → its artifacts, in backend order (one pass; a shared stack file lists every host running it).
    let mut by_host: std::collections::BTreeMap<&str, Vec<&render::Artifact>> =
        std::collections::BTreeMap::new();
    for a in &all_artifacts {
        for h in &a.hosts {
            by_host.entry(h.as_str()).or_default().push(a);
        }
    }
    // The bytes a fresh render gives every public artifact of the selected hosts, hashed once: deploy refuses a
    // file on disk that is not what this plan rendered. (`check` passed, so rendering cannot fail here; if it
    // did, the artifacts stay unhashed and deploy refuses them, telling the operator to run `labforge render`.)
    let wanted: Vec<&render::Artifact> = {
        let mut seen = std::collections::BTreeSet::new();
        hosts
            .iter()
            .filter_map(|h| by_host.get(h.name.as_str()))
            .flatten()
            .copied()
            .filter(|a| !a.sensitive && seen.insert(a.path.as_str()))
            .collect()
    };
    let hashes: std::collections::BTreeMap<String, String> = render::public_bytes(spec, &wanted)
        .map(|m| {
            m.into_iter()
                .map(|(p, b)| (p, crate::transport::sha256_hex(&b)))
                .collect()
        })
        .unwrap_or_default();
    let host_plans = hosts
        .iter()
        .map(|h| {
            let artifacts: Vec<render::Artifact> = by_host
                .get(h.name.as_str())
                .map(|v| {
                    v.iter()
                        .map(|a| render::Artifact {
                            sha256: hashes.get(&a.path).cloned(),
                            ..(*a).clone()
                        })
                        .collect()
                })
                .unwrap_or_default();
            HostPlan {
                name: h.name.clone(),
                os: h.os,
                arch: h.arch,
                board: h.board,
                role: h.role.clone(),
                disposable: h.disposable,
                connect: if h.os.has_ssh() {
                    h.management_address().map(|a| a.to_string())
                } else {
                    None
                },
                image: image_plan(spec, h),
                deploy: deploy_steps(spec, h, &artifacts),
                exposure: exposure::exposure(spec, h),
                artifacts,
            }
        })
        .collect();
    let selected: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
    let clusters = spec
        .clusters
        .values()
        .filter(|c| {
            c.control_planes
                .iter()
                .chain(&c.workers)
                .any(|n| selected.contains(&n.as_str()))
        })
        .map(|c| cluster_plan(spec, c, &all_artifacts))
        .collect();
    let gates = spec
        .gates
        .values()
        .filter_map(|g| {
            let st = spec.stacks.get(&g.stack)?;
            let hosts: Vec<String> = st
                .hosts
                .iter()
                .filter(|h| selected.contains(&h.as_str()))
                .cloned()
                .collect();
            (!hosts.is_empty()).then(|| GatePlan {
                id: g.id.clone(),
                seed: g.seed.clone(),
                title: g.title.clone(),
                when: g.when,
                stack: g.stack.clone(),
                hosts,
                checklist: g.checklist.clone(),
            })
        })
        .collect();
    let names: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
    let dependencies = {
        let edges: Vec<crate::spec::deps::Edge> = crate::spec::deps::edges(spec)
            .into_iter()
            .filter(|e| {
                names
                    .iter()
                    .any(|n| e.from == *n || e.from.starts_with(&format!("{n}/")))
            })
            .collect();
        // `check` refuses a cycle, so a validated spec always has waves.
        let waves = crate::spec::deps::waves(&names, &edges).unwrap_or_default();
        crate::spec::deps::Graph { edges, waves }
    };
    Plan {
        dependencies,
        format_version: FORMAT_VERSION,
        spec_revision: spec.revision.clone(),
        site: spec.site.name.clone(),
        networks: spec
            .networks
            .values()
            .map(|n| NetworkPlan {
                name: n.name.clone(),
                vlan: n.vlan,
                cidr: n.cidr.to_string(),
                gateway: n.gateway.map(|g| g.to_string()),
                role: n.role,
            })
            .collect(),
        hosts: host_plans,
        clusters,
        gates,
    }
}

fn image_plan(spec: &Spec, h: &Host) -> ImagePlan {
    let output = format!("out/images/{}.img", h.name);
    match h.os {
        Os::Nixos => ImagePlan::NixBuild {
            attr: format!(".#images.{}", h.name),
            variant: if h.board.is_rpi() {
                "sd-image".into()
            } else {
                "raw-efi".into()
            },
            build: if h.arch == Arch::Aarch64 {
                BuildMode::EmulatedOrRemote
            } else {
                BuildMode::Native
            },
            output,
        },
        Os::Ubuntu => ImagePlan::BasePlusSeed {
            base: h.image.clone(),
            seed_in: if h.board.is_rpi() {
                "system-boot".into()
            } else {
                "cidata".into()
            },
            output,
        },
        Os::Debian => match &h.image {
            Some(base) => ImagePlan::BasePlusSeed {
                base: Some(base.clone()),
                seed_in: if h.board.is_rpi() {
                    "system-boot".into()
                } else {
                    "cidata".into()
                },
                output,
            },
            None => ImagePlan::Mmdebstrap {
                suite: "bookworm".into(),
                layout: if h.board.is_rpi() {
                    "rpi-firmware+ext4".into()
                } else {
                    "gpt-esp-systemd-boot+ext4".into()
                },
                build: if h.arch == Arch::Aarch64 {
                    BuildMode::Emulated
                } else {
                    BuildMode::Native
                },
                output,
            },
        },
        Os::Talos => ImagePlan::TalosFactory {
            cluster: h.cluster.clone().unwrap_or_default(),
            output,
            images: h
                .cluster
                .as_ref()
                .and_then(|c| spec.clusters.get(c))
                .and_then(|c| render::talos::node_images(c, h).ok()),
        },
    }
}

fn deploy_steps(spec: &Spec, h: &Host, artifacts: &[render::Artifact]) -> Vec<Step> {
    let step = |action: &str, obj: Option<&str>, a: Action, d: String| Step {
        id: match obj {
            Some(o) => format!("{}:{action}:{o}", h.name),
            None => format!("{}:{action}", h.name),
        },
        action: a,
        description: d,
        requires_gate: None,
    };
    let mut steps = Vec::new();
    if h.os == Os::Talos {
        // Talos nodes are driven by the cluster's talosctl commands (see ClusterPlan).
        if let Some(cl) = h.cluster.as_ref().and_then(|c| spec.clusters.get(c)) {
            let addr = h
                .interfaces
                .iter()
                .find(|i| i.network == cl.network)
                .and_then(|i| i.address)
                .map(|a| a.to_string())
                .unwrap_or_default();
            steps.push(step(
                "talos-apply",
                None,
                Action::TalosApplyConfig {
                    node: addr,
                    config: render::talos::config_path(&cl.name, &h.name),
                    talosconfig: render::talos::talosconfig_path(&cl.name),
                },
                "apply the machine config (maintenance mode: --insecure, first install; else with the talosconfig; nothing when it already matches)".into(),
            ));
        }
        return steps;
    }
    let Some(mgmt) = h.management_address() else {
        return steps;
    };
    steps.push(step(
        "connect",
        None,
        Action::ConnectPinned {
            address: mgmt.to_string(),
            port: h.facts.ssh_port,
        },
        format!(
            "connect to {mgmt}:{} with the pinned host key",
            h.facts.ssh_port
        ),
    ));
    let gates_for = |stack: &str, when: GateWhen| {
        spec.gates
            .values()
            .filter(move |g| g.stack == stack && g.when == when)
            .map(|g| g.id.clone())
            .collect::<Vec<_>>()
    };
    match h.os {
        Os::Nixos => {
            // Stacks that read secrets get their .env before the switch: /var/lib/labforge/secrets (kept across
            // reboots; service.nix's tmpfiles rule copies it to /run at boot) and /run/secrets (read now).
            for s in &h.stacks {
                if spec
                    .stacks
                    .get(s)
                    .is_some_and(|st| !render::compose::stack_secrets(st).is_empty())
                {
                    for dest in [
                        format!("/var/lib/labforge/secrets/{s}.env"),
                        format!("/run/secrets/labforge/{s}.env"),
                    ] {
                        steps.push(step(
                            "upload-env",
                            Some(&format!("{s}:{dest}")),
                            Action::UploadEnv {
                                stack: s.clone(),
                                dest: dest.clone(),
                            },
                            format!("write {dest} from the secrets store (0600)"),
                        ));
                    }
                }
            }
            steps.push(step(
                "nixos-switch",
                None,
                Action::NixosSwitch {
                    flake_attr: format!(".#nixosConfigurations.{}", h.name),
                },
                "copy the flake, nixos-rebuild switch, confirm on a fresh connection or roll back"
                    .into(),
            ));
            // A stack behind a `before` gate is installed by the switch but its unit does not start (its
            // ConditionPathExists is the gate's host marker): the rest of the host deploys; the gate step
            // writes the marker once signed off, then the stack starts.
            for s in &h.stacks {
                let gs = gates_for(s, GateWhen::Before);
                for g in &gs {
                    let mut st = step(
                        "gate",
                        Some(g),
                        Action::Gate { gate: g.clone() },
                        format!("operator gate `{g}` before stack {s}"),
                    );
                    st.requires_gate = Some(g.clone());
                    steps.push(st);
                }
                if !gs.is_empty() {
                    steps.push(step(
                        "stack-start",
                        Some(s),
                        Action::StackStart {
                            stack: s.clone(),
                            unit: format!("labforge-stack-{s}.service"),
                        },
                        format!("start stack {s}, which waits behind its operator gate on every boot until signed off"),
                    ));
                }
            }
            for s in &h.stacks {
                for g in gates_for(s, GateWhen::After) {
                    steps.push(step(
                        "gate",
                        Some(&g),
                        Action::Gate { gate: g.clone() },
                        format!("operator gate `{g}` after stack {s}"),
                    ));
                }
            }
        }
        Os::Ubuntu | Os::Debian => {
            let matching = |pred: &dyn Fn(&render::Artifact) -> bool| {
                artifacts
                    .iter()
                    .filter(|a| pred(a))
                    .cloned()
                    .collect::<Vec<_>>()
            };
            let upload = |arts: &[render::Artifact], dest: &str| {
                arts.iter()
                    .map(|a| UploadFile {
                        source: a.path.clone(),
                        to: remote_path(&a.path, dest),
                        sha256: a.sha256.clone(),
                    })
                    .collect::<Vec<_>>()
            };
            let sshd = matching(&|a| a.kind == render::Kind::SshdDropin);
            if !sshd.is_empty() {
                let dest = "/etc/ssh/sshd_config.d/";
                steps.push(step(
                    "upload",
                    Some("sshd"),
                    Action::Upload {
                        purpose: UploadPurpose::SshdDropin,
                        files: upload(&sshd, dest),
                        dest: dest.into(),
                        mode: FileMode(0o644),
                        owner: "root:root".into(),
                    },
                    "install the hardened sshd drop-in".into(),
                ));
                steps.push(step(
                    "sshd-validate",
                    None,
                    Action::SshdValidate,
                    "sshd -t (never reload a config that does not parse)".into(),
                ));
                steps.push(step(
                    "sshd-reload",
                    None,
                    Action::SshdReload,
                    "reload sshd; labforge's own algorithms were checked against the new lists"
                        .into(),
                ));
            }
            let fw = matching(&|a| a.kind == render::Kind::Nftables);
            if let Some(f) = fw.first() {
                steps.push(step(
                    "firewall",
                    None,
                    Action::FirewallApply {
                        file: f.path.clone(),
                        sha256: f.sha256.clone(),
                    },
                    "load the nftables ruleset atomically".into(),
                ));
            }
            // Stacks after the stacks whose networks they join or scrape (the dependency graph).
            let order = crate::spec::deps::stack_order(h, &crate::spec::deps::edges(spec))
                .unwrap_or_else(|_| h.stacks.clone());
            for s in &order {
                for g in gates_for(s, GateWhen::Before) {
                    let mut st = step(
                        "gate",
                        Some(&g),
                        Action::Gate { gate: g.clone() },
                        format!("operator gate `{g}` before stack {s}"),
                    );
                    st.requires_gate = Some(g.clone());
                    steps.push(st);
                }
                let dir = format!("/opt/labforge/stacks/{s}");
                let sf = matching(&|a| {
                    a.stack.as_deref() == Some(s.as_str()) && a.kind != render::Kind::EnvExample
                });
                let dest = format!("{dir}/");
                steps.push(step(
                    "upload",
                    Some(s),
                    Action::Upload {
                        purpose: UploadPurpose::Stack { stack: s.clone() },
                        files: upload(&sf, &dest),
                        dest,
                        mode: FileMode(0o644),
                        owner: "root:root".into(),
                    },
                    format!("upload stack {s}"),
                ));
                steps.push(step(
                    "upload-env",
                    Some(s),
                    Action::UploadEnv {
                        stack: s.clone(),
                        dest: format!("{dir}/.env"),
                    },
                    format!("write {s}/.env from the secrets store (0600)"),
                ));
                steps.push(step(
                    "compose-up",
                    Some(s),
                    Action::ComposeUp {
                        stack: s.clone(),
                        dir,
                    },
                    format!("docker compose up -d for {s} if it changed"),
                ));
                for g in gates_for(s, GateWhen::After) {
                    steps.push(step(
                        "gate",
                        Some(&g),
                        Action::Gate { gate: g.clone() },
                        format!("operator gate `{g}` after stack {s}"),
                    ));
                }
            }
        }
        Os::Talos => unreachable!("handled above"),
    }
    steps.push(step(
        "verify",
        None,
        Action::Verify,
        "verify the hardening rules on the host".into(),
    ));
    steps
}

/// Where a planned file goes on the host: under `dest` (a directory, ending in `/`) by its name, a stack's
/// files by their path inside the stack; `dest` itself when it names a file.
pub fn remote_path(file: &str, dest: &str) -> String {
    let rest = match file.strip_prefix("stacks/") {
        Some(r) => r.split_once('/').map(|(_, x)| x).unwrap_or(r),
        None => file.rsplit('/').next().unwrap_or(file),
    };
    if dest.ends_with('/') {
        format!("{dest}{rest}")
    } else {
        dest.to_string()
    }
}

/// How long `talosctl health` may wait for the cluster (flag `--wait-timeout`).
pub const TALOS_HEALTH_WAIT_S: u64 = 600;

fn cluster_plan(spec: &Spec, c: &Cluster, all: &[render::Artifact]) -> ClusterPlan {
    let endpoint = format!("https://{}:6443", c.endpoint_vip);
    let addr = |n: &str| {
        spec.hosts
            .get(n)
            .and_then(|h| h.address_on(&c.network))
            .map(|a| a.to_string())
            .unwrap_or_else(|| n.to_string())
    };
    let talosconfig = render::talos::talosconfig_path(&c.name);
    let mut commands = Vec::new();
    for n in c.control_planes.iter().chain(&c.workers) {
        let a = Action::TalosApplyConfig {
            node: addr(n),
            config: render::talos::config_path(&c.name, n),
            talosconfig: talosconfig.clone(),
        };
        commands.extend(a.talosctl_command(true));
    }
    // talosctl talks to control-plane nodes directly; the VIP is for the Kubernetes API only (it follows etcd).
    let eps: Vec<String> = c.control_planes.iter().map(|n| addr(n)).collect();
    let mut steps = Vec::new();
    let step = |action: &str, a: Action, d: String| Step {
        id: format!("{}:{action}", c.name),
        action: a,
        description: d,
        requires_gate: None,
    };
    if let Some(first) = eps.first().cloned() {
        steps.push(step(
            "talos-bootstrap",
            Action::TalosBootstrap {
                node: first.clone(),
                talosconfig: talosconfig.clone(),
            },
            format!("bootstrap etcd on {first}, once: skipped when etcd already has members"),
        ));
        steps.push(step(
            "talos-kubeconfig",
            Action::TalosKubeconfig {
                node: first.clone(),
                endpoints: eps.clone(),
                talosconfig: talosconfig.clone(),
                out: format!("out/talos/{}/kubeconfig", c.name),
            },
            format!(
                "fetch the cluster's kubeconfig into out/talos/{}/kubeconfig",
                c.name
            ),
        ));
        steps.push(step(
            "talos-health",
            Action::TalosHealth {
                node: first.clone(),
                endpoints: eps.clone(),
                talosconfig: talosconfig.clone(),
                wait_timeout_s: TALOS_HEALTH_WAIT_S,
            },
            format!("wait (at most {TALOS_HEALTH_WAIT_S} s) until talosctl health passes"),
        ));
    }
    commands.extend(
        steps
            .iter()
            .filter_map(|s| s.action.talosctl_command(false)),
    );
    ClusterPlan {
        name: c.name.clone(),
        talos_version: c.talos_version.clone(),
        kubernetes_version: c.kubernetes_version.clone(),
        endpoint,
        control_planes: c.control_planes.clone(),
        workers: c.workers.clone(),
        artifacts: all
            .iter()
            .filter(|a| a.cluster.as_deref() == Some(c.name.as_str()))
            .cloned()
            .collect(),
        steps,
        commands,
    }
}
