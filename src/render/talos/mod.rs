//! The Talos backend: per-node Talos v1.13 machine configs (the `v1alpha1` document plus the multi-document
//! network config), the operator's `talosconfig`, and per-node Image Factory schematics.
//!
//! * Cluster secrets are generated once per cluster (`talos/<cluster>` in the age store, the YAML of
//!   `talosctl gen secrets`) and reused by every render; see [`secrets`].
//! * Machine configs and talosconfig carry secrets: `out/talos/<cluster>/<node>.yaml` and
//!   `out/talos/<cluster>/talosconfig`, mode 0600, never committed.
//! * Schematics are committed: `talos/<cluster>/schematics/<node>.yaml`, the exact body the Image Factory
//!   hashes, with the ID and image URLs in a comment header; see [`schematic`].
//!
//! Network configuration uses only the v1.13 documents (`machine.network` is gone from the schema):
//! `HostnameConfig`, `ResolverConfig`, `LinkAliasConfig` (MAC selector) + `LinkConfig` per NIC with its
//! static addresses and routes, `VLANConfig` for tagged networks, `DHCPv4Config` for DHCP links and
//! `Layer2VIPConfig` on control planes. The VIP is its own document and never replaces the link's address,
//! and every link is emitted exactly once (talhelper's lost-address and duplicate-VLAN regressions).

pub mod schematic;
pub mod secrets;

use crate::render::{Artifact, Backend, Kind, RenderCtx};
use crate::secrets::Store;
use crate::spec::model::{Cluster, Host, Interface, Spec};
use anyhow::{anyhow, bail, Context, Result};
use ipnet::IpNet;
use serde_yaml_ng::{Mapping, Value};
use std::collections::BTreeMap;
use std::net::IpAddr;

pub use schematic::{node_images, NodeImages, Schematic};
pub use secrets::{AdminCert, Bundle};

pub struct Talos;

const BACKEND: &str = "talos";

/// Store entry of a cluster's secrets bundle.
pub fn bundle_secret_name(cluster: &str) -> String {
    format!("talos/{cluster}")
}

/// Store entry of a cluster's talosconfig client certificate.
pub fn admin_secret_name(cluster: &str) -> String {
    format!("talos-admin/{cluster}")
}

pub fn config_path(cluster: &str, node: &str) -> String {
    format!("out/talos/{cluster}/{node}.yaml")
}

pub fn talosconfig_path(cluster: &str) -> String {
    format!("out/talos/{cluster}/talosconfig")
}

fn nodes(c: &Cluster) -> impl Iterator<Item = (&String, bool)> {
    c.control_planes
        .iter()
        .map(|n| (n, true))
        .chain(c.workers.iter().map(|n| (n, false)))
}

impl Backend for Talos {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn plan(&self, spec: &Spec) -> Vec<Artifact> {
        let mut out = Vec::new();
        for c in spec.clusters.values() {
            for (n, _) in nodes(c) {
                out.push(
                    Artifact::new(
                        config_path(&c.name, n),
                        Kind::TalosMachineConfig,
                        BACKEND,
                        vec![n.clone()],
                    )
                    .cluster(&c.name)
                    .sensitive(),
                );
                out.push(
                    Artifact::new(
                        schematic::schematic_path(&c.name, n),
                        Kind::TalosSchematic,
                        BACKEND,
                        vec![n.clone()],
                    )
                    .cluster(&c.name),
                );
            }
            out.push(
                Artifact::new(
                    talosconfig_path(&c.name),
                    Kind::Talosconfig,
                    BACKEND,
                    nodes(c).map(|(n, _)| n.clone()).collect(),
                )
                .cluster(&c.name)
                .sensitive(),
            );
        }
        out
    }

