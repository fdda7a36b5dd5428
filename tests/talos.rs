//! The Talos backend, judged by the Talos v1.13.9 config schema (one document at a time, dispatching on
//! `kind`), by `openssl` for the certificates, and by the Image Factory's own test vectors for schematic IDs.
mod common;

use common::{labforge, labforge_env, stderr, stdout};
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

// ---------------------------------------------------------------- helpers

fn ok(o: &Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        stdout(o),
        stderr(o)
    );
}

/// Run, assert success, keep the output (for the log canary).
fn run(dir: &Path, args: &[&str], log: &mut Vec<String>) -> Output {
    let o = labforge(dir, args);
    ok(&o, &format!("labforge {}", args.join(" ")));
    log.push(stdout(&o));
    log.push(stderr(&o));
    o
}

/// The example lab, with an identity, rendered.
fn rendered_lab(log: &mut Vec<String>) -> tempfile::TempDir {
    let t = common::example_lab();
    run(t.path(), &["secrets", "init"], log);
    run(t.path(), &["render"], log);
    t
}

fn rendered(dir: &Path, log: &mut Vec<String>) {
    run(dir, &["secrets", "init"], log);
    run(dir, &["render"], log);
}

/// Every YAML document of a file, as JSON values.
fn docs(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    docs_of(&text)
}

fn docs_of(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .collect()
}

/// Decrypt a store entry with the test identity (what the operator's identity would do).
fn store_get(root: &Path, name: &str) -> Vec<u8> {
    use std::io::Read;
    let id_text = std::fs::read_to_string(root.join(".test-identity.txt")).unwrap();
    let line = id_text
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap();
    let id: age::x25519::Identity = line.parse().unwrap();
    let data = std::fs::read(root.join(format!("secrets/{name}.age"))).unwrap();
    let dec = age::Decryptor::new_buffered(age::armor::ArmoredReader::new(&data[..])).unwrap();
    let mut r = dec
        .decrypt(std::iter::once(&id as &dyn age::Identity))
        .unwrap();
    let mut out = Vec::new();
    r.read_to_end(&mut out).unwrap();
    out
}

/// `path → value` for every leaf of a YAML mapping.
fn leaves(v: &Value, prefix: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(x, &p, out);
            }
        }
        Value::String(s) => out.push((prefix.to_string(), s.clone())),
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

fn yaml_leaves(bytes: &[u8]) -> Vec<(String, String)> {
    let v: Value = serde_yaml_ng::from_slice(bytes).unwrap();
    let mut out = Vec::new();
    leaves(&v, "", &mut out);
    out
}

/// Values of a cluster's bundle that are secret (everything but the public certificates).
fn bundle_secrets(root: &Path, cluster: &str) -> Vec<(String, String)> {
    yaml_leaves(&store_get(root, &format!("talos/{cluster}")))
        .into_iter()
        .filter(|(k, _)| !k.ends_with(".crt"))
        .collect()
}

fn b64d(v: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(v).unwrap()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn node_configs(root: &Path, cluster: &str) -> BTreeMap<String, Vec<Value>> {
    files_under(&root.join("out/talos").join(cluster))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| {
            (
                p.file_stem().unwrap().to_string_lossy().into_owned(),
                docs(&p),
            )
        })
        .collect()
}

fn kind(d: &Value) -> &str {
    d.get("kind").and_then(Value::as_str).unwrap_or("")
}

// ------------------------------------------------------- schema dispatch

/// The Talos schema, one validator per document kind (`$defs` entry), so errors name the document type.
struct TalosSchema {
    full: Value,
}

impl TalosSchema {
    fn load() -> TalosSchema {
        let text = std::fs::read_to_string(common::schema("talos-v1.13.9.schema.json")).unwrap();
        TalosSchema {
            full: serde_json::from_str(&text).unwrap(),
        }
    }

    /// The `$defs` entry a document is validated against: by `kind`, or `v1alpha1.Config` for the
    /// kind-less `version: v1alpha1` document.
    fn def_for(&self, doc: &Value) -> Result<String, String> {
        let defs = self.full["$defs"].as_object().unwrap();
        match doc.get("kind").and_then(Value::as_str) {
            None => match doc.get("version").and_then(Value::as_str) {
                Some("v1alpha1") => Ok("v1alpha1.Config".into()),
                other => Err(format!(
                    "document has no `kind` and `version` is {other:?}, not \"v1alpha1\""
                )),
            },
            Some(k) => {
                let hits: Vec<&String> = defs
                    .iter()
                    .filter(|(_, d)| {
                        d.pointer("/properties/kind/enum")
                            .and_then(Value::as_array)
                            .is_some_and(|e| e.iter().any(|x| x == k))
                    })
                    .map(|(n, _)| n)
                    .collect();
                match hits.as_slice() {
                    [one] => Ok((*one).clone()),
                    [] => Err(format!("`kind: {k}` is not a Talos v1.13 config document")),
                    many => Err(format!("`kind: {k}` matches several definitions: {many:?}")),
                }
            }
        }
    }

