//! Evaluating the rendered NixOS modules and the flake offline with Debian's Nix 2.8 (`nix-instantiate --eval
//! --strict --json`). There is no nixpkgs here, so:
//!
//! * Host modules are evaluated by `tests/nixos_modsys.nix`, a miniature module system (imports, options with
//!   defaults, mkIf/mkDefault/mkForce, list merging, conflicts). What IS evaluated: every rendered module of a
//!   host and every service.nix it imports, to the final attribute values asserted below. What is NOT: the
//!   real NixOS option types and implementations (sshd_config generation, the nftables ruleset, networkd
//!   units), and imports from nixpkgs (sd-image) or flake inputs (nixos-hardware), which are only recorded.
//!   The sshd part is then judged by the real OpenSSH: the evaluated `services.openssh.settings` are written
//!   as sshd_config lines the way NixOS's settings format does and checked with `sshd -t`.
//! * flake.nix is imported as written and its `outputs` called with stub inputs (a small `lib`, stub
//!   `legacyPackages` whose builders return their arguments). What IS evaluated: input URLs, the host table,
//!   `nixosConfigurations` (through the module fixture), output and check names per system, the labforge
//!   package arguments, the render-drift script and the VM test's Python script (parsed by python3's `ast`).
//!   What is NOT: anything nixpkgs builds (toplevel, images, the VM test run) — `nix flake check` does that.
mod common;

use serde_json::Value;
use std::path::Path;
use std::process::Command;

const MODSYS: &str = include_str!("nixos_modsys.nix");

fn nix_eval(dir: &Path, expr: &str) -> Result<Value, String> {
    std::fs::write(dir.join("modsys.nix"), MODSYS).unwrap();
    let file = dir.join("eval.nix");
    std::fs::write(&file, expr).unwrap();
    let o = Command::new(common::oracle("nix-instantiate"))
        .args(["--eval", "--strict", "--json"])
        .arg(&file)
        .output()
        .expect("running nix-instantiate");
    if !o.status.success() {
        return Err(String::from_utf8_lossy(&o.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&o.stdout).expect("nix-instantiate printed JSON"))
}

fn nix_str(s: &str) -> String {
    labforge::render::nixos::nix_string(s)
}

const STUB_INPUTS: &str = r#"{ nixos-hardware.nixosModules = {
    raspberry-pi-4 = { _external = "nixos-hardware:raspberry-pi-4"; };
    raspberry-pi-5 = { _external = "nixos-hardware:raspberry-pi-5"; };
  }; }"#;

/// The typed module-system oracle's declarations (tests/nixopts/declarations.nix, types.nix), as a Nix path.
/// A golden tree (tests/golden/*/out) holds the NixOS backend's files only: the compose side the stack
/// template's assertions look for (docker-compose.yml, hosts/<host>.env) is not in it.
fn check_assertions(root: &Path) -> &'static str {
    if root.starts_with(common::repo().join("tests/golden")) {
        "false"
    } else {
        "true"
    }
}

fn oracle() -> String {
    format!(
        "(/. + {})",
        nix_str(&common::repo().join("tests/nixopts").to_string_lossy())
    )
}

/// The final configuration of `host` as rendered under `root` (plus the docker package NixOS would provide),
/// type-checked by the module-system oracle (every option declared, every value of its option's type,
/// every assertion holding): any error fails the calling test.
fn eval_host(root: &Path, host: &str, pkgs: &[&str]) -> Value {
    let t = tempfile::tempdir().unwrap();
    let pkg_list: Vec<String> = pkgs.iter().map(|p| nix_str(p)).collect();
    let host_path = nix_str(&root.join("nixos/hosts").join(host).to_string_lossy());
    let expr = format!(
        "import ./modsys.nix {{ modules = [ (/. + {}) {{ virtualisation.docker.package = \"/stub/docker\"; }} ]; specialArgs = {{ inputs = {STUB_INPUTS}; }}; pkgNames = [ {} ]; oracle = {}; checkAssertions = {}; }}",
        host_path,
        pkg_list.join(" "),
        oracle(),
        check_assertions(root)
    );
    let v = nix_eval(t.path(), &expr).unwrap_or_else(|e| panic!("evaluating {host}:\n{e}\n{expr}"));
    assert_eq!(
        v["errors"],
        serde_json::json!([]),
        "{host} under {}: the module-system oracle rejects it",
        root.display()
    );
    v
}

