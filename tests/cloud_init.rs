//! The cloud-init backend, judged by the tools that consume its output, for every ubuntu/debian host of the
//! example lab: Debian's `cloud-init schema` (user-data), the network-config v2 JSON schema, `sshd -t`
//! (the sshd drop-in) and `nft -c` (the nftables ruleset). Broken inputs are shown to fail each oracle.
mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const CLOUD_INIT_HOSTS: &[&str] = &["ceres", "forge", "iris", "platform", "prometheus", "vulcan"];

fn ok(o: &std::process::Output, what: &str) {
    assert!(
        o.status.success(),
        "{what} failed ({:?})\nstdout:\n{}\nstderr:\n{}",
        o.status,
        common::stdout(o),
        common::stderr(o)
    );
}

/// The example lab rendered into a temp dir (with its own age identity and store).
fn rendered_lab() -> tempfile::TempDir {
    let t = common::example_lab();
    ok(
        &common::labforge(t.path(), &["secrets", "init"]),
        "secrets init",
    );
    ok(&common::labforge(t.path(), &["render"]), "render");
    t
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

fn yaml(text: &str) -> serde_json::Value {
    serde_yaml_ng::from_str(text).unwrap_or_else(|e| panic!("not YAML: {e}\n{text}"))
}

fn cloud_init_schema(file: &Path) -> std::process::Output {
    Command::new(common::oracle("cloud-init"))
        .args(["schema", "--config-file"])
        .arg(file)
        .output()
        .expect("running cloud-init schema")
}

fn all_cloud_init_hosts_are_listed(root: &Path) {
    let mut found: Vec<String> = std::fs::read_dir(root.join("out/cloud-init"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    assert_eq!(found, CLOUD_INIT_HOSTS, "one seed per ubuntu/debian host");
}

#[test]
fn user_data_passes_cloud_init_schema_for_every_host() {
    let t = rendered_lab();
    all_cloud_init_hosts_are_listed(t.path());
    for h in CLOUD_INIT_HOSTS {
        let f = t.path().join(format!("out/cloud-init/{h}/user-data"));
        let text = read(&f);
        assert!(text.starts_with("#cloud-config\n"), "{h}: no #cloud-config");
        ok(&cloud_init_schema(&f), &format!("cloud-init schema of {h}"));
        let v = yaml(&text);
        assert_eq!(v["ssh_pwauth"], false, "{h}");
        assert_eq!(v["disable_root"], true, "{h}");
        assert_eq!(v["manage_etc_hosts"], true, "{h}");
        assert_eq!(v["locale"], "C.UTF-8", "{h}");
        assert_eq!(v["hostname"], *h);
        assert_eq!(v["ssh_deletekeys"], true);
        assert_eq!(v["ssh_genkeytypes"], serde_json::json!(["ed25519"]));
        let users = v["users"].as_array().unwrap();
        assert!(!users.is_empty());
        for u in users {
            assert_eq!(u["lock_passwd"], true);
            assert!(u["sudo"].as_str().unwrap().contains("ALL"));
            assert!(!u["ssh_authorized_keys"].as_array().unwrap().is_empty());
            assert_ne!(u["name"], "root");
        }
        // The host key pair is the store's: the public half matches the clear .pub beside the store.
        let public = read(&t.path().join(format!("secrets/ssh-host-keys/{h}.pub")));
        assert_eq!(v["ssh_keys"]["ed25519_public"], public.trim());
        assert!(v["ssh_keys"]["ed25519_private"]
            .as_str()
            .unwrap()
            .starts_with(BEGIN_KEY));
        assert_eq!(v["ssh_keys"].as_object().unwrap().len(), 2, "only ed25519");
        // The committed drop-in and ruleset are embedded byte for byte.
        let files = v["write_files"].as_array().unwrap();
        let content = |path: &str| {
            files
                .iter()
                .find(|f| f["path"] == path)
                .unwrap_or_else(|| panic!("{h}: no write_files entry {path}"))["content"]
                .as_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(
            content("/etc/ssh/sshd_config.d/10-labforge.conf"),
            read(
                &t.path()
                    .join(format!("rendered/{h}/sshd_config.d/10-labforge.conf"))
            )
        );
        assert_eq!(
            content("/etc/nftables.conf"),
            read(&t.path().join(format!("rendered/{h}/nftables.conf")))
        );
        let pk: Vec<&str> = v["packages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        // vulcan and ceres (Debian 12) run no stacks: no Docker.
        assert!(
            pk.contains(&"nftables")
                && (pk.contains(&"docker.io") != ["vulcan", "ceres"].contains(h)),
            "{h}: {pk:?}"
        );
        // Sensitive: mode 0600.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for f in ["user-data", "meta-data", "network-config"] {
                let m = std::fs::metadata(t.path().join(format!("out/cloud-init/{h}/{f}")))
                    .unwrap()
                    .permissions()
                    .mode();
                assert_eq!(m & 0o777, 0o600, "{h}/{f}");
            }
        }
    }
}

#[test]
fn prometheus_user_data_carries_seed_000() {
    let t = rendered_lab();
    let v = yaml(&read(&t.path().join("out/cloud-init/prometheus/user-data")));
    let pk: Vec<&str> = v["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    // Seed 000 "Baseline Packages".
    for p in [
        "qemu-kvm",
        "libvirt-daemon-system",
        "libvirt-clients",
        "bridge-utils",
        "virt-manager",
        "nfs-common",
        "cifs-utils",
        "htop",
        "tmux",
        "curl",
        "git",
    ] {
        assert!(pk.contains(&p), "missing {p}: {pk:?}");
    }
    // NFS from Atlas over the storage network, scratch disk formatted only if empty.
    let mounts = v["mounts"].as_array().unwrap();
    let nfs: Vec<&serde_json::Value> = mounts.iter().filter(|m| m[2] == "nfs").collect();
    assert_eq!(nfs.len(), 2);
    assert_eq!(nfs[0][0], "10.50.0.20:/export/vms");
    assert_eq!(nfs[0][1], "/var/lib/libvirt/images");
    assert!(nfs[0][3].as_str().unwrap().contains("_netdev"));
    assert!(mounts
        .iter()
        .any(|m| m[1] == "/scratch" && m[0] == "LABEL=scratch"));
    assert_eq!(v["fs_setup"][0]["overwrite"], false);
    assert_eq!(
        v["fs_setup"][0]["device"],
        "/dev/disk/by-id/nvme-Samsung_SSD_980_PRO_2TB_S6B0NL0T000002"
    );
    // The portainer agent needs no secret: it starts from the seed; its files are in place.
    let runcmd = serde_json::to_string(&v["runcmd"]).unwrap();
    assert!(
        runcmd.contains("/opt/labforge/stacks/portainer-agent"),
        "{runcmd}"
    );
    // nfs-common's rpcbind would listen on 0.0.0.0:111; both mounts are NFSv4, so it is masked early at
    // every boot, before the packages module installs nfs-common.
    assert_eq!(
        v["bootcmd"],
        serde_json::json!([[
            "systemctl",
            "mask",
            "--now",
            "rpcbind.socket",
            "rpcbind.service"
        ]])
    );
    assert!(!runcmd.contains("rpcbind"), "{runcmd}");
}

#[test]
fn rpcbind_stays_when_an_nfs_mount_may_negotiate_v3() {
    let t = common::example_lab();
    let p = t.path().join("hosts/prometheus.toml");
    let text = read(&p);
    let edited = text.replace(r#"options = ["nfsvers=4.2", "ro"]"#, r#"options = ["ro"]"#);
    assert_ne!(edited, text, "the example lab changed: adjust this test");
    std::fs::write(&p, edited).unwrap();
    ok(
        &common::labforge(t.path(), &["secrets", "init"]),
        "secrets init",
    );
    ok(&common::labforge(t.path(), &["render"]), "render");
    let ud = t.path().join("out/cloud-init/prometheus/user-data");
    let v = yaml(&read(&ud));
    assert!(v.get("bootcmd").is_none(), "{v}");
    ok(&cloud_init_schema(&ud), "cloud-init schema");
}

#[test]
fn broken_user_data_fails_cloud_init_schema() {
    let t = rendered_lab();
    let good = read(&t.path().join("out/cloud-init/prometheus/user-data"));
    for (what, from, to) in [
        (
            "ssh_pwauth not a boolean",
            "ssh_pwauth: false",
            "ssh_pwauth: 5",
        ),
        (
            "no host key types",
            "ssh_genkeytypes:\n- ed25519",
            "ssh_genkeytypes: []",
        ),
        (
            "users not a list",
            "users:\n- name: ops",
            "users: 5\nx:\n- name: ops",
        ),
    ] {
        assert!(good.contains(from), "{what}: `{from}` not in user-data");
        let bad = good.replacen(from, to, 1);
        let f = t.path().join("broken-user-data");
        std::fs::write(&f, bad).unwrap();
        let o = cloud_init_schema(&f);
        assert!(
            !o.status.success(),
            "{what}: cloud-init schema accepted it\n{}",
            common::stdout(&o)
        );
    }
}

#[test]
fn network_config_validates_against_v2_schema() {
    let t = rendered_lab();
    let v2 = common::validator("schema-network-config-v2.json");
    for h in CLOUD_INIT_HOSTS {
        let text = read(&t.path().join(format!("out/cloud-init/{h}/network-config")));
        let doc = yaml(&text);
        let errs = common::schema_errors(&v2, &doc);
        assert!(errs.is_empty(), "{h}: {errs:#?}\n{text}");
        let net = &doc["network"];
        assert_eq!(net["version"], 2);
        // Every NIC matched by MAC with set-name; static addresses, exactly one default route.
        let mut defaults = 0;
        for (name, e) in net["ethernets"].as_object().unwrap() {
            assert!(e["match"]["macaddress"].is_string(), "{h}/{name}");
            assert_eq!(e["set-name"], name.as_str());
            assert_eq!(
                e["dhcp4"], false,
                "{h}/{name}: the spec gives static addresses"
            );
            defaults += e["routes"].as_array().map(|r| r.len()).unwrap_or(0);
        }
        if let Some(vl) = net["vlans"].as_object() {
            for (name, e) in vl {
                assert!(e["id"].is_u64() && e["link"].is_string(), "{h}/{name}");
                defaults += e["routes"].as_array().map(|r| r.len()).unwrap_or(0);
            }
        }
        assert_eq!(defaults, 1, "{h}: one default route");
    }
    // Iris carries SERVERS as a tagged VLAN on its one NIC; its default route is the servers gateway.
    let iris = yaml(&read(&t.path().join("out/cloud-init/iris/network-config")));
    let vl = &iris["network"]["vlans"]["servers"];
    assert_eq!(vl["id"], 60);
    assert_eq!(vl["link"], "eth0");
    assert_eq!(vl["addresses"], serde_json::json!(["10.60.0.53/24"]));
    assert_eq!(vl["routes"][0]["via"], "10.60.0.1");
    let p = yaml(&read(
        &t.path().join("out/cloud-init/prometheus/network-config"),
    ));
    assert_eq!(
        p["network"]["ethernets"]["nic1"]["match"]["macaddress"],
        "3c:ec:ef:60:00:10"
    );
    assert_eq!(
        p["network"]["ethernets"]["nic3"]["addresses"],
        serde_json::json!(["10.50.0.10/24"])
    );
}

#[test]
fn broken_network_config_fails_the_schema() {
    let t = rendered_lab();
    let v2 = common::validator("schema-network-config-v2.json");
    let good = yaml(&read(
        &t.path().join("out/cloud-init/prometheus/network-config"),
    ));
    let mut bad_version = good.clone();
    bad_version["network"]["version"] = serde_json::json!(3);
    let mut bad_dhcp = good.clone();
    bad_dhcp["network"]["ethernets"]["nic1"]["dhcp4"] = serde_json::json!("maybe");
    let mut bad_key = good.clone();
    bad_key["network"]["wifis-typo"] = serde_json::json!({});
    let mut bad_route = good.clone();
    bad_route["network"]["ethernets"]["nic1"]["routes"][0]["gateway"] = serde_json::json!("x");
    for (what, doc) in [
        ("version 3", bad_version),
        ("dhcp4 maybe", bad_dhcp),
        ("unknown key", bad_key),
        ("unknown route key", bad_route),
    ] {
        assert!(
            !common::schema_errors(&v2, &doc).is_empty(),
            "{what} was accepted"
        );
    }
}

/// `sshd -t` on a config that includes the drop-in (its HostKey pointed at a throwaway key).
fn sshd_test(dir: &Path, dropin: &str) -> std::process::Output {
    std::fs::create_dir_all("/run/sshd").ok();
    let key = dir.join("hostkey");
    if !key.exists() {
        ok(
            &Command::new(common::oracle("ssh-keygen"))
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&key)
                .output()
                .unwrap(),
            "ssh-keygen",
        );
    }
    let d = dir.join("dropin.conf");
    std::fs::write(
        &d,
        dropin.replace(
            "HostKey /etc/ssh/ssh_host_ed25519_key",
            &format!("HostKey {}", key.display()),
        ),
    )
    .unwrap();
    let main = dir.join("sshd_config");
    std::fs::write(&main, format!("Include {}\n", d.display())).unwrap();
    Command::new(common::oracle("sshd"))
        .arg("-t")
        .arg("-f")
        .arg(&main)
        .output()
        .unwrap()
}

#[test]
fn sshd_dropin_passes_sshd_t_and_is_hardened() {
    let t = rendered_lab();
    let mgmt: BTreeMap<&str, &str> = [
        ("ceres", "10.99.0.71"),
        ("forge", "10.99.0.40"),
        ("iris", "10.99.0.53"),
        ("platform", "10.99.0.30"),
        ("prometheus", "10.99.0.10"),
        ("vulcan", "10.99.0.70"),
    ]
    .into_iter()
    .collect();
    for h in CLOUD_INIT_HOSTS {
        let text = read(
            &t.path()
                .join(format!("rendered/{h}/sshd_config.d/10-labforge.conf")),
        );
        ok(&sshd_test(t.path(), &text), &format!("sshd -t for {h}"));
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        let listen: Vec<&&str> = lines
            .iter()
            .filter(|l| l.starts_with("ListenAddress"))
            .collect();
        assert_eq!(
            listen,
            vec![&format!("ListenAddress {}", mgmt[h]).as_str()],
            "{h}"
        );
        for want in [
            "PermitRootLogin no",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "AllowUsers ops",
            "HostKeyAlgorithms ssh-ed25519",
        ] {
            assert!(lines.contains(&want), "{h}: missing `{want}`");
        }
    }
    let bad = read(
        &t.path()
            .join("rendered/prometheus/sshd_config.d/10-labforge.conf"),
    ) + "PermitRootLogin sometimes-maybe\nNoSuchOption yes\n";
    assert!(
        !sshd_test(t.path(), &bad).status.success(),
        "sshd -t accepted a broken drop-in"
    );
}

fn nft_check(file: &Path) -> std::process::Output {
    Command::new(common::oracle("nft"))
        .args(["-c", "-f"])
        .arg(file)
        .output()
        .unwrap()
}

#[test]
fn nftables_ruleset_passes_nft_check_and_restricts_ssh_and_services() {
    let t = rendered_lab();
    for h in CLOUD_INIT_HOSTS {
        let f = t.path().join(format!("rendered/{h}/nftables.conf"));
        ok(&nft_check(&f), &format!("nft -c for {h}"));
        let text = read(&f);
        assert!(
            !text
                .lines()
                .any(|l| !l.trim_start().starts_with('#') && l.contains("flush")),
            "{h}: would wipe Docker's rules"
        );
        assert!(text.contains("policy drop;"), "{h}");
        let ssh: Vec<&str> = text
            .lines()
            .filter(|l| {
                l.contains("dport 22 ") && !l.contains("iifname \"br-") && !l.contains("docker0")
            })
            .collect();
        assert_eq!(ssh.len(), 1, "{h}: {ssh:?}");
    }
    // What these rules do is proven by packets in tests/lab_behavior.rs; here only their text.
    let p = read(&t.path().join("rendered/prometheus/nftables.conf"));
    assert!(p.contains(
        "iifname \"nic2\" ip daddr 10.99.0.10 ip saddr 10.99.0.0/24 tcp dport 22 accept"
    ));
    // Seed 002: the agent port only from the Platform VM, only on the SERVERS interface.
    assert!(p.contains(
        "iifname \"nic1\" ip daddr 10.60.0.10 ip saddr 10.60.0.30 tcp dport 9001 accept"
    ));
    assert!(p.contains("ct original proto-dst 9001 ip saddr 10.60.0.30 accept"));
    let iris = read(&t.path().join("rendered/iris/nftables.conf"));
    assert!(iris.contains("ip saddr 10.99.0.0/24 tcp dport 8081 accept"));
    assert!(iris.contains("iifname \"servers\" ip daddr 10.60.0.53 udp dport 53 accept"));

    let bad = t.path().join("broken.nft");
    std::fs::write(&bad, p.replace("policy drop;", "policy maybe;")).unwrap();
    assert!(
        !nft_check(&bad).status.success(),
        "nft -c accepted a broken ruleset"
    );
}

#[test]
fn meta_data_instance_id_is_stable_and_follows_the_spec() {
    let t = rendered_lab();
    let md = |h: &str| read(&t.path().join(format!("out/cloud-init/{h}/meta-data")));
    let before = md("prometheus");
    let v = yaml(&before);
    let iid = v["instance-id"].as_str().unwrap().to_string();
    assert!(iid.starts_with("iid-prometheus-") && iid.len() == "iid-prometheus-".len() + 12);
    assert_eq!(v["local-hostname"], "prometheus");
    let ids: std::collections::BTreeSet<String> = CLOUD_INIT_HOSTS
        .iter()
        .map(|h| yaml(&md(h))["instance-id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), CLOUD_INIT_HOSTS.len(), "instance ids are unique");
    // Re-render: byte-identical (same store key, no timestamps).
    let ud = read(&t.path().join("out/cloud-init/prometheus/user-data"));
    ok(&common::labforge(t.path(), &["render"]), "re-render");
    assert_eq!(md("prometheus"), before);
    assert_eq!(
        read(&t.path().join("out/cloud-init/prometheus/user-data")),
        ud
    );
    // A spec change for the host gives a new instance id.
    let f = t.path().join("hosts/prometheus.toml");
    let spec = read(&f).replace(
        "stacks = [\"portainer-agent\"]",
        "stacks = [\"portainer-agent\"]\npackages = [\"jq\"]",
    );
    std::fs::write(&f, spec).unwrap();
    ok(
        &common::labforge(t.path(), &["render"]),
        "render after change",
    );
    assert_ne!(
        yaml(&md("prometheus"))["instance-id"].as_str().unwrap(),
        iid
    );
}

#[test]
fn render_check_needs_no_store_and_is_clean_after_render() {
    let t = rendered_lab();
    let o = common::labforge_env(
        t.path(),
        &["render", "--check"],
        &[("LABFORGE_AGE_IDENTITY", "/nonexistent/identity.txt")],
    );
    ok(&o, "render --check");
    // A hand edit of a committed artifact is drift.
    let f = t.path().join("rendered/prometheus/nftables.conf");
    std::fs::write(&f, read(&f).replace("policy drop", "policy accept")).unwrap();
    let o = common::labforge(t.path(), &["render", "--check"]);
    assert!(!o.status.success());
    assert!(common::stdout(&o).contains("changed: rendered/prometheus/nftables.conf"));
}

/// Put `value` into the store as `name` (encrypted to the test identity), as `labforge secrets` would.
fn put_raw(root: &Path, name: &str, value: &[u8]) {
    use std::str::FromStr;
    let idt = read(&root.join(".test-identity.txt"));
    let line = idt
        .lines()
        .find(|l| l.starts_with("AGE-SECRET-KEY-"))
        .unwrap();
    let id = age::x25519::Identity::from_str(line).unwrap();
    let r = id.to_public();
    let enc = age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient)).unwrap();
    let mut ct = Vec::new();
    {
        let armor = age::armor::ArmoredWriter::wrap_output(&mut ct, age::armor::Format::AsciiArmor)
            .unwrap();
        let mut w = enc.wrap_output(armor).unwrap();
        w.write_all(value).unwrap();
        w.finish().unwrap().finish().unwrap();
    }
    let p = root.join(format!("secrets/{name}.age"));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, ct).unwrap();
}

fn secrets_set(root: &Path, name: &str, value: &str) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_labforge"))
        .args(["secrets", "set", name])
        .current_dir(root)
        .env("LABFORGE_AGE_IDENTITY", root.join(".test-identity.txt"))
        .env_remove("LABFORGE_SPEC")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(value.as_bytes()).unwrap();
    ok(&c.wait_with_output().unwrap(), "secrets set");
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

/// A fixed ed25519 key (seeded) whose OpenSSH encoding carries a unique comment.
fn canary_host_key(comment: &str) -> String {
    let kp = ssh_key::private::Ed25519Keypair::from_seed(&[42u8; 32]);
    let mut k = ssh_key::PrivateKey::from(kp);
    k.set_comment(comment);
    k.to_openssh(ssh_key::LineEnding::LF).unwrap().to_string()
}

#[test]
fn secret_canaries_appear_only_where_they_belong() {
    let nonce = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let stack_canary = format!("canary-grafana-{nonce}");
    let env_canary = format!("canary-edge-{nonce}");
    let key_comment = format!("canary-hostkey-{nonce}");
    let t = common::example_lab();
    let root = t.path();
    ok(
        &common::labforge(root, &["secrets", "init"]),
        "secrets init",
    );
    secrets_set(root, "grafana_admin_password", &stack_canary);
    secrets_set(root, "webui_secret_key", &stack_canary);
    let key = canary_host_key(&key_comment);
    put_raw(root, "ssh-host-keys/prometheus", key.as_bytes());
    // The body lines of the private key, less the first (a header every ed25519 key shares).
    let key_lines: Vec<String> = key
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .skip(1)
        .map(String::from)
        .collect();
    assert!(key_lines.len() >= 3);
    let env = [("PORTAINER_EDGE_KEY", env_canary.as_str())];
    let mut logs = Vec::new();
    for args in [
        vec!["render"],
        vec!["render", "--check"],
        vec!["render", "--json"],
        vec!["plan", "--json"],
    ] {
        let p = root.join(".test-identity.txt");
        let ps = p.to_string_lossy().into_owned();
        let mut full: Vec<(&str, &str)> = env.to_vec();
        full.push(("LABFORGE_AGE_IDENTITY", ps.as_str()));
        let o = common::labforge_env(root, &args, &full);
        ok(&o, &format!("{args:?}"));
        logs.push(common::stdout(&o) + &common::stderr(&o));
    }
    for l in &logs {
        assert!(
            !l.contains(&stack_canary) && !l.contains(&env_canary),
            "canary in output:\n{l}"
        );
        assert!(
            !key_lines.iter().any(|k| l.contains(k.as_str())),
            "host key in output"
        );
    }
    let mut files = Vec::new();
    walk(root, &mut files);
    let seed = root.join("out/cloud-init/prometheus/user-data");
    let mut key_seen = false;
    for f in files {
        let rel = f.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        if rel.starts_with("secrets/") || rel == ".test-identity.txt" {
            continue; // ciphertext and the identity
        }
        let bytes = std::fs::read(&f).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(&stack_canary),
            "stack secret canary in {rel}"
        );
        assert!(!text.contains(&env_canary), "env secret canary in {rel}");
        let has_key = key_lines.iter().any(|k| text.contains(k.as_str()));
        if f == seed {
            assert!(has_key, "the seed must carry the stored host key");
            key_seen = true;
        } else {
            assert!(!has_key, "host private key in {rel}");
        }
    }
    assert!(key_seen);
    // The committed compose files reference the secret by variable only.
    let compose = read(&root.join("stacks/monitoring/docker-compose.yml"));
    assert!(compose.contains("${GRAFANA_ADMIN_PASSWORD:?"));
}

#[test]
fn golden_prometheus_cloud_init() {
    let name = "cloud-init-prometheus";
    let gdir = common::repo().join("tests/golden").join(name);
    let t = tempfile::tempdir().unwrap();
    common::copy_dir(&gdir.join("in"), t.path());
    ok(
        &common::labforge(t.path(), &["secrets", "init"]),
        "secrets init",
    );
    put_raw(
        t.path(),
        "ssh-host-keys/prometheus",
        canary_host_key("root@prometheus").as_bytes(),
    );
    ok(
        &common::labforge(t.path(), &["render", "prometheus"]),
        "render",
    );
    let mut got: BTreeMap<String, String> = BTreeMap::new();
    for rel in [
        "rendered/prometheus/nftables.conf",
        "rendered/prometheus/sshd_config.d/10-labforge.conf",
        "out/cloud-init/prometheus/meta-data",
        "out/cloud-init/prometheus/network-config",
        "out/cloud-init/prometheus/user-data",
    ] {
        let mut text = read(&t.path().join(rel));
        if rel.ends_with("user-data") {
            text = mask_private_key(&text);
        }
        got.insert(rel.to_string(), text);
    }
    golden_compare(&gdir.join("out"), &got);
}

// Key block markers, assembled so no source file carries the literal armour line.
const BEGIN_KEY: &str = concat!("-----BEGIN OPENSSH ", "PRIVATE KEY-----");
const END_KEY: &str = concat!("-----END OPENSSH ", "PRIVATE KEY-----");

/// Replace the whole private key block with one marker line (golden files never hold key material).
fn mask_private_key(text: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for l in text.lines() {
        if l.trim_start().starts_with(BEGIN_KEY) {
            inside = true;
            out.push_str(&l.replace(BEGIN_KEY, "<host private key, masked>"));
            out.push('\n');
            continue;
        }
        if l.trim_start().starts_with(END_KEY) {
            inside = false;
            continue;
        }
        if !inside {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// Compare `got` with the files under `dir`; `LABFORGE_BLESS=1` rewrites `dir` instead.
fn golden_compare(dir: &Path, got: &BTreeMap<String, String>) {
    if std::env::var_os("LABFORGE_BLESS").is_some() {
        let _ = std::fs::remove_dir_all(dir);
        for (rel, text) in got {
            let p = dir.join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        return;
    }
    let mut want_files = Vec::new();
    assert!(
        dir.is_dir(),
        "{} missing: run with LABFORGE_BLESS=1",
        dir.display()
    );
    walk(dir, &mut want_files);
    let want: BTreeMap<String, String> = want_files
        .iter()
        .map(|p| {
            (
                p.strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/"),
                read(p),
            )
        })
        .collect();
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>(),
        "golden file set differs (LABFORGE_BLESS=1 to accept)"
    );
    for (rel, text) in got {
        assert_eq!(
            &want[rel], text,
            "{rel} differs from the golden file (LABFORGE_BLESS=1 to accept)"
        );
    }
}