    /// Readable errors (`<Kind> <path>: <message>`) of one document.
    fn errors(&self, doc: &Value) -> Vec<String> {
        let def = match self.def_for(doc) {
            Ok(d) => d,
            Err(e) => return vec![e],
        };
        let schema = serde_json::json!({
            "$schema": self.full["$schema"],
            "$defs": self.full["$defs"],
            "$ref": format!("#/$defs/{def}"),
        });
        let v = common::validator_for(&schema);
        common::schema_errors(&v, doc)
            .into_iter()
            .map(|e| format!("{def} {e}"))
            .collect()
    }
}

// ------------------------------------------------------------------ tests

#[test]
fn every_document_of_every_node_config_validates_against_the_talos_schema() {
    let mut log = Vec::new();
    let t = rendered_lab(&mut log);
    let schema = TalosSchema::load();
    let configs = node_configs(t.path(), "domum");
    assert_eq!(
        configs.keys().cloned().collect::<Vec<_>>(),
        ["domum-cp1", "domum-cp2", "domum-cp3", "domum-w1"]
    );
    let mut kinds = BTreeSet::new();
    for (node, ds) in &configs {
        assert!(ds.len() >= 5, "{node}: only {} documents", ds.len());
        assert_eq!(
            ds[0]["version"], "v1alpha1",
            "{node}: the first document is the v1alpha1 config"
        );
        for (i, d) in ds.iter().enumerate() {
            let errs = schema.errors(d);
            assert!(
                errs.is_empty(),
                "{node} document {i} ({}):\n{}",
                kind(d),
                errs.join("\n")
            );
            kinds.insert(kind(d).to_string());
        }
        // Nothing of the removed machine.network (deprecated, absent from the schema) is emitted.
        assert!(ds[0]["machine"].get("network").is_none(), "{node}");
    }
    for k in [
        "",
        "HostnameConfig",
        "ResolverConfig",
        "LinkAliasConfig",
        "LinkConfig",
        "Layer2VIPConfig",
    ] {
        assert!(kinds.contains(k), "no {k:?} document rendered: {kinds:?}");
    }
}

#[test]
fn wrong_documents_fail_the_schema_with_readable_messages() {
    let schema = TalosSchema::load();
    let bad = docs_of(
        "version: v1alpha1\nmachine:\n  type: controlplane\n  network:\n    hostname: old-style\n---\n\
         apiVersion: v1alpha1\nkind: LinkConfig\nname: servers\naddresses:\n  - address: 10.60.0.91\n---\n\
         apiVersion: v1alpha1\nkind: Layer2VIPConfig\nlink: servers\n---\n\
         apiVersion: v1alpha1\nkind: NetworkInterfaceConfig\nname: eth0\n---\n\
         machine:\n  type: worker\n",
    );
    let errs: Vec<Vec<String>> = bad.iter().map(|d| schema.errors(d)).collect();
    let all = |i: usize| errs[i].join("\n");
    // machine.network is gone in v1.13: additionalProperties names it.
    assert!(
        all(0).contains("v1alpha1.MachineConfig") || all(0).contains("v1alpha1.Config"),
        "{}",
        all(0)
    );
    assert!(
        all(0).contains("/machine") && all(0).contains("network"),
        "{}",
        all(0)
    );
    // An address without its prefix length.
    assert!(
        all(1).contains("network.LinkConfigV1Alpha1")
            && all(1).contains("/addresses/0/address")
            && all(1).contains("10.60.0.91"),
        "{}",
        all(1)
    );
    // A VIP without its address.
    assert!(
        all(2).contains("Layer2VIPConfig") && all(2).contains("name"),
        "{}",
        all(2)
    );
    assert!(
        all(3).contains("not a Talos v1.13 config document"),
        "{}",
        all(3)
    );
    assert!(all(4).contains("no `kind`"), "{}", all(4));
    // And the good shape of each passes, so the failures above are about the defects only.
    let good = docs_of(
        "version: v1alpha1\nmachine:\n  type: controlplane\n---\n\
         apiVersion: v1alpha1\nkind: LinkConfig\nname: servers\naddresses:\n  - address: 10.60.0.91/24\n---\n\
         apiVersion: v1alpha1\nkind: Layer2VIPConfig\nname: 10.60.0.90\nlink: servers\n",
    );
    for d in &good {
        assert!(schema.errors(d).is_empty(), "{:?}", schema.errors(d));
    }
}