fn at<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p).unwrap_or_else(|| {
            panic!(
                "no {} in {}",
                path.join("."),
                serde_json::to_string(v)
                    .unwrap()
                    .chars()
                    .take(400)
                    .collect::<String>()
            )
        });
    }
    cur
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|x| match x {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .collect()
}

fn render_lab(t: &Path) {
    let o = common::labforge(t, &["secrets", "init"]);
    assert!(o.status.success(), "{}", common::stderr(&o));
    let o = common::labforge(t, &["render"]);
    assert!(
        o.status.success(),
        "{}{}",
        common::stdout(&o),
        common::stderr(&o)
    );
}

const PKGS: &[&str] = &["htop", "tmux", "curl", "git"];

#[test]
fn example_hosts_evaluate_to_the_hardened_baseline() {
    let root = common::repo();
    for (host, mgmt_if, mgmt) in [
        ("atlas", "eno1", "10.99.0.20"),
        ("hermes", "eno2", "10.99.0.50"),
        ("hestia", "end0", "10.99.0.61"),
    ] {
        let r = eval_host(&root, host, PKGS);
        let c = &r["config"];
        let ssh = at(c, &["services", "openssh"]);
        assert_eq!(ssh["enable"], true);
        assert_eq!(ssh["openFirewall"], false);
        assert_eq!(
            ssh["listenAddresses"],
            serde_json::json!([{ "addr": mgmt, "port": 22 }]),
            "{host}"
        );
        let s = &ssh["settings"];
        assert_eq!(s["PermitRootLogin"], "no");
        assert_eq!(s["PasswordAuthentication"], false);
        assert_eq!(s["KbdInteractiveAuthentication"], false);
        assert_eq!(strs(&s["AllowUsers"]), ["ops"]);
        assert_eq!(
            ssh["hostKeys"],
            serde_json::json!([{ "type": "ed25519", "path": "/etc/ssh/ssh_host_ed25519_key" }])
        );
        // Firewall: nothing on every interface; SSH only on the management interface.
        // NixOS's own firewall is off: the compiled exposure table is the host firewall.
        assert_eq!(at(c, &["networking", "firewall", "enable"]), false);
        assert_eq!(at(c, &["networking", "nftables", "enable"]), true);
        let t = table(c);
        let ssh: Vec<&str> = t
            .lines()
            .filter(|l| l.contains("tcp dport 22 accept"))
            .collect();
        assert_eq!(ssh.len(), 1, "{host}: {ssh:?}");
        assert!(
            ssh[0].contains(&format!("iifname \"{mgmt_if}\"")),
            "{host}: {ssh:?}"
        );
        // Users: declarative only, root locked, the admin in wheel with the spec's key.
        assert_eq!(at(c, &["users", "mutableUsers"]), false);
        assert_eq!(at(c, &["users", "users", "root", "hashedPassword"]), "!");
        let ops = at(c, &["users", "users", "ops"]);
        assert_eq!(ops["isNormalUser"], true);
        assert_eq!(strs(&ops["extraGroups"]), ["wheel"]);
        assert!(
            strs(at(ops, &["openssh", "authorizedKeys", "keys"]))[0].ends_with("ops@workstation")
        );
        assert_eq!(at(c, &["networking", "hostName"]), host);
        assert_eq!(at(c, &["system", "stateVersion"]), "25.05");
        assert_eq!(at(c, &["time", "timeZone"]), "Europe/Berlin");
        assert_eq!(at(c, &["services", "xserver", "enable"]), false);
        let ext = strs(&r["external"]);
        if host == "hestia" {
            assert!(
                ext.iter()
                    .any(|e| e.ends_with("installer/sd-card/sd-image-aarch64.nix")),
                "{ext:?}"
            );
            assert!(
                ext.contains(&"nixos-hardware:raspberry-pi-4".to_string()),
                "{ext:?}"
            );
        } else {
            assert!(!ext.iter().any(|e| e.contains("sd-card")), "{ext:?}");
            assert_eq!(
                at(c, &["fileSystems", "/", "device"]),
                "/dev/disk/by-label/nixos"
            );
            assert_eq!(at(c, &["boot", "loader", "systemd-boot", "enable"]), true);
        }
    }
}

