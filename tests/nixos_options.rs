//! Every NixOS option the renderer emits, checked against upstream's declarations (issue 9) without
//! nixpkgs: the typed manifest tests/nixos-options.toml, rnix-parsed renders (tests/nixopts/), and the
//! daemons themselves for free-form settings (Debian's `sshd -t` for services.openssh, Nix 2.8 for
//! nix.settings). See docs/nixos-options.md.
mod common;
mod nixopts;

use nixopts::{check_tree, manifest, sshd, types, Def, Report, Val};
use std::path::{Path, PathBuf};

fn trees() -> Vec<(&'static str, PathBuf)> {
    let r = common::repo();
    vec![
        ("committed render of the example lab", r.clone()),
        (
            "golden nixos-compute",
            r.join("tests/golden/nixos-compute/out"),
        ),
    ]
}

fn hosts(root: &Path) -> Vec<String> {
    let mut h: Vec<String> = std::fs::read_dir(root.join("nixos/hosts"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    h.sort();
    h
}

/// Definitions of one host: its own modules and the service.nix files (the manifest check is per file).
fn host_defs<'a>(rep: &'a Report, host: &str) -> Vec<&'a Def> {
    let prefix = format!("nixos/hosts/{host}/");
    rep.defs
        .iter()
        .filter(|d| d.file.starts_with(&prefix))
        .collect()
}

fn summary(name: &str, rep: &Report) {
    eprintln!(
        "{name}: {} option definitions type-checked, {} errors, {} not checked:",
        rep.checked,
        rep.errors.len(),
        rep.not_checked.len()
    );
    for n in &rep.not_checked {
        eprintln!("  not checked: {n}");
    }
}

#[test]
fn the_manifest_parses_and_every_submodule_option_has_its_parent() {
    let m = manifest();
    assert!(m.options.len() > 100, "{}", m.options.len());
    for k in m.options.keys() {
        for i in 1..k.len() {
            let parent = &k[..i];
            if let Some(e) = m.get(parent) {
                assert!(
                    matches!(e.ty, types::Ty::Submodule | types::Ty::UnitSection)
                        || e.ty.is_container(),
                    "{} is under {}, which is {} (not a submodule)",
                    k.join("."),
                    parent.join("."),
                    e.ty_text
                );
            }
            if k[i] == "<name>" || k[i] == "*" {
                let e = m.get(parent).unwrap_or_else(|| {
                    panic!("{}: no entry for {}", k.join("."), parent.join("."))
                });
                assert!(
                    e.ty.is_container(),
                    "{}: {} is {}",
                    k.join("."),
                    parent.join("."),
                    e.ty_text
                );
            }
        }
    }
    // The type language rejects what it does not know.
    assert!(types::parse_ty("listOf prot").is_err());
    assert!(types::parse_ty("enum [ \"a\"").is_err());
}

#[test]
fn every_rendered_nix_file_fits_the_manifest() {
    let m = manifest();
    let mut used = std::collections::BTreeSet::new();
    for (name, root) in trees() {
        let files = nixopts::rendered_files(&root);
        assert!(
            files.len() >= 10,
            "{name}: only {} .nix files under {}",
            files.len(),
            root.display()
        );
        let rep = check_tree(&m, &root);
        summary(name, &rep);
        assert!(rep.errors.is_empty(), "{name}:\n{}", rep.errors.join("\n"));
        assert!(
            rep.checked > 100,
            "{name}: only {} definitions checked",
            rep.checked
        );
        for d in &rep.defs {
            used.insert(d.path[0].clone());
        }
        // Every host's ssh.nix, users.nix and firewall.nix definitions were seen (the walk reached them).
        for h in hosts(&root) {
            let defs = host_defs(&rep, &h);
            for must in [
                ["services", "openssh"],
                ["users", "users"],
                ["networking", "firewall"],
            ] {
                assert!(
                    defs.iter().any(|d| d.path.len() > 2 && d.path[..2] == must),
                    "{name} {h}: no {} definitions",
                    must.join(".")
                );
            }
        }
    }
    for top in [
        "services",
        "networking",
        "systemd",
        "users",
        "fileSystems",
        "boot",
        "virtualisation",
        "nixpkgs",
    ] {
        assert!(
            used.contains(top),
            "no definition under {top} in any tree: {used:?}"
        );
    }
}