    fn render(&self, ctx: &RenderCtx, artifacts: &[&Artifact]) -> Result<Vec<(String, Vec<u8>)>> {
        let spec = ctx.spec;
        let mut bundles: BTreeMap<String, Bundle> = BTreeMap::new();
        let mut out = Vec::new();
        for a in artifacts {
            let cname = a.cluster.as_deref().ok_or_else(|| {
                anyhow!("internal error: talos artifact {} has no cluster", a.path)
            })?;
            let c = spec
                .clusters
                .get(cname)
                .ok_or_else(|| anyhow!("internal error: unknown cluster `{cname}`"))?;
            let bundle = |bundles: &mut BTreeMap<String, Bundle>| -> Result<Bundle> {
                if let Some(b) = bundles.get(cname) {
                    return Ok(b.clone());
                }
                let store = ctx
                    .store
                    .ok_or_else(|| anyhow!("internal error: {} needs the secrets store", a.path))?;
                let b = load_bundle(store, cname)?;
                bundles.insert(cname.to_string(), b.clone());
                Ok(b)
            };
            let bytes = match a.kind {
                Kind::TalosSchematic => {
                    let h = node(spec, &a.hosts)?;
                    render_schematic(spec, c, h)?
                }
                Kind::TalosMachineConfig => {
                    let h = node(spec, &a.hosts)?;
                    let b = bundle(&mut bundles)?;
                    render_machine_config(spec, c, h, &b)?
                }
                Kind::Talosconfig => {
                    let b = bundle(&mut bundles)?;
                    let store = ctx
                        .store
                        .ok_or_else(|| anyhow!("internal error: talosconfig needs the store"))?;
                    let admin = load_admin(store, cname, &b)?;
                    render_talosconfig(spec, c, &b, &admin)?
                }
                other => bail!("internal error: the talos backend does not render {other:?}"),
            };
            out.push((a.path.clone(), bytes));
        }
        Ok(out)
    }

    fn owned_dirs(&self) -> Vec<&'static str> {
        vec!["talos"]
    }
}

fn node<'a>(spec: &'a Spec, hosts: &[String]) -> Result<&'a Host> {
    let n = hosts
        .first()
        .ok_or_else(|| anyhow!("internal error: talos node artifact without a host"))?;
    spec.hosts
        .get(n)
        .ok_or_else(|| anyhow!("internal error: unknown host `{n}`"))
}

/// The cluster's secrets bundle: generated on first use, then always the stored one.
pub fn load_bundle(store: &Store, cluster: &str) -> Result<Bundle> {
    let name = bundle_secret_name(cluster);
    let v = store
        .get_or_generate(&name, || Bundle::generate()?.to_yaml())
        .with_context(|| format!("Talos secrets of cluster `{cluster}`"))?;
    Bundle::parse(v.expose(), &name)
}

fn load_admin(store: &Store, cluster: &str, bundle: &Bundle) -> Result<AdminCert> {
    let name = admin_secret_name(cluster);
    if let Some(v) = store.get(&name)? {
        let a = AdminCert::parse(v.expose(), &name)?;
        if a.usable_with(bundle) {
            return Ok(a);
        }
    }
    let a = AdminCert::issue(bundle)?;
    store.put(&name, &a.to_yaml()?)?;
    Ok(a)
}

/// Spec files a render depends on, as `hosts/<file>` (stable across working directories).
fn source_files(spec: &Spec, host: &Host, cluster: &Cluster) -> Vec<String> {
    let nets = host
        .interfaces
        .iter()
        .filter_map(|i| spec.networks.get(&i.network).and_then(|n| n.loc));
    let locs = [host.loc, cluster.loc, spec.site.loc]
        .into_iter()
        .flatten()
        .chain(nets);
    spec.sources.spec_names(locs.map(|l| l.file))
}

fn header(spec: &Spec, host: &Host, cluster: &Cluster, what: &str) -> String {
    format!(
        "# Generated by labforge from {} — do not edit; change the spec and run `labforge render`.\n# {what}\n",
        source_files(spec, host, cluster).join(", ")
    )
}

fn render_schematic(spec: &Spec, c: &Cluster, h: &Host) -> Result<Vec<u8>> {
    let s = Schematic::for_node(c, h);
    let body = s
        .canonical()
        .with_context(|| format!("Image Factory schematic of {}", h.name))?;
    let img = node_images(c, h)?;
    let mut text = header(
        spec,
        h,
        c,
        &format!(
            "Image Factory schematic of {} (Talos {}, {}). The body below is byte for byte what the factory hashes.",
            h.name,
            c.talos_version,
            schematic::factory_arch(h.arch)
        ),
    );
    text.push_str(&format!("# schematic id: {}\n", img.schematic_id));
    text.push_str(&format!("# installer:    {}\n", img.installer));
    text.push_str(&format!("# disk image:   {}\n", img.disk_image));
    if let Some(iso) = &img.iso {
        text.push_str(&format!("# iso:          {iso}\n"));
    }
    text.push_str(&body);
    Ok(text.into_bytes())
}

// ---- small YAML builders (insertion-ordered mappings) ----