#[test]
fn storage_services_and_networking_follow_the_spec() {
    let root = common::repo();
    let atlas = eval_host(&root, "atlas", PKGS);
    let exports = at(&atlas["config"], &["services", "nfs", "server", "exports"])
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        exports.contains("/export/vms 10.50.0.0/24(rw,"),
        "{exports}"
    );
    assert!(
        !exports.contains(
            "/export/vms 10.50.0.0/24(rw,sync,no_subtree_check,root_squash,sec=sys) 10.60"
        ),
        "{exports}"
    );
    assert!(
        exports.contains("/export/media 10.50.0.0/24(ro,") && exports.contains(" 10.60.0.0/24(ro,"),
        "{exports}"
    );
    assert_eq!(
        at(&atlas["config"], &["fileSystems", "/export", "fsType"]),
        "xfs"
    );
    assert!(
        atlas["config"]["virtualisation"]["docker"]
            .get("enable")
            .is_none(),
        "atlas runs no stacks"
    );

    let hermes = eval_host(&root, "hermes", PKGS);
    let c = &hermes["config"];
    let nfs = at(c, &["fileSystems", "/srv/appdata"]);
    assert_eq!(nfs["device"], "10.60.0.20:/export/appdata");
    assert_eq!(nfs["fsType"], "nfs");
    // Stacks: docker on, one unit per stack, secrets from /run/secrets, never the store.
    assert_eq!(at(c, &["virtualisation", "docker", "enable"]), true);
    let unit = at(c, &["systemd", "services", "labforge-stack-ingress"]);
    let start = unit["serviceConfig"]["ExecStart"].as_str().unwrap();
    assert_eq!(
        start,
        "/stub/docker/bin/docker compose --project-name ingress --file /etc/labforge/stacks/ingress/docker-compose.yml --env-file /etc/labforge/stacks/ingress/hosts/hermes.env --env-file /run/secrets/labforge/ingress.env up --detach --remove-orphans --wait"
    );
    assert!(unit["serviceConfig"]["ExecStop"]
        .as_str()
        .unwrap()
        .ends_with(" down"));
    assert!(unit["serviceConfig"]["ExecStartPre"]
        .as_str()
        .unwrap()
        .ends_with(" pull --policy missing --quiet"));
    assert!(strs(&unit["after"]).contains(&"docker.service".to_string()));
    assert!(strs(&unit["after"]).contains(&"network-online.target".to_string()));
    assert_eq!(
        strs(&unit["unitConfig"]["RequiresMountsFor"]),
        ["/srv/appdata/homeassistant", "/srv/appdata/vaultwarden"]
    );
    let metrics = at(c, &["systemd", "services", "labforge-stack-metrics"]);
    assert!(
        !metrics["serviceConfig"]["ExecStart"]
            .as_str()
            .unwrap()
            .contains("/run/secrets"),
        "metrics has no secrets"
    );
    assert!(
        strs(&metrics["after"]).contains(&"labforge-stack-ingress.service".to_string()),
        "metrics joins ingress's network"
    );
    let etc = at(
        c,
        &["environment", "etc", "labforge/stacks/ingress", "source"],
    )
    .as_str()
    .unwrap();
    assert!(
        etc.starts_with("/nix/store/") && etc.ends_with("-labforge-stack-ingress"),
        "{etc}"
    );
    // Service ports on the servers interface only.
    let t = table(c);
    assert!(
        t.contains("iifname \"eno1\" ip daddr 10.60.0.50 tcp dport 443 accept"),
        "{t}"
    );
    assert!(
        t.contains("iifname \"eno1\" ip daddr 10.60.0.50 tcp dport 80 accept"),
        "{t}"
    );
    assert!(
        t.contains(
            "iifname \"eno2\" ip daddr 10.99.0.50 ip saddr 10.99.0.0/24 tcp dport 22 accept"
        ),
        "{t}"
    );
    // Networking: NICs renamed by MAC, one default route on servers.
    let net = at(c, &["systemd", "network"]);
    assert_eq!(
        at(
            net,
            &["links", "10-eno1", "matchConfig", "PermanentMACAddress"]
        ),
        "b0:4f:13:60:00:50"
    );
    assert_eq!(
        strs(at(net, &["networks", "30-eno1", "gateway"])),
        ["10.60.0.1"]
    );
    assert!(net["networks"]["30-eno2"].get("gateway").is_none());

    let hestia = eval_host(&root, "hestia", PKGS);
    let c = &hestia["config"];
    assert_eq!(
        at(
            c,
            &[
                "systemd",
                "network",
                "netdevs",
                "20-servers",
                "vlanConfig",
                "Id"
            ]
        ),
        60
    );
    assert_eq!(
        strs(at(
            c,
            &["systemd", "network", "networks", "30-end0", "vlan"]
        )),
        ["servers"]
    );
    let t = table(c);
    assert!(
        t.contains("iifname \"servers\" meta l4proto tcp ct original ip daddr 10.60.0.61 ct original proto-dst 9001 ip saddr 10.60.0.30 accept"),
        "{t}"
    );
}