#[test]
fn control_planes_share_the_vip_without_losing_their_own_address() {
    let mut log = Vec::new();
    let t = rendered_lab(&mut log);
    let configs = node_configs(t.path(), "domum");
    let want_addr = |n: &str| match n {
        "domum-cp1" => "10.60.0.91/24",
        "domum-cp2" => "10.60.0.92/24",
        "domum-cp3" => "10.60.0.93/24",
        _ => "10.60.0.94/24",
    };
    for (node, ds) in &configs {
        let cp = node.contains("-cp");
        assert_eq!(
            ds[0]["machine"]["type"],
            if cp { "controlplane" } else { "worker" }
        );
        assert_eq!(
            ds[0]["cluster"]["controlPlane"]["endpoint"], "https://10.60.0.90:6443",
            "{node}"
        );
        let vips: Vec<&Value> = ds.iter().filter(|d| kind(d) == "Layer2VIPConfig").collect();
        if !cp {
            assert!(vips.is_empty(), "worker {node} must not claim the VIP");
            continue;
        }
        assert_eq!(vips.len(), 1, "{node}");
        assert_eq!(vips[0]["name"], "10.60.0.90", "{node}");
        // The VIP's link is a configured link that still carries the node's own address.
        let link = vips[0]["link"].as_str().unwrap();
        let lc = ds
            .iter()
            .find(|d| kind(d) == "LinkConfig" && d["name"] == link)
            .unwrap_or_else(|| panic!("{node}: VIP on unconfigured link {link}"));
        let addrs: Vec<&str> = lc["addresses"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["address"].as_str().unwrap())
            .collect();
        assert_eq!(addrs, [want_addr(node)], "{node}");
        // The link is bound to the NIC by its MAC.
        let alias = ds
            .iter()
            .find(|d| kind(d) == "LinkAliasConfig" && d["name"] == link)
            .unwrap();
        assert!(alias["selector"]["match"]
            .as_str()
            .unwrap()
            .starts_with("mac(link.permanent_addr) == "));
        let sans: Vec<&str> = ds[0]["cluster"]["apiServer"]["certSANs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            sans,
            ["10.60.0.90", "10.60.0.91", "10.60.0.92", "10.60.0.93"]
        );
    }
    // Never two documents for the same link (or any kind/name pair) in one config.
    for (node, ds) in &configs {
        let mut seen = BTreeSet::new();
        for d in &ds[1..] {
            let key = (
                kind(d).to_string(),
                d.get("name").map(|n| n.to_string()).unwrap_or_default(),
            );
            assert!(seen.insert(key.clone()), "{node}: duplicate {key:?}");
        }
    }
}

#[test]
fn vlan_and_dhcp_links_are_emitted_once_each() {
    let mut log = Vec::new();
    let t = tempfile::tempdir().unwrap();
    common::copy_dir(
        &common::repo().join("tests/golden/talos-baremetal-worker/in"),
        t.path(),
    );
    rendered(t.path(), &mut log);
    let ds = docs(&t.path().join("out/talos/domum/domum-w1.yaml"));
    let schema = TalosSchema::load();
    for d in &ds {
        assert!(schema.errors(d).is_empty(), "{:?}", schema.errors(d));
    }
    let of = |k: &str| -> Vec<&Value> { ds.iter().filter(|d| kind(d) == k).collect() };
    let vlans = of("VLANConfig");
    assert_eq!(vlans.len(), 1);
    assert_eq!(vlans[0]["vlanID"], 50);
    // The VLAN's parent is the aliased NIC, which keeps its own address and the default route.
    let parent = vlans[0]["parent"].as_str().unwrap();
    let lc = of("LinkConfig")
        .into_iter()
        .find(|d| d["name"] == parent)
        .unwrap();
    assert_eq!(lc["addresses"][0]["address"], "10.60.0.94/24");
    assert_eq!(lc["routes"][0]["gateway"], "10.60.0.1");
    assert_eq!(vlans[0]["addresses"][0]["address"], "10.50.0.94/24");
    let dhcp = of("DHCPv4Config");
    assert_eq!(dhcp.len(), 1);
    assert_eq!(dhcp[0]["name"], "eno2");
}