fn sshd_check(m: &types::Manifest, root: &Path, host: &str) -> (sshd::Rendered, Vec<String>) {
    let rep = check_tree(m, root);
    let defs = host_defs(&rep, host);
    let t = tempfile::tempdir().unwrap();
    let sup = sshd::supported();
    let r = sshd::render(m, &defs, t.path(), &sup)
        .unwrap_or_else(|| panic!("{host}: sshd not enabled"));
    let listen: Vec<(String, String)> = r
        .text
        .lines()
        .filter_map(|l| l.strip_prefix("ListenAddress "))
        .filter_map(|a| {
            a.rsplit_once(':')
                .map(|(x, p)| (x.to_string(), p.to_string()))
        })
        .collect();
    let mut errs = r.errors.clone();
    errs.extend(sshd::run_sshd(t.path(), &r, &listen));
    (r, errs)
}

#[test]
fn sshd_9_2_accepts_every_hosts_sshd_config_as_nixos_writes_it() {
    let m = manifest();
    let sup = sshd::supported();
    assert!(
        sup["kex"].contains(&"curve25519-sha256".to_string()),
        "{:?}",
        sup["kex"]
    );
    assert!(
        !sup["kex"].contains(&"mlkem768x25519-sha256".to_string()),
        "this is not OpenSSH 9.2"
    );
    let mut n = 0;
    for (name, root) in trees() {
        for h in hosts(&root) {
            let (r, errs) = sshd_check(&m, &root, &h);
            eprintln!(
                "{name} {h}: sshd_config\n{}substituted: {:?}",
                r.text, r.substituted
            );
            for f in &r.findings {
                eprintln!("  FINDING: {f}");
            }
            assert!(
                errs.is_empty(),
                "{name} {h}:\n{}\n{}",
                errs.join("\n"),
                r.text
            );
            // The renderer's own hardening is what sshd sees, not nixpkgs' defaults.
            assert!(r.text.contains("PermitRootLogin no\n"), "{}", r.text);
            assert!(r.text.contains("PasswordAuthentication no\n"), "{}", r.text);
            assert!(
                r.text
                    .contains("AuthorizedKeysFile /etc/ssh/authorized_keys.d/%u\n"),
                "{}",
                r.text
            );
            assert!(
                r.text.lines().any(|l| l.starts_with("ListenAddress 10.")),
                "{}",
                r.text
            );
            n += 1;
        }
    }
    assert!(n >= 6, "{n} hosts");
}

#[test]
fn nix_2_8_knows_every_nix_settings_key() {
    let m = manifest();
    for (name, root) in trees() {
        let rep = check_tree(&m, &root);
        for h in hosts(&root) {
            let defs = host_defs(&rep, &h);
            assert!(
                defs.iter().any(|d| d
                    .path
                    .starts_with(&["nix".to_string(), "settings".to_string()])),
                "{name} {h}"
            );
            let errs = sshd::nix_conf_errors(&defs);
            assert!(errs.is_empty(), "{name} {h}: {errs:?}");
        }
    }
}

/// The committed render copied to a temp dir with one edit in one file.
fn mutated(file: &str, from: &str, to: &str) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let r = common::repo();
    common::copy_dir(&r.join("nixos"), &t.path().join("nixos"));
    common::copy_dir(&r.join("services"), &t.path().join("services"));
    std::fs::copy(r.join("flake.nix"), t.path().join("flake.nix")).unwrap();
    let p = t.path().join(file);
    let text = std::fs::read_to_string(&p).unwrap();
    assert!(text.contains(from), "{file} lacks {from:?}");
    std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
    t
}