/// The compiled nftables table NixOS loads (`networking.nftables.tables.labforge.content`).
fn table(c: &Value) -> String {
    at(
        c,
        &["networking", "nftables", "tables", "labforge", "content"],
    )
    .as_str()
    .unwrap()
    .to_string()
}

/// sshd_config lines from evaluated `services.openssh.settings`, the way NixOS's settings format writes them
/// (bools yes/no, Ciphers/KexAlgorithms/Macs comma-joined, AllowUsers space-joined).
fn sshd_config(ssh: &Value, hostkey: &Path) -> String {
    let mut out = String::new();
    for la in ssh["listenAddresses"].as_array().unwrap() {
        out.push_str(&format!(
            "ListenAddress {}:{}\n",
            la["addr"].as_str().unwrap(),
            la["port"]
        ));
    }
    out.push_str(&format!("HostKey {}\n", hostkey.display()));
    for (k, v) in ssh["settings"].as_object().unwrap() {
        let val = match v {
            Value::Bool(true) => "yes".to_string(),
            Value::Bool(false) => "no".to_string(),
            Value::Number(n) => n.to_string(),
            Value::String(s) => s.clone(),
            Value::Array(_) => {
                let sep = if ["Ciphers", "KexAlgorithms", "Macs"].contains(&k.as_str()) {
                    ","
                } else {
                    " "
                };
                strs(v).join(sep)
            }
            other => panic!("unsupported sshd setting {k} = {other}"),
        };
        out.push_str(&format!("{k} {val}\n"));
    }
    out
}

fn sshd_t(dir: &Path, config: &str) -> Result<(), String> {
    let f = dir.join("sshd_config");
    std::fs::write(&f, config).unwrap();
    let o = Command::new(common::oracle("sshd"))
        .arg("-t")
        .arg("-f")
        .arg(&f)
        .output()
        .expect("running sshd -t");
    if o.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

#[test]
fn sshd_accepts_the_evaluated_ssh_settings_and_rejects_a_broken_one() {
    let t = tempfile::tempdir().unwrap();
    let key = t.path().join("hostkey");
    let o = Command::new(common::oracle("ssh-keygen"))
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(o.status.success());
    let root = common::repo();
    for host in ["atlas", "hermes", "hestia"] {
        let r = eval_host(&root, host, PKGS);
        let cfg = sshd_config(at(&r["config"], &["services", "openssh"]), &key);
        sshd_t(t.path(), &cfg)
            .unwrap_or_else(|e| panic!("sshd -t rejects {host}'s settings: {e}\n{cfg}"));
    }
    let r = eval_host(&root, "hermes", PKGS);
    let mut ssh = at(&r["config"], &["services", "openssh"]).clone();
    ssh["settings"]["Ciphers"] =
        serde_json::json!(["chacha20-poly1305@openssh.com", "rot13@example.com"]);
    assert!(
        sshd_t(t.path(), &sshd_config(&ssh, &key)).is_err(),
        "sshd must reject an unknown cipher"
    );
}

/// Edit the example lab's spec text, render with the binary, evaluate one host.
fn changed_lab(file: &str, from: &str, to: &str) -> tempfile::TempDir {
    let t = common::example_lab();
    let p = t.path().join("hosts").join(file);
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.contains(from), "{file} lacks {from:?}");
    std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
    render_lab(t.path());
    t
}