fn s(v: impl ToString) -> Value {
    Value::String(v.to_string())
}

fn m(pairs: Vec<(&str, Value)>) -> Value {
    let mut map = Mapping::new();
    for (k, v) in pairs {
        map.insert(Value::String(k.to_string()), v);
    }
    Value::Mapping(map)
}

fn seq<T>(v: impl IntoIterator<Item = T>, f: impl Fn(T) -> Value) -> Value {
    Value::Sequence(v.into_iter().map(f).collect())
}

fn int(n: u64) -> Value {
    Value::Number(n.into())
}

fn b64(v: &str) -> Value {
    s(v)
}

/// Pod and service CIDRs: the Talos defaults unless they overlap a lab network (the example lab's MGMT
/// 10.99.0.0/24 sits inside the default service range 10.96.0.0/12), then the first free alternative.
pub fn cluster_subnets(spec: &Spec) -> Result<(IpNet, IpNet)> {
    let used: Vec<IpNet> = spec.networks.values().map(|n| n.cidr).collect();
    let free = |cands: &[&str], what: &str, taken: &[IpNet]| -> Result<IpNet> {
        for c in cands {
            let n: IpNet = c.parse().map_err(|e| anyhow!("internal error: {e}"))?;
            if !taken
                .iter()
                .any(|u| u.contains(&n.network()) || n.contains(&u.network()))
            {
                return Ok(n);
            }
        }
        bail!(
            "every candidate Kubernetes {what} range ({}) overlaps a network of the spec; renumber the overlapping network",
            cands.join(", ")
        )
    };
    let pods = free(
        &[
            "10.244.0.0/16",
            "10.128.0.0/14",
            "172.16.0.0/16",
            "192.168.128.0/17",
        ],
        "pod",
        &used,
    )?;
    let mut taken = used.clone();
    taken.push(pods);
    let services = free(
        &[
            "10.96.0.0/12",
            "10.112.0.0/12",
            "172.17.0.0/16",
            "192.168.64.0/18",
        ],
        "service",
        &taken,
    )?;
    Ok((pods, services))
}

fn cluster_addr(spec: &Spec, c: &Cluster, n: &str) -> Result<IpAddr> {
    spec.hosts
        .get(n)
        .and_then(|h| h.address_on(&c.network))
        .ok_or_else(|| {
            anyhow!(
                "node `{n}` of cluster `{}` has no static address on the cluster network `{}`: give hosts.{n}.interfaces.<nic>.address (talosctl and the VIP need a fixed address)",
                c.name,
                c.network
            )
        })
}

/// A link the node config names: physical NICs (aliased by MAC when the spec gives one) and VLANs.
struct LinkPlan<'a> {
    iface: &'a Interface,
    /// The name the config documents use.
    link: String,
}

fn link_plan<'a>(h: &'a Host) -> Result<Vec<LinkPlan<'a>>> {
    let mut names: BTreeMap<String, &str> = BTreeMap::new();
    let mut out = Vec::new();
    // Physical links first so VLAN parents resolve.
    for i in h.interfaces.iter().filter(|i| i.link.is_none()) {
        let link = if i.mac.is_some() {
            i.network.clone()
        } else {
            i.name.clone()
        };
        out.push(LinkPlan { iface: i, link });
    }
    for i in h.interfaces.iter().filter(|i| i.link.is_some()) {
        out.push(LinkPlan {
            iface: i,
            link: i.name.clone(),
        });
    }
    for l in &out {
        if l.link.len() > 15 {
            bail!(
                "hosts.{}.interfaces.{}: link name `{}` is longer than 15 characters; use a shorter network or interface name",
                h.name, l.iface.name, l.link
            );
        }
        if let Some(prev) = names.insert(l.link.clone(), &l.iface.name) {
            bail!(
                "hosts.{}: interfaces `{prev}` and `{}` would both configure link `{}` (a second document for the same link would silently replace the first); give them distinct networks or names",
                h.name, l.iface.name, l.link
            );
        }
    }
    Ok(out)
}