fn line_of(file: &str, needle: &str) -> usize {
    let text = std::fs::read_to_string(common::repo().join(file)).unwrap();
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{file}: no {needle:?}"))
        + 1
}

/// The one error of the mutated tree, which must name file:line and contain every `want`.
fn the_error(file: &str, from: &str, to: &str, want: &[&str]) -> String {
    let t = mutated(file, from, to);
    let rep = check_tree(&manifest(), t.path());
    assert_eq!(
        rep.errors.len(),
        1,
        "{file} {from:?} → {to:?}: {:#?}",
        rep.errors
    );
    let e = rep.errors[0].clone();
    let at = format!("{file}:{}:", line_of(file, from));
    assert!(e.starts_with(&at), "{e}\n(expected it at {at})");
    for w in want {
        assert!(e.contains(w), "{e}\n(lacks {w:?})");
    }
    eprintln!("{e}");
    e
}

#[test]
fn a_misspelt_option_path_fails_naming_file_line_and_option() {
    the_error(
        "nixos/hosts/hermes/ssh.nix",
        "    settings = {",
        "    setings = {",
        &["services.openssh.setings", "no such NixOS option"],
    );
    // Dotted form, at the top level of a module.
    the_error(
        "nixos/hosts/atlas/firewall.nix",
        "networking.nftables.flushRuleset = false;",
        "networking.nftables.flushRulset = false;",
        &["networking.nftables.flushRulset", "no such NixOS option"],
    );
    // Inside a submodule of an attrsOf (the compiled nftables table) and a systemd section (closed field list).
    the_error(
        "nixos/hosts/hermes/firewall.nix",
        "family = \"inet\";",
        "famly = \"inet\";",
        &[
            "networking.nftables.tables.labforge.famly",
            "no such NixOS option",
        ],
    );
    the_error(
        "nixos/hosts/hestia/networking.nix",
        "vlanConfig.Id = 60;",
        "vlanConfig.ID = 60;",
        &[
            "systemd.network.netdevs.20-servers.vlanConfig.ID",
            "systemd section",
        ],
    );
    // In a full module (service.nix: options + config = lib.mkIf …).
    the_error(
        "services/ingress/service.nix",
        "RemainAfterExit = true;",
        "RemainAfterExit = true; }; unitConfg = {",
        &[
            "systemd.services.labforge-stack-ingress.unitConfg",
            "no such NixOS option",
        ],
    );
    // A stack enable that no service.nix declares.
    the_error(
        "nixos/hosts/hermes/services.nix",
        "labforge.stacks.ingress.enable = true;",
        "labforge.stacks.ingres.enable = true;",
        &["labforge.stacks.ingres.enable", "no such NixOS option"],
    );
}

#[test]
fn a_wrong_value_type_fails_naming_the_expected_type() {
    the_error(
        "nixos/hosts/hermes/ssh.nix",
        "PermitRootLogin = \"no\";",
        "PermitRootLogin = 42;",
        &[
            "services.openssh.settings.PermitRootLogin = 42",
            "expected nullOr (enum [ \"yes\"",
            "42 is not one of",
        ],
    );
    the_error(
        "nixos/hosts/hermes/ssh.nix",
        "{ addr = \"10.99.0.50\"; port = 22; }",
        "{ addr = \"10.99.0.50\"; port = 70000; }",
        &[
            "services.openssh.listenAddresses.[0].port = 70000",
            "expected nullOr port",
            "70000 is outside 0..=65535",
        ],
    );
    the_error(
        "nixos/hosts/hermes/ssh.nix",
        "ports = [ 22 ];",
        "ports = \"22\";",
        &[
            "services.openssh.ports = \"22\"",
            "expected listOf port",
            "not a list",
        ],
    );
    the_error(
        "nixos/hosts/hestia/networking.nix",
        "vlanConfig.Id = 60;",
        "vlanConfig.Id = 4095;",
        &["vlanConfig.Id = 4095", "ints.between 0 4094"],
    );
    the_error(
        "nixos/hosts/hermes/networking.nix",
        "networking.hostName = \"hermes\";",
        "networking.hostName = \"hermes.lab\";",
        &["networking.hostName = \"hermes.lab\"", "does not match"],
    );
    // A free-form sshd key takes atoms only: a list throws in nixpkgs (and is rejected here).
    the_error(
        "nixos/hosts/hermes/ssh.nix",
        "HostKeyAlgorithms = \"ssh-ed25519\";",
        "HostKeyAlgorithms = [ \"ssh-ed25519\" ];",
        &[
            "services.openssh.settings.HostKeyAlgorithms",
            "free-form sshd",
            "not a",
        ],
    );
    // A reference to an option that does not exist.
    the_error(
        "services/ingress/service.nix",
        "assertion = config.virtualisation.docker.enable;",
        "assertion = config.virtualisation.dockr.enable;",
        &["config.virtualisation.dockr.enable is not a declared option"],
    );
}