#[test]
fn an_extra_admin_key_appears_in_users_nix() {
    let key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEb2Y1v0T8jzQ0w2l5b6uJ8c6gq4cQk2m8mF8r9VhX0A ops@laptop";
    let t = changed_lab(
        "site.toml",
        "ops@workstation\"]",
        &format!("ops@workstation\", \"{key}\"]"),
    );
    for host in ["atlas", "hermes", "hestia"] {
        let r = eval_host(t.path(), host, PKGS);
        let keys = strs(at(
            &r["config"],
            &["users", "users", "ops", "openssh", "authorizedKeys", "keys"],
        ));
        assert_eq!(keys.len(), 2, "{host}: {keys:?}");
        assert_eq!(keys[1], key);
    }
    // The baseline has one key: the change is the spec's, not a constant.
    let base = eval_host(&common::repo(), "hestia", PKGS);
    assert_eq!(
        strs(at(
            &base["config"],
            &["users", "users", "ops", "openssh", "authorizedKeys", "keys"]
        ))
        .len(),
        1
    );
}

#[test]
fn a_new_stack_port_opens_on_the_servers_interface_only() {
    let t = changed_lab(
        "stacks/ingress.toml",
        "  { host = 443, network = \"servers\" },\n",
        "  { host = 443, network = \"servers\" },\n  { host = 8443, network = \"servers\" },\n",
    );
    let r = eval_host(t.path(), "hermes", PKGS);
    let tb = table(&r["config"]);
    assert!(
        tb.contains("iifname \"eno1\" ip daddr 10.60.0.50 tcp dport 8443 accept"),
        "{tb}"
    );
    assert!(
        tb.contains("ct original ip daddr 10.60.0.50 ct original proto-dst 8443 accept"),
        "{tb}"
    );
    // Atlas does not run the stack: unchanged.
    let atlas = eval_host(t.path(), "atlas", PKGS);
    assert!(!serde_json::to_string(&atlas).unwrap().contains("8443"));
}

#[test]
fn a_changed_ssh_port_moves_listen_address_and_firewall() {
    let t = changed_lab("site.toml", "ssh_port = 22", "ssh_port = 2222");
    for (host, mgmt_if) in [("atlas", "eno1"), ("hermes", "eno2"), ("hestia", "end0")] {
        let r = eval_host(t.path(), host, PKGS);
        let c = &r["config"];
        let la = &at(c, &["services", "openssh", "listenAddresses"])[0];
        assert_eq!(la["port"], 2222, "{host}");
        assert_eq!(strs(at(c, &["services", "openssh", "ports"])), ["2222"]);
        let t = table(c);
        assert!(
            t.contains(&format!("iifname \"{mgmt_if}\"")) && t.contains("tcp dport 2222 accept"),
            "{host}: {t}"
        );
        assert!(!t.contains("tcp dport 22 accept"), "{host}: {t}");
    }
}

#[test]
fn golden_compute_hosts_evaluate() {
    let root = common::repo().join("tests/golden/nixos-compute/out");
    let kvm = eval_host(&root, "kvm1", &["htop"]);
    let c = &kvm["config"];
    let scratch = at(c, &["fileSystems", "/scratch"]);
    assert_eq!(scratch["autoFormat"], true);
    assert!(strs(&scratch["options"]).contains(&"nofail".to_string()));
    assert_eq!(
        at(c, &["fileSystems", "/var/lib/libvirt/images", "device"]),
        "10.50.0.21:/srv/vms"
    );
    assert_eq!(at(c, &["virtualisation", "libvirtd", "enable"]), true);
    assert_eq!(at(c, &["hardware", "ksm", "enable"]), false);
    let vault = eval_host(&root, "vault", &["htop"]);
    let c = &vault["config"];
    assert_eq!(
        at(c, &["services", "openssh", "listenAddresses"])[0]["port"],
        2222
    );
    assert_eq!(
        strs(at(c, &["services", "openssh", "settings", "AllowUsers"])),
        ["ops", "backup"]
    );
    assert_eq!(
        at(
            c,
            &[
                "systemd",
                "network",
                "links",
                "10-ens18",
                "matchConfig",
                "PermanentMACAddress"
            ]
        ),
        "bc:24:11:99:00:21"
    );
    assert!(strs(&vault["external"])
        .iter()
        .any(|e| e.ends_with("profiles/qemu-guest.nix")));
    let pi = eval_host(&root, "pi5", &["htop"]);
    assert!(strs(&pi["external"]).contains(&"nixos-hardware:raspberry-pi-5".to_string()));
    assert!(
        at(
            &pi["config"],
            &[
                "systemd",
                "services",
                "labforge-stack-whoami",
                "unitConfig",
                "AssertPathExists"
            ]
        )
        .as_str()
        .unwrap()
            == "/run/secrets/labforge/whoami.env"
    );
}