fn network_docs(spec: &Spec, c: &Cluster, h: &Host, control_plane: bool) -> Result<Vec<Value>> {
    let links = link_plan(h)?;
    let link_of = |iface: &str| {
        links
            .iter()
            .find(|l| l.iface.name == iface)
            .map(|l| l.link.clone())
    };
    // The default route goes via the cluster network's gateway, else the first static network with one.
    let has_gw = |i: &Interface| {
        i.address.is_some()
            && spec
                .networks
                .get(&i.network)
                .and_then(|n| n.gateway)
                .is_some()
    };
    let default_iface = h
        .interfaces
        .iter()
        .find(|i| i.network == c.network && has_gw(i))
        .or_else(|| h.interfaces.iter().find(|i| has_gw(i)))
        .map(|i| i.name.clone());

    let mut docs = vec![m(vec![
        ("apiVersion", s("v1alpha1")),
        ("kind", s("HostnameConfig")),
        ("hostname", s(&h.name)),
    ])];
    // Talos 1.13: machine-config nameservers replace the lower layers, so the bootstrap resolvers are listed
    // here too (after the lab's) when a lab stack serves the lab resolver.
    let nameservers: Vec<IpAddr> = crate::spec::deps::configured_resolvers(spec, h);
    if !nameservers.is_empty() {
        docs.push(m(vec![
            ("apiVersion", s("v1alpha1")),
            ("kind", s("ResolverConfig")),
            (
                "nameservers",
                seq(&nameservers, |a| m(vec![("address", s(a))])),
            ),
            (
                "searchDomains",
                m(vec![("domains", seq([&spec.site.domain], s))]),
            ),
        ]));
    }
    let addressing = |i: &Interface| -> Vec<(&'static str, Value)> {
        let mut v = Vec::new();
        if let Some(a) = i.address {
            v.push((
                "addresses",
                seq([format!("{a}/{}", i.prefix_len)], |x| {
                    m(vec![("address", s(x))])
                }),
            ));
            if default_iface.as_deref() == Some(i.name.as_str()) {
                if let Some(gw) = spec.networks.get(&i.network).and_then(|n| n.gateway) {
                    v.push(("routes", seq([gw], |g| m(vec![("gateway", s(g))]))));
                }
            }
        }
        v
    };
    for l in links.iter().filter(|l| l.iface.link.is_none()) {
        if let Some(mac) = &l.iface.mac {
            docs.push(m(vec![
                ("apiVersion", s("v1alpha1")),
                ("kind", s("LinkAliasConfig")),
                ("name", s(&l.link)),
                (
                    "selector",
                    m(vec![(
                        "match",
                        s(format!(
                            "mac(link.permanent_addr) == \"{}\"",
                            mac.to_ascii_lowercase()
                        )),
                    )]),
                ),
            ]));
        }
    }
    let mut dhcp = Vec::new();
    for l in &links {
        let i = l.iface;
        let mut d = match &i.link {
            None => vec![
                ("apiVersion", s("v1alpha1")),
                ("kind", s("LinkConfig")),
                ("name", s(&l.link)),
                ("up", Value::Bool(true)),
            ],
            Some(parent) => {
                let p = link_of(parent).ok_or_else(|| {
                    anyhow!(
                        "hosts.{}.interfaces.{}: parent link `{parent}` is not an interface of the host",
                        h.name,
                        i.name
                    )
                })?;
                vec![
                    ("apiVersion", s("v1alpha1")),
                    ("kind", s("VLANConfig")),
                    ("name", s(&l.link)),
                    ("vlanID", int(i.vlan as u64)),
                    ("parent", s(p)),
                    ("up", Value::Bool(true)),
                ]
            }
        };
        d.extend(addressing(i));
        docs.push(m(d));
        if i.address.is_none() {
            let mut d = vec![
                ("apiVersion", s("v1alpha1")),
                ("kind", s("DHCPv4Config")),
                ("name", s(&l.link)),
            ];
            // A statically configured default route wins over a DHCP-learned one.
            if default_iface.is_some() {
                d.push(("routeMetric", int(2048)));
            }
            dhcp.push(m(d));
        }
    }
    docs.extend(dhcp);
    if control_plane {
        let i = h
            .interfaces
            .iter()
            .find(|i| i.network == c.network)
            .ok_or_else(|| {
                anyhow!(
                    "control plane `{}` has no interface on the cluster network `{}`",
                    h.name,
                    c.network
                )
            })?;
        let link =
            link_of(&i.name).ok_or_else(|| anyhow!("internal error: no link for {}", i.name))?;
        docs.push(m(vec![
            ("apiVersion", s("v1alpha1")),
            ("kind", s("Layer2VIPConfig")),
            ("name", s(c.endpoint_vip)),
            ("link", s(link)),
        ]));
    }
    Ok(docs)
}