#[test]
fn a_misspelt_free_form_sshd_key_is_refused_by_sshd() {
    let m = manifest();
    let file = "nixos/hosts/hermes/ssh.nix";
    let t = mutated(
        file,
        "PermitRootLogin = \"no\";",
        "PermitRootLogn = \"no\";",
    );
    // The manifest cannot know sshd's keywords (the settings are free-form) ...
    assert!(check_tree(&m, t.path()).errors.is_empty());
    // ... sshd does, and the error points at the Nix line.
    let (_, errs) = sshd_check(&m, t.path(), "hermes");
    let at = format!(
        "{file}:{}: services.openssh.settings.PermitRootLogn",
        line_of(file, "PermitRootLogin = \"no\";")
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with(&at) && e.contains("Bad configuration option: PermitRootLogn")),
        "{errs:#?}"
    );
    eprintln!("{}", errs.join("\n"));
    // A bad value for a known key too.
    let t = mutated(file, "LogLevel = \"VERBOSE\";", "LogLevel = \"CHATTY\";");
    assert!(
        !check_tree(&m, t.path()).errors.is_empty(),
        "LogLevel is a declared enum"
    );
    let t = mutated(
        file,
        "GatewayPorts = \"no\";",
        "GatewayPorts = \"sometimes\";",
    );
    assert!(
        check_tree(&m, t.path()).errors.is_empty(),
        "GatewayPorts is nullOr str"
    );
    let (_, errs) = sshd_check(&m, t.path(), "hermes");
    assert!(
        errs.iter().any(
            |e| e.contains("services.openssh.settings.GatewayPorts") && e.contains("sometimes")
        ),
        "{errs:#?}"
    );
}

#[test]
fn algorithm_names_unknown_to_openssh_9_2_are_reported_not_dropped() {
    let m = manifest();
    let file = "nixos/hosts/hermes/ssh.nix";
    // mlkem768x25519-sha256 is NixOS's default first KEX (OpenSSH >= 9.9): a finding, not an error, and not
    // passed to sshd 9.2.
    let t = mutated(
        file,
        "KexAlgorithms = [ \"sntrup761x25519-sha512@openssh.com\"",
        "KexAlgorithms = [ \"mlkem768x25519-sha256\" \"sntrup761x25519-sha512@openssh.com\"",
    );
    let (r, errs) = sshd_check(&m, t.path(), "hermes");
    assert!(errs.is_empty(), "{errs:#?}");
    assert_eq!(r.findings.len(), 1, "{:?}", r.findings);
    assert!(
        r.findings[0].contains("mlkem768x25519-sha256") && r.findings[0].starts_with(file),
        "{:?}",
        r.findings
    );
    assert!(!r.text.contains("mlkem"), "{}", r.text);
    // A host that leaves KexAlgorithms to NixOS gets the default list: the same finding, from nixpkgs.
    let t = mutated(file, "      KexAlgorithms = [", "      # KexAlgorithms = [");
    let (r, errs) = sshd_check(&m, t.path(), "hermes");
    assert!(errs.is_empty(), "{errs:#?}");
    assert!(
        r.findings
            .iter()
            .any(|f| f.contains("nixpkgs default of services.openssh.settings.KexAlgorithms")),
        "{:?}",
        r.findings
    );
    // Any other unknown name is an error naming the Nix line.
    let t = mutated(
        file,
        "Ciphers = [ \"chacha20-poly1305@openssh.com\"",
        "Ciphers = [ \"rot13@example.com\" \"chacha20-poly1305@openssh.com\"",
    );
    let (_, errs) = sshd_check(&m, t.path(), "hermes");
    assert!(
        errs.iter().any(
            |e| e.starts_with(&format!("{file}:{}:", line_of(file, "Ciphers = [")))
                && e.contains("rot13@example.com")
        ),
        "{errs:#?}"
    );
}