#[test]
fn flake_outputs_evaluate_with_stub_inputs() {
    let root = common::repo();
    let t = tempfile::tempdir().unwrap();
    let expr = format!(
        r#"
let
  flake = import (/. + {root});
  modsys = import ./modsys.nix;
  genAttrs = names: f: builtins.listToAttrs (map (n: {{ name = n; value = f n; }}) names);
  lib = {{
    inherit genAttrs;
    mapAttrs = builtins.mapAttrs;
    filterAttrs = pred: set: builtins.listToAttrs (builtins.filter (x: pred x.name x.value) (map (n: {{ name = n; value = set.${{n}}; }}) (builtins.attrNames set)));
    mapAttrs' = f: set: builtins.listToAttrs (map (n: f n set.${{n}}) (builtins.attrNames set));
    nameValuePair = name: value: {{ inherit name value; }};
    optionalAttrs = c: s: if c then s else {{ }};
    fileset = {{ toSource = a: a; unions = l: l; }};
    nixosSystem = args: let r = modsys {{ modules = args.modules ++ [ {{ virtualisation.docker.package = "/stub/docker"; }} ]; inherit (args) specialArgs; pkgNames = [ "htop" "tmux" "curl" "git" ]; oracle = {oracle}; }}; in {{ inherit (r) config errors; }};
  }};
  stubPkgs = system: {{
    rustPlatform.buildRustPackage = a: a // {{ type = "derivation"; }};
    runCommand = name: env: script: {{ inherit name script; }};
    writeText = name: text: {{ inherit name; }};
    mkShell = a: a;
    testers.runNixOSTest = t: t;
    clippy = "clippy"; rustfmt = "rustfmt"; nixfmt-rfc-style = "nixfmt"; openssh = "openssh";
  }};
  nixpkgs = {{ inherit lib; legacyPackages = genAttrs [ "x86_64-linux" "aarch64-linux" ] stubPkgs; }};
  inputs = {STUB_INPUTS} // {{ inherit nixpkgs self; }};
  self = outputs // {{ outPath = "/stub/self"; }};
  outputs = flake.outputs inputs;
  names = builtins.mapAttrs (_: builtins.attrNames);
  vm = builtins.head (builtins.filter (n: builtins.substring 0 10 n == "vm-verify-") (builtins.attrNames outputs.checks.x86_64-linux));
in {{
  inherit (flake) description;
  outputsIsFunction = builtins.isFunction flake.outputs;
  inputUrls = builtins.mapAttrs (_: i: i.url) flake.inputs;
  platforms = builtins.mapAttrs (_: c: c.config.nixpkgs.hostPlatform) outputs.nixosConfigurations;
  hostNames = builtins.mapAttrs (_: c: c.config.networking.hostName) outputs.nixosConfigurations;
  typeErrors = builtins.mapAttrs (_: c: c.errors) outputs.nixosConfigurations;
  packages = names outputs.packages;
  checks = names outputs.checks;
  devShells = names outputs.devShells;
  images = builtins.attrNames outputs.images;
  formatter = outputs.formatter.x86_64-linux;
  labforge = {{ inherit (outputs.packages.x86_64-linux.labforge) pname version doCheck; lock = toString outputs.packages.x86_64-linux.labforge.cargoLock.lockFile; }};
  renderDrift = outputs.checks.x86_64-linux.render-drift.script;
  specCheck = outputs.checks.aarch64-linux.spec-check.script;
  vmName = vm;
  vmScript = outputs.checks.x86_64-linux.${{vm}}.testScript;
  vmNodes = builtins.attrNames outputs.checks.x86_64-linux.${{vm}}.nodes;
}}
"#,
        root = nix_str(&root.join("flake.nix").to_string_lossy()),
        oracle = oracle(),
    );
    let v = nix_eval(t.path(), &expr).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v["outputsIsFunction"], true);
    // One pinned release and nixos-hardware commit (tests/nixos_pin.rs ties them to the manifest's [meta]).
    assert_eq!(
        v["inputUrls"]["nixpkgs"],
        format!(
            "github:NixOS/nixpkgs/{}",
            labforge::render::nixos::NIXOS_RELEASE
        )
    );
    assert_eq!(
        v["inputUrls"]["nixos-hardware"],
        format!(
            "github:NixOS/nixos-hardware/{}",
            labforge::render::nixos::NIXOS_HARDWARE_REV
        )
    );
    assert_eq!(
        v["platforms"],
        serde_json::json!({ "atlas": "x86_64-linux", "hermes": "x86_64-linux", "hestia": "aarch64-linux" })
    );
    // Every host with the flake's own inline module (nixpkgs.hostPlatform) passes the typed oracle.
    assert_eq!(
        v["typeErrors"],
        serde_json::json!({ "atlas": [], "hermes": [], "hestia": [] })
    );
    assert_eq!(
        v["hostNames"],
        serde_json::json!({ "atlas": "atlas", "hermes": "hermes", "hestia": "hestia" })
    );
    assert_eq!(
        strs(&v["packages"]["x86_64-linux"]),
        ["default", "image-atlas", "image-hermes", "labforge"]
    );
    assert_eq!(
        strs(&v["packages"]["aarch64-linux"]),
        ["default", "image-hestia", "labforge"]
    );
    assert_eq!(
        strs(&v["checks"]["x86_64-linux"]),
        [
            "render-drift",
            "spec-check",
            "toplevel-atlas",
            "toplevel-hermes",
            "vm-verify-atlas"
        ]
    );
    assert_eq!(
        strs(&v["checks"]["aarch64-linux"]),
        ["render-drift", "spec-check", "toplevel-hestia"]
    );
    assert_eq!(strs(&v["images"]), ["atlas", "hermes", "hestia"]);
    assert_eq!(strs(&v["devShells"]["x86_64-linux"]), ["default"]);
    assert_eq!(v["formatter"], "nixfmt");
    assert_eq!(v["labforge"]["pname"], "labforge");
    assert_eq!(v["labforge"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["labforge"]["lock"]
        .as_str()
        .unwrap()
        .ends_with("/Cargo.lock"));
    assert!(v["renderDrift"]
        .as_str()
        .unwrap()
        .contains("labforge --spec /stub/self/hosts render --check"));
    assert!(v["specCheck"]
        .as_str()
        .unwrap()
        .contains("labforge --spec /stub/self/hosts check"));
    assert_eq!(strs(&v["vmNodes"]), ["target", "verifier"]);
    let script = v["vmScript"].as_str().unwrap();
    assert!(
        script.contains("labforge --spec hosts verify --identity /root/.ssh/id_ed25519 atlas"),
        "{script}"
    );
    assert!(script.contains("nc -z -w 3 10.50.0.20 22"), "{script}");
    assert!(script.contains("ops@10.99.0.20"), "{script}");
    // The VM test's script is valid Python (what the NixOS test driver runs).
    let py = t.path().join("script.py");
    std::fs::write(&py, script).unwrap();
    let o = Command::new("python3")
        .args(["-c", "import ast,sys; ast.parse(open(sys.argv[1]).read())"])
        .arg(&py)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}\n{script}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// sshd binds only the management address, which may not exist yet at `network.target`; nixpkgs' openssh
/// module documents ordering it after `network-online.target` in that case (issue 16 point 6).
#[test]
fn nixos_sshd_waits_for_network_online_because_it_binds_the_management_address() {
    let root = common::repo();
    for host in ["atlas", "hermes", "hestia"] {
        let h = eval_host(&root, host, PKGS);
        let unit = at(&h["config"], &["systemd", "services", "sshd"]);
        assert!(
            strs(&unit["after"]).contains(&"network-online.target".to_string()),
            "{host}: {unit}"
        );
        assert!(
            strs(&unit["wants"]).contains(&"network-online.target".to_string()),
            "{host}: {unit}"
        );
    }
}