fn ca_pair(ck: &secrets::CertAndKey, with_key: bool) -> Value {
    m(vec![
        ("crt", b64(&ck.crt)),
        ("key", if with_key { b64(&ck.key) } else { s("") }),
    ])
}

fn v1alpha1_doc(spec: &Spec, c: &Cluster, h: &Host, cp: bool, b: &Bundle) -> Result<Value> {
    let img = node_images(c, h)?;
    let install_disk = h
        .talos
        .as_ref()
        .map(|t| t.install_disk.clone())
        .ok_or_else(|| {
            anyhow!(
                "hosts.{} has no [talos] table: add install_disk = \"/dev/…\"",
                h.name
            )
        })?;
    let cidr = spec
        .networks
        .get(&c.network)
        .map(|n| n.cidr)
        .ok_or_else(|| anyhow!("internal error: unknown network {}", c.network))?;
    if cp {
        // talosctl endpoints, etcd peers and the VIP need a fixed address on the cluster network.
        cluster_addr(spec, c, &h.name)?;
    }
    let mut sans: Vec<String> = h
        .interfaces
        .iter()
        .filter_map(|i| i.address.map(|a| a.to_string()))
        .collect();
    sans.push(h.name.clone());
    let k8s = &c.kubernetes_version;
    let (pods, services) = cluster_subnets(spec)?;

    let mut machine = vec![
        ("type", s(if cp { "controlplane" } else { "worker" })),
        ("token", s(&b.trustdinfo.token)),
        ("ca", ca_pair(&b.certs.os, cp)),
        ("certSANs", seq(&sans, s)),
        (
            "kubelet",
            m(vec![
                ("image", s(format!("ghcr.io/siderolabs/kubelet:v{k8s}"))),
                ("defaultRuntimeSeccompProfileEnabled", Value::Bool(true)),
                ("disableManifestsDirectory", Value::Bool(true)),
                ("nodeIP", m(vec![("validSubnets", seq([cidr], s))])),
            ]),
        ),
        (
            "install",
            m(vec![
                ("disk", s(install_disk)),
                ("image", s(&img.installer)),
                ("wipe", Value::Bool(false)),
            ]),
        ),
        (
            "features",
            m(vec![
                ("diskQuotaSupport", Value::Bool(true)),
                (
                    "kubePrism",
                    m(vec![("enabled", Value::Bool(true)), ("port", int(7445))]),
                ),
                (
                    "hostDNS",
                    m(vec![
                        ("enabled", Value::Bool(true)),
                        ("forwardKubeDNSToHost", Value::Bool(true)),
                    ]),
                ),
            ]),
        ),
    ];
    if cp {
        machine.push((
            "nodeLabels",
            m(vec![(
                "node.kubernetes.io/exclude-from-external-load-balancers",
                s(""),
            )]),
        ));
    }

    let mut cluster = vec![
        ("id", s(&b.cluster.id)),
        ("secret", s(&b.cluster.secret)),
        (
            "controlPlane",
            m(vec![(
                "endpoint",
                s(format!("https://{}:6443", fmt_host(c.endpoint_vip))),
            )]),
        ),
        ("clusterName", s(&c.name)),
        (
            "network",
            m(vec![
                ("dnsDomain", s("cluster.local")),
                ("podSubnets", seq([pods], s)),
                ("serviceSubnets", seq([services], s)),
            ]),
        ),
        ("token", s(&b.secrets.bootstraptoken)),
    ];
    if cp {
        let mut api_sans = vec![c.endpoint_vip.to_string()];
        for n in &c.control_planes {
            api_sans.push(cluster_addr(spec, c, n)?.to_string());
        }
        cluster.extend([
            (
                "secretboxEncryptionSecret",
                s(&b.secrets.secretboxencryptionsecret),
            ),
            ("ca", ca_pair(&b.certs.k8s, true)),
            ("aggregatorCA", ca_pair(&b.certs.k8saggregator, true)),
            (
                "serviceAccount",
                m(vec![("key", b64(&b.certs.k8sserviceaccount.key))]),
            ),
            (
                "apiServer",
                m(vec![
                    ("image", s(format!("registry.k8s.io/kube-apiserver:v{k8s}"))),
                    ("certSANs", seq(&api_sans, s)),
                ]),
            ),
            (
                "controllerManager",
                m(vec![(
                    "image",
                    s(format!("registry.k8s.io/kube-controller-manager:v{k8s}")),
                )]),
            ),
            (
                "proxy",
                m(vec![(
                    "image",
                    s(format!("registry.k8s.io/kube-proxy:v{k8s}")),
                )]),
            ),
            (
                "scheduler",
                m(vec![(
                    "image",
                    s(format!("registry.k8s.io/kube-scheduler:v{k8s}")),
                )]),
            ),
        ]);
    } else {
        cluster.push(("ca", ca_pair(&b.certs.k8s, false)));
    }
    cluster.push((
        "discovery",
        m(vec![
            ("enabled", Value::Bool(true)),
            (
                "registries",
                m(vec![
                    ("kubernetes", m(vec![("disabled", Value::Bool(true))])),
                    ("service", m(vec![])),
                ]),
            ),
        ]),
    ));
    if cp {
        cluster.push((
            "etcd",
            m(vec![
                ("ca", ca_pair(&b.certs.etcd, true)),
                ("advertisedSubnets", seq([cidr], s)),
            ]),
        ));
        cluster.push((
            "allowSchedulingOnControlPlanes",
            Value::Bool(c.allow_scheduling_on_control_planes),
        ));
    }
    Ok(m(vec![
        ("version", s("v1alpha1")),
        ("debug", Value::Bool(false)),
        ("machine", m(machine)),
        ("cluster", m(cluster)),
    ]))
}