#[test]
fn an_unknown_nix_settings_key_is_refused_by_nix() {
    let m = manifest();
    let file = "nixos/hosts/atlas/default.nix";
    let t = mutated(file, "trusted-users = [", "trusted-userz = [");
    assert!(
        check_tree(&m, t.path()).errors.is_empty(),
        "nix.settings is free-form"
    );
    let rep = check_tree(&m, t.path());
    let errs = sshd::nix_conf_errors(&host_defs(&rep, "atlas"));
    assert!(
        errs.iter().any(|e| e.starts_with(&format!(
            "{file}:{}: nix.settings.trusted-userz",
            line_of(file, "trusted-users = [")
        )) && e.contains("unknown setting")),
        "{errs:#?}"
    );
}

#[test]
fn literal_values_are_read_through_lets_wrappers_and_dotted_paths() {
    // A module written in every shape the collector must handle, with one wrong value in each.
    let text = r#"{ config, lib, pkgs, ... }:
let
  port = 70000;
  admin = "ops";
in
with lib;
{
  imports = [ ./other.nix ];
  networking.firewall.allowedTCPPorts = lib.mkForce [ port ];
  services.openssh = mkIf true {
    enable = lib.mkDefault "yes";
    settings.AllowUsers = [ admin ];
    listenAddresses = [ { addr = "${admin}"; port = 22; } ];
  };
  users.users.${admin}.extraGroups = [ "wheel" ];
  environment.systemPackages = [ pkgs.htop ];
  networking.hostName = config.networking.domain;
}
"#;
    let m = manifest();
    let mut rep = Report::default();
    nixopts::check_file(&m, &Default::default(), "t.nix", text, &mut rep);
    assert_eq!(rep.errors.len(), 2, "{:#?}", rep.errors);
    assert!(
        rep.errors[0].starts_with("t.nix:9: networking.firewall.allowedTCPPorts = [ 70000 ]"),
        "{}",
        rep.errors[0]
    );
    assert!(
        rep.errors[1].starts_with("t.nix:11: services.openssh.enable = \"yes\": expected bool"),
        "{}",
        rep.errors[1]
    );
    // networking.hostName from networking.domain (nullOr str) and "${admin}": strings whose content is
    // not known are listed, not silently passed.
    assert!(
        rep.not_checked
            .iter()
            .any(|n| n.starts_with("t.nix:17: networking.hostName")),
        "{:#?}",
        rep.not_checked
    );
    // "${admin}" is a string: it fits addr's nullOr str whatever its content, so it is not listed.
    assert!(
        !rep.not_checked.iter().any(|n| n.starts_with("t.nix:13:")),
        "{:#?}",
        rep.not_checked
    );
    let users: Vec<&Def> = rep.defs.iter().filter(|d| d.path[0] == "users").collect();
    assert_eq!(users[0].path, ["users", "users", "${…}", "extraGroups"]);
    let allow = rep
        .defs
        .iter()
        .find(|d| d.path.last().map(String::as_str) == Some("AllowUsers"))
        .unwrap();
    assert!(
        matches!(&allow.val, Val::List(l) if matches!(&l[0].0, Val::Str(s) if s == "ops")),
        "{:?}",
        allow.val
    );
}