#[test]
fn secrets_are_shared_within_a_cluster_differ_between_clusters_and_persist() {
    let mut log = Vec::new();
    let t = common::example_lab();
    // A second cluster in the same spec.
    std::fs::write(
        t.path().join("hosts/lab2.toml"),
        r#"
[clusters.lab2]
talos_version = "v1.13.9"
kubernetes_version = "1.34.1"
endpoint_vip = "10.60.0.100"
network = "servers"
control_planes = ["lab2-cp1", "lab2-cp2", "lab2-cp3"]

[hosts.lab2-cp1]
os = "talos"
arch = "x86_64"
board = "vm"
role = "control-plane"
[hosts.lab2-cp1.interfaces.ens18]
network = "servers"
address = "10.60.0.101"
[hosts.lab2-cp1.talos]
install_disk = "/dev/sda"

[hosts.lab2-cp2]
os = "talos"
arch = "x86_64"
board = "vm"
role = "control-plane"
[hosts.lab2-cp2.interfaces.ens18]
network = "servers"
address = "10.60.0.102"
[hosts.lab2-cp2.talos]
install_disk = "/dev/sda"

[hosts.lab2-cp3]
os = "talos"
arch = "x86_64"
board = "vm"
role = "control-plane"
[hosts.lab2-cp3.interfaces.ens18]
network = "servers"
address = "10.60.0.103"
[hosts.lab2-cp3.talos]
install_disk = "/dev/sda"
"#,
    )
    .unwrap();
    rendered(t.path(), &mut log);
    let pick = |ds: &Vec<Value>| {
        let c = &ds[0]["cluster"];
        (
            c["id"].clone(),
            c["secret"].clone(),
            c["token"].clone(),
            c["ca"]["crt"].clone(),
            ds[0]["machine"]["token"].clone(),
            ds[0]["machine"]["ca"]["crt"].clone(),
        )
    };
    let domum = node_configs(t.path(), "domum");
    let lab2 = node_configs(t.path(), "lab2");
    assert_eq!(lab2.len(), 3);
    let d0 = pick(&domum["domum-cp1"]);
    for ds in domum.values() {
        assert_eq!(
            pick(ds),
            d0,
            "every domum node carries the same cluster secrets"
        );
    }
    let l0 = pick(&lab2["lab2-cp1"]);
    for ds in lab2.values() {
        assert_eq!(pick(ds), l0);
    }
    for (a, b) in [
        (&d0.0, &l0.0),
        (&d0.1, &l0.1),
        (&d0.2, &l0.2),
        (&d0.3, &l0.3),
        (&d0.4, &l0.4),
        (&d0.5, &l0.5),
    ] {
        assert_ne!(a, b, "two clusters must not share a secret");
    }
    // The configs carry exactly the stored bundle.
    let bundle: Value = serde_yaml_ng::from_slice(&store_get(t.path(), "talos/domum")).unwrap();
    assert_eq!(d0.1, bundle["cluster"]["secret"]);
    assert_eq!(d0.2, bundle["secrets"]["bootstraptoken"]);
    let tok = bundle["secrets"]["bootstraptoken"].as_str().unwrap();
    let (a, b) = tok.split_once('.').unwrap();
    assert!(a.len() == 6 && b.len() == 16);
    assert!(tok
        .bytes()
        .all(|c| c == b'.' || c.is_ascii_digit() || c.is_ascii_lowercase()));
    assert_eq!(
        b64d(
            bundle["secrets"]["secretboxencryptionsecret"]
                .as_str()
                .unwrap()
        )
        .len(),
        32
    );
    // Re-rendering reuses the stored secrets: every file, secret or not, is byte-identical.
    let before: Vec<(PathBuf, Vec<u8>)> = files_under(&t.path().join("out"))
        .into_iter()
        .chain(files_under(&t.path().join("talos")))
        .map(|p| {
            let b = std::fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    let o = run(t.path(), &["render"], &mut log);
    for (p, b) in &before {
        assert_eq!(
            &std::fs::read(p).unwrap(),
            b,
            "{} changed on re-render",
            p.display()
        );
    }
    assert!(stdout(&o).contains("0 written"), "{}", stdout(&o));
}

#[test]
fn no_secret_value_reaches_committed_files_plan_json_or_logs() {
    let mut log = Vec::new();
    let t = rendered_lab(&mut log);
    let root = t.path();
    run(root, &["render", "--check"], &mut log);
    let plan = run(root, &["plan", "--json"], &mut log);
    run(root, &["plan"], &mut log);
    run(root, &["render", "-v"], &mut log);
    let plan_json = stdout(&plan);

    let mut canaries: Vec<(String, String)> = bundle_secrets(root, "domum");
    canaries.extend(
        yaml_leaves(&store_get(root, "talos-admin/domum"))
            .into_iter()
            .filter(|(k, _)| k == "key")
            .map(|(k, v)| (format!("talosconfig.{k}"), v)),
    );
    // Also a line of each decoded PEM key, in case anything ever prints the PEM itself.
    let mut pem_lines = Vec::new();
    for (k, v) in &canaries {
        if k.ends_with("key") {
            let pem = String::from_utf8(b64d(v)).unwrap();
            let line = pem.lines().nth(1).unwrap().to_string();
            pem_lines.push((format!("{k} (PEM)"), line));
        }
    }
    canaries.extend(pem_lines);
    assert!(canaries.len() >= 12, "{}", canaries.len());

    // The canaries are real: the secret outputs do carry them.
    let secret_text: String = files_under(&root.join("out/talos/domum"))
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    for (k, v) in &canaries {
        if !k.ends_with("(PEM)") && k != "cluster.id" {
            assert!(secret_text.contains(v.as_str()), "canary {k} not in out/");
        }
    }

    let committed: Vec<PathBuf> = files_under(root)
        .into_iter()
        .filter(|p| {
            let rel = p.strip_prefix(root).unwrap();
            !(rel.starts_with("out") || rel.starts_with("secrets"))
                && rel != Path::new(".test-identity.txt")
        })
        .collect();
    assert!(committed
        .iter()
        .any(|p| p.to_string_lossy().contains("talos/domum/schematics")));
    for (k, v) in &canaries {
        for p in &committed {
            let text = String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned();
            assert!(
                !text.contains(v.as_str()),
                "{k} leaked into {}",
                p.display()
            );
        }
        assert!(
            !plan_json.contains(v.as_str()),
            "{k} leaked into plan --json"
        );
        for l in &log {
            assert!(!l.contains(v.as_str()), "{k} leaked into the output");
        }
    }
    // The secret files are 0600 and listed as sensitive in the plan.
    use std::os::unix::fs::PermissionsExt;
    for p in files_under(&root.join("out/talos")) {
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", p.display());
    }
    let plan: Value = serde_json::from_str(&plan_json).unwrap();
    let arts = plan["clusters"][0]["artifacts"].as_array().unwrap();
    for a in arts {
        let path = a["path"].as_str().unwrap();
        assert_eq!(
            a["sensitive"].as_bool().unwrap(),
            path.starts_with("out/"),
            "{path}"
        );
    }
}

/// Strip the comment header: what is left is the schematic body the factory hashes.
fn schematic_body(text: &str) -> String {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn header_id(text: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix("# schematic id: "))
        .unwrap()
        .to_string()
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

#[test]
fn schematic_ids_are_stable_and_follow_extension_changes() {
    let mut log = Vec::new();
    let t = rendered_lab(&mut log);
    let root = t.path();
    let read = |n: &str| {
        std::fs::read_to_string(root.join(format!("talos/domum/schematics/{n}.yaml"))).unwrap()
    };
    let cp1 = read("domum-cp1");
    let w1 = read("domum-w1");
    // The ID is the sha256 of the body (the factory's canonical yaml.v3 form).
    for text in [&cp1, &w1] {
        assert_eq!(sha256_hex(&schematic_body(text)), header_id(text));
    }
    assert_eq!(
        schematic_body(&cp1),
        "overlay:\n    image: siderolabs/sbc-raspberrypi\n    name: rpi_generic\ncustomization:\n    systemExtensions:\n        officialExtensions:\n            - siderolabs/iscsi-tools\n            - siderolabs/util-linux-tools\n"
    );
    // Both Pis have the same schematic, so the same ID; the installer in the config uses it.
    assert_eq!(header_id(&cp1), header_id(&read("domum-cp2")));
    let cfg = docs(&root.join("out/talos/domum/domum-cp1.yaml"));
    assert_eq!(
        cfg[0]["machine"]["install"]["image"],
        format!("factory.talos.dev/installer/{}:v1.13.9", header_id(&cp1))
    );
    assert_eq!(cfg[0]["machine"]["install"]["disk"], "/dev/mmcblk0");
    // The plan carries the same IDs and URLs for the image step.
    let plan: Value = serde_json::from_str(&stdout(&run(
        root,
        &["plan", "--json", "domum-w1"],
        &mut log,
    )))
    .unwrap();
    let img = &plan["hosts"][0]["image"];
    assert_eq!(img["schematic_id"], header_id(&w1));
    assert_eq!(
        img["disk_image"],
        format!(
            "https://factory.talos.dev/image/{}/v1.13.9/metal-amd64.raw.xz",
            header_id(&w1)
        )
    );

    // Stable: a second render changes nothing and --check is clean.
    run(root, &["render"], &mut log);
    assert_eq!(read("domum-cp1"), cp1);
    assert_eq!(read("domum-w1"), w1);
    run(root, &["render", "--check"], &mut log);

    // Change one node extension: only that node's ID moves, and --check reports the drift.
    let spec = root.join("hosts/domum.toml");
    let text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(
        &spec,
        text.replace("\"siderolabs/i915\"", "\"siderolabs/amd-ucode\""),
    )
    .unwrap();
    let o = labforge(root, &["render", "--check"]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o).contains("talos/domum/schematics/domum-w1.yaml"));
    assert!(!stdout(&o).contains("domum-cp1.yaml"));
    run(root, &["render"], &mut log);
    let w1b = read("domum-w1");
    assert_ne!(header_id(&w1b), header_id(&w1));
    assert_eq!(sha256_hex(&schematic_body(&w1b)), header_id(&w1b));
    assert_eq!(read("domum-cp1"), cp1);
    // A cluster-wide extension change moves every node's ID.
    let text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(
        &spec,
        text.replace(
            "\"siderolabs/util-linux-tools\"",
            "\"siderolabs/nut-client\"",
        ),
    )
    .unwrap();
    run(root, &["render"], &mut log);
    assert_ne!(header_id(&read("domum-cp1")), header_id(&cp1));
}

fn openssl(args: &[&str], stdin: Option<&[u8]>) -> Output {
    use std::io::Write;
    let mut c = Command::new(common::oracle("openssl"));
    c.args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    if let Some(b) = stdin {
        child.stdin.take().unwrap().write_all(b).unwrap();
    }
    drop(child.stdin.take());
    child.wait_with_output().unwrap()
}

/// Talos' own PEM labels (`ED25519 PRIVATE KEY`) are not OpenSSL's; relabel PKCS#8 bodies.
fn openssl_pem(pem: &str) -> String {
    pem.replace("ED25519 PRIVATE KEY", "PRIVATE KEY")
}

#[test]
fn certificates_are_x509_and_the_talosconfig_client_is_signed_by_the_os_ca() {
    let mut log = Vec::new();
    let t = rendered_lab(&mut log);
    let root = t.path();
    let bundle: Value = serde_yaml_ng::from_slice(&store_get(root, "talos/domum")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, b64: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, openssl_pem(&String::from_utf8(b64d(b64)).unwrap())).unwrap();
        p
    };
    for (name, subject, alg) in [
        ("os", "O = talos", "ED25519"),
        ("etcd", "O = etcd", "prime256v1"),
        ("k8s", "O = kubernetes", "prime256v1"),
        ("k8saggregator", "CN = front-proxy", "prime256v1"),
    ] {
        let c = &bundle["certs"][name];
        let crt = write(&format!("{name}.crt"), c["crt"].as_str().unwrap());
        let key = write(&format!("{name}.key"), c["key"].as_str().unwrap());
        let o = openssl(
            &["x509", "-in", crt.to_str().unwrap(), "-noout", "-text"],
            None,
        );
        ok(&o, &format!("openssl x509 {name}"));
        let text = stdout(&o);
        assert!(
            text.contains(&format!("Subject: {subject}")),
            "{name}: {text}"
        );
        assert!(text.contains("CA:TRUE"), "{name}");
        assert!(text.contains("Certificate Sign"), "{name}");
        assert!(text.contains(alg), "{name}: want {alg}\n{text}");
        // The key is the certificate's key.
        let a = openssl(
            &["x509", "-in", crt.to_str().unwrap(), "-noout", "-pubkey"],
            None,
        );
        let b = openssl(&["pkey", "-in", key.to_str().unwrap(), "-pubout"], None);
        ok(&b, &format!("openssl pkey {name}"));
        assert_eq!(
            stdout(&a),
            stdout(&b),
            "{name}: key does not match certificate"
        );
        // Self-signed CA: verifies against itself.
        let v = openssl(
            &[
                "verify",
                "-CAfile",
                crt.to_str().unwrap(),
                crt.to_str().unwrap(),
            ],
            None,
        );
        ok(&v, &format!("openssl verify {name}"));
    }
    let sa = write(
        "sa.key",
        bundle["certs"]["k8sserviceaccount"]["key"]
            .as_str()
            .unwrap(),
    );
    let o = openssl(
        &[
            "rsa",
            "-in",
            sa.to_str().unwrap(),
            "-check",
            "-noout",
            "-text",
        ],
        None,
    );
    ok(&o, "openssl rsa -check");
    assert!(stdout(&o).contains("4096 bit"), "{}", stdout(&o));

    // talosconfig: endpoints are the control planes; its client certificate is os:admin from the OS CA.
    let tc: Value = serde_yaml_ng::from_slice(
        &std::fs::read(root.join("out/talos/domum/talosconfig")).unwrap(),
    )
    .unwrap();
    assert_eq!(tc["context"], "domum");
    let ctx = &tc["contexts"]["domum"];
    assert_eq!(
        ctx["endpoints"],
        serde_json::json!(["10.60.0.91", "10.60.0.92", "10.60.0.93"])
    );
    assert_eq!(ctx["ca"], bundle["certs"]["os"]["crt"]);
    let client = write("client.crt", ctx["crt"].as_str().unwrap());
    let ckey = write("client.key", ctx["key"].as_str().unwrap());
    let os = dir.path().join("os.crt");
    let v = openssl(
        &[
            "verify",
            "-CAfile",
            os.to_str().unwrap(),
            client.to_str().unwrap(),
        ],
        None,
    );
    ok(&v, "openssl verify client against the OS CA");
    let text = stdout(&openssl(
        &["x509", "-in", client.to_str().unwrap(), "-noout", "-text"],
        None,
    ));
    assert!(text.contains("Subject: O = os:admin"), "{text}");
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    let a = openssl(
        &["x509", "-in", client.to_str().unwrap(), "-noout", "-pubkey"],
        None,
    );
    let b = openssl(&["pkey", "-in", ckey.to_str().unwrap(), "-pubout"], None);
    assert_eq!(stdout(&a), stdout(&b));
    // The oracle can fail: the same client certificate does not verify against another CA.
    let k8s = dir.path().join("k8s.crt");
    let v = openssl(
        &[
            "verify",
            "-CAfile",
            k8s.to_str().unwrap(),
            client.to_str().unwrap(),
        ],
        None,
    );
    assert!(
        !v.status.success(),
        "client cert must not verify against the Kubernetes CA"
    );
    // Workers get the OS and Kubernetes CA certificates but never their keys.
    let w1 = docs(&root.join("out/talos/domum/domum-w1.yaml"));
    assert_eq!(w1[0]["machine"]["ca"]["key"], "");
    assert_eq!(w1[0]["cluster"]["ca"]["key"], "");
    assert!(w1[0]["cluster"].get("serviceAccount").is_none());
    assert!(w1[0]["cluster"].get("secretboxEncryptionSecret").is_none());
}

// ----------------------------------------------------------------- golden

/// Replace every random value (secrets, certificates) of the cluster by a stable placeholder.
fn masked(root: &Path, cluster: &str, text: &str) -> String {
    let mut vals = yaml_leaves(&store_get(root, &format!("talos/{cluster}")));
    vals.extend(
        yaml_leaves(&store_get(root, &format!("talos-admin/{cluster}")))
            .into_iter()
            .filter(|(k, _)| k == "crt" || k == "key")
            .map(|(k, v)| (format!("talosconfig.{k}"), v)),
    );
    // Longest first, so no value is masked inside another.
    vals.sort_by_key(|(_, v)| std::cmp::Reverse(v.len()));
    let mut out = text.to_string();
    for (k, v) in vals {
        if v.len() >= 16 {
            out = out.replace(&v, &format!("<{k}>"));
        }
    }
    out
}

fn golden(name: &str, node: &str) {
    let g = common::repo().join("tests/golden").join(name);
    let t = tempfile::tempdir().unwrap();
    common::copy_dir(&g.join("in"), t.path());
    let mut log = Vec::new();
    rendered(t.path(), &mut log);
    let files = [
        format!("out/talos/domum/{node}.yaml"),
        format!("talos/domum/schematics/{node}.yaml"),
        "out/talos/domum/talosconfig".to_string(),
    ];
    let bless = std::env::var_os("LABFORGE_BLESS").is_some();
    let schema = TalosSchema::load();
    for f in &files {
        let got = masked(
            t.path(),
            "domum",
            &std::fs::read_to_string(t.path().join(f)).unwrap(),
        );
        assert!(!got.contains("PRIVATE KEY"), "{f} is not fully masked");
        if f.ends_with(&format!("{node}.yaml")) && f.starts_with("out/") {
            for d in docs_of(&got) {
                assert!(schema.errors(&d).is_empty(), "{:?}", schema.errors(&d));
            }
        }
        let want_path = g.join("out").join(f);
        if bless {
            std::fs::create_dir_all(want_path.parent().unwrap()).unwrap();
            std::fs::write(&want_path, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&want_path).unwrap_or_else(|_| {
            panic!(
                "missing {} (run with LABFORGE_BLESS=1)",
                want_path.display()
            )
        });
        assert_eq!(
            got,
            want,
            "{f} differs from {} (LABFORGE_BLESS=1 rewrites)",
            want_path.display()
        );
    }
}

#[test]
fn golden_raspberry_pi_control_plane() {
    golden("talos-pi-controlplane", "domum-cp1");
}

#[test]
fn golden_baremetal_worker() {
    golden("talos-baremetal-worker", "domum-w1");
}

#[test]
fn dhcp_workers_render_but_a_control_plane_needs_a_static_address() {
    let t = common::example_lab();
    let spec = t.path().join("hosts/domum.toml");
    let text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(
        &spec,
        text.replacen("address = \"10.60.0.94\"", "dhcp = true", 1),
    )
    .unwrap();
    ok(&labforge(t.path(), &["secrets", "init"]), "secrets init");
    ok(
        &labforge(t.path(), &["render"]),
        "render with a DHCP worker",
    );
    let ds = docs(&t.path().join("out/talos/domum/domum-w1.yaml"));
    let lc: Vec<&Value> = ds.iter().filter(|d| kind(d) == "LinkConfig").collect();
    assert_eq!(lc.len(), 1);
    assert!(lc[0].get("addresses").is_none());
    let dhcp: Vec<&Value> = ds.iter().filter(|d| kind(d) == "DHCPv4Config").collect();
    assert_eq!(dhcp.len(), 1);
    assert_eq!(dhcp[0]["name"], lc[0]["name"]);
    let schema = TalosSchema::load();
    for d in &ds {
        assert!(schema.errors(d).is_empty(), "{:?}", schema.errors(d));
    }

    std::fs::write(
        &spec,
        text.replacen("address = \"10.60.0.91\"", "dhcp = true", 1),
    )
    .unwrap();
    let o = labforge_env(t.path(), &["render"], &[]);
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains("domum-cp1") && err.contains("static address"),
        "{err}"
    );
}

#[test]
fn spec_patches_apply_last_cluster_first_then_node_and_stay_schema_valid() {
    let mut log = Vec::new();
    let t = common::example_lab();
    // A cluster-wide patch on top of the example lab's node patch (Longhorn's kubelet mount on domum-w1).
    let f = t.path().join("hosts/domum.toml");
    let text = std::fs::read_to_string(&f).unwrap().replace(
        "extensions = [\"siderolabs/iscsi-tools\", \"siderolabs/util-linux-tools\"]\n",
        "extensions = [\"siderolabs/iscsi-tools\", \"siderolabs/util-linux-tools\"]\npatches = [{ machine = { sysctls = { \"vm.max_map_count\" = \"262144\" }, install = { wipe = true } } }]\n",
    );
    std::fs::write(&f, text).unwrap();
    rendered(t.path(), &mut log);
    let cfgs = node_configs(t.path(), "domum");
    for (node, docs) in &cfgs {
        let v1 = &docs[0];
        assert_eq!(
            v1["machine"]["sysctls"]["vm.max_map_count"], "262144",
            "{node}: cluster patch"
        );
        assert_eq!(
            v1["machine"]["install"]["wipe"], true,
            "{node}: patched key"
        );
        // The merge keeps what labforge set beside the patched key.
        assert!(
            v1["machine"]["install"]["disk"]
                .as_str()
                .unwrap()
                .starts_with("/dev/"),
            "{node}: install.disk kept"
        );
        let mounts = &v1["machine"]["kubelet"]["extraMounts"];
        if node == "domum-w1" {
            assert_eq!(mounts[0]["destination"], "/var/lib/longhorn");
            assert_eq!(
                mounts[0]["options"],
                serde_json::json!(["bind", "rshared", "rw"])
            );
        } else {
            assert!(
                mounts.is_null(),
                "{node}: node patches apply to their node only"
            );
        }
    }
    let schema = TalosSchema::load();
    for (node, docs) in &cfgs {
        for d in docs {
            let errs = schema.errors(d);
            assert!(
                errs.is_empty(),
                "{node}: patched document fails the schema: {errs:?}"
            );
        }
    }
    // A patch that breaks the schema is caught by the same judge (e.g. a sysctl value that is not a string).
    let mut bad = cfgs["domum-w1"][0].clone();
    bad["machine"]["sysctls"]["vm.max_map_count"] = serde_json::json!(262144);
    assert!(
        !schema.errors(&bad).is_empty(),
        "a non-string sysctl must fail the schema"
    );
}