fn fmt_host(a: IpAddr) -> String {
    match a {
        IpAddr::V4(v) => v.to_string(),
        IpAddr::V6(v) => format!("[{v}]"),
    }
}

/// Join YAML documents with `---` separators.
fn join_docs(head: String, docs: &[Value]) -> Result<Vec<u8>> {
    let mut text = head;
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            text.push_str("---\n");
        }
        text.push_str(&serde_yaml_ng::to_string(d).context("encoding a Talos config document")?);
    }
    Ok(text.into_bytes())
}

/// The full machine config of one node (all documents).
pub fn render_machine_config(spec: &Spec, c: &Cluster, h: &Host, b: &Bundle) -> Result<Vec<u8>> {
    let cp = c.control_planes.contains(&h.name);
    let mut v1 = v1alpha1_doc(spec, c, h, cp, b)?;
    // Spec patches last: the cluster's, then the node's (strategic merge: maps merge, the rest replaces).
    let node_patches = h
        .talos
        .as_ref()
        .map(|t| t.patches.as_slice())
        .unwrap_or(&[]);
    for p in c.patches.iter().chain(node_patches) {
        let p: Value = serde_yaml_ng::to_value(p)
            .with_context(|| format!("converting a Talos patch of {}", h.name))?;
        merge_patch(&mut v1, p);
    }
    let mut docs = vec![v1];
    docs.extend(network_docs(spec, c, h, cp)?);
    let head = header(
        spec,
        h,
        c,
        &format!(
            "Talos {} machine config of {} ({} of cluster {}). Carries cluster secrets: never commit it.",
            c.talos_version,
            h.name,
            if cp { "control plane" } else { "worker" },
            c.name
        ),
    );
    join_docs(head, &docs)
}

fn render_talosconfig(spec: &Spec, c: &Cluster, b: &Bundle, admin: &AdminCert) -> Result<Vec<u8>> {
    let endpoints: Vec<String> = c
        .control_planes
        .iter()
        .map(|n| cluster_addr(spec, c, n).map(|a| a.to_string()))
        .collect::<Result<_>>()?;
    let doc = m(vec![
        ("context", s(&c.name)),
        (
            "contexts",
            m(vec![(
                c.name.as_str(),
                m(vec![
                    ("endpoints", seq(&endpoints, s)),
                    ("ca", b64(&b.certs.os.crt)),
                    ("crt", b64(&admin.crt)),
                    ("key", b64(&admin.key)),
                ]),
            )]),
        ),
    ]);
    let head = format!(
        "# Generated by labforge — talosconfig for cluster {} (client certificate with role os:admin). Secret: never commit it.\n",
        c.name
    );
    join_docs(head, &[doc])
}

/// Strategic merge as `talosctl --config-patch` does for plain values: mappings merge key by key, any other
/// value (scalars, sequences) replaces what was there.
fn merge_patch(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Mapping(b), Value::Mapping(p)) => {
            for (k, v) in p {
                match b.get_mut(&k) {
                    Some(existing) => merge_patch(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, p) => *b = p,
    }
}
