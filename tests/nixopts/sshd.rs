//! Free-form daemon settings judged by the daemon: a host's `services.openssh.*` written as sshd_config the
//! way nixpkgs' sshd.nix does it and run through Debian's `sshd -t` (OpenSSH 9.2); `nix.settings` written as
//! nix.conf and read by Debian's Nix 2.8 (`nix show-config` warns on an unknown setting).
use super::{Def, Val};
use crate::nixopts::types::Manifest;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

pub struct Rendered {
    /// sshd_config text as NixOS would write it (host-key and sftp paths substituted, see `substituted`).
    pub text: String,
    /// Origin (file:line option) of each line, 1-based like sshd's messages.
    pub origin: Vec<String>,
    pub errors: Vec<String>,
    /// Algorithm names OpenSSH 9.2 does not know but newer OpenSSH does: reported, left out of the run.
    pub findings: Vec<String>,
    pub substituted: Vec<String>,
}

fn ssh_q(what: &str) -> Vec<String> {
    let o = Command::new(crate::common::oracle("ssh"))
        .args(["-Q", what])
        .output()
        .expect("running ssh -Q");
    assert!(o.status.success(), "ssh -Q {what} failed");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// What this machine's OpenSSH knows, per algorithm class.
pub fn supported() -> BTreeMap<&'static str, Vec<String>> {
    let mut key = ssh_q("key");
    key.extend(ssh_q("key-sig"));
    BTreeMap::from([
        ("kex", ssh_q("kex")),
        ("cipher", ssh_q("cipher")),
        ("mac", ssh_q("mac")),
        ("key", key),
    ])
}

fn class_of(key: &str) -> Option<&'static str> {
    match key {
        "KexAlgorithms" => Some("kex"),
        "Ciphers" => Some("cipher"),
        "Macs" | "MACs" => Some("mac"),
        "HostKeyAlgorithms"
        | "PubkeyAcceptedAlgorithms"
        | "PubkeyAcceptedKeyTypes"
        | "CASignatureAlgorithms"
        | "HostbasedAcceptedAlgorithms" => Some("key"),
        _ => None,
    }
}

fn origin(d: &Def) -> String {
    format!("{}:{}: {}", d.file, d.line, d.path.join("."))
}

fn toml_to_val(v: &toml::Value) -> Val {
    match v {
        toml::Value::String(s) => Val::Str(s.clone()),
        toml::Value::Integer(i) => Val::Int(*i),
        toml::Value::Boolean(b) => Val::Bool(*b),
        toml::Value::Array(a) => Val::List(a.iter().map(|x| (toml_to_val(x), 0)).collect()),
        other => Val::Str(other.to_string()),
    }
}

/// sshd_config for the definitions of one host (None when services.openssh.enable is not true).
pub fn render(
    m: &Manifest,
    defs: &[&Def],
    keydir: &Path,
    supported: &BTreeMap<&'static str, Vec<String>>,
) -> Option<Rendered> {
    let ssh: Vec<&&Def> = defs
        .iter()
        .filter(|d| d.path.len() > 2 && d.path[0] == "services" && d.path[1] == "openssh")
        .collect();
    let get = |name: &str| ssh.iter().find(|d| d.path.len() == 3 && d.path[2] == name);
    if !matches!(get("enable").map(|d| &d.val), Some(Val::Bool(true))) {
        return None;
    }
    let mut r = Rendered {
        text: String::new(),
        origin: Vec::new(),
        errors: Vec::new(),
        findings: Vec::new(),
        substituted: Vec::new(),
    };
    let mut lines: Vec<(String, String)> = Vec::new();
    // settings: nixpkgs defaults, overridden by the host's definitions; nulls dropped; sorted by name.
    let mut settings: BTreeMap<String, (Val, String)> = m
        .sshd_defaults
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                (
                    toml_to_val(v),
                    format!("nixpkgs default of services.openssh.settings.{k}"),
                ),
            )
        })
        .collect();
    for d in ssh
        .iter()
        .filter(|d| d.path.len() == 4 && d.path[2] == "settings")
    {
        settings.insert(d.path[3].clone(), (d.val.clone(), origin(d)));
    }
    for (k, (v, o)) in &settings {
        let value = match v {
            Val::Null => continue,
            Val::Bool(true) => "yes".to_string(),
            Val::Bool(false) => "no".to_string(),
            Val::Int(i) => i.to_string(),
            Val::Str(s) | Val::Path(s) => s.clone(),
            Val::List(items) => {
                let sep = if m.sshd_comma_keys.contains(k) {
                    ","
                } else if m.sshd_list_keys.contains(k) {
                    " "
                } else {
                    r.errors.push(format!("{o}: a list for {k}: nixpkgs' sshd settings generator throws \"list value for unknown key {k}\""));
                    continue;
                };
                let mut parts = Vec::new();
                for (x, _) in items {
                    match x {
                        Val::Str(s) => parts.push(s.clone()),
                        other => r
                            .errors
                            .push(format!("{o}: element {} is not a string", other.show())),
                    }
                }
                parts.join(sep)
            }
            other => {
                r.errors.push(format!(
                    "{o}: {} is not a literal: cannot write sshd_config",
                    other.show()
                ));
                continue;
            }
        };
        // Algorithm names against what this OpenSSH (9.2) knows.
        let value = match class_of(k) {
            Some(class) => {
                let known = &supported[class];
                let newer = m.sshd_newer.get(class).cloned().unwrap_or_default();
                let mut kept = Vec::new();
                for name in value.split(',') {
                    let bare = name.trim_start_matches(['+', '-', '^']);
                    if known.iter().any(|x| x == bare) {
                        kept.push(name.to_string());
                    } else if newer.iter().any(|x| x == bare) {
                        r.findings.push(format!("{o}: {k} `{bare}` is unknown to OpenSSH 9.2 (ssh -Q {class}) but known to newer OpenSSH (NixOS's): not verifiable here, left out of the sshd -t run"));
                    } else {
                        r.errors.push(format!("{o}: {k} `{bare}` is not an OpenSSH algorithm (`ssh -Q {class}` of OpenSSH 9.2 does not list it, nor does tests/nixos-options.toml [sshd_newer_than_9_2])"));
                    }
                }
                kept.join(",")
            }
            None => value,
        };
        lines.push((format!("{k} {value}"), o.clone()));
    }
    // extraConfig, in sshd.nix's order.
    lines.push((
        "AddressFamily any".into(),
        "sshd.nix extraConfig (networking.enableIPv6 defaults to true)".into(),
    ));
    let ports: Vec<(String, String)> = match get("ports") {
        Some(d) => match &d.val {
            Val::List(l) => l.iter().map(|(p, _)| (p.show(), origin(d))).collect(),
            other => {
                r.errors.push(format!(
                    "{}: ports = {}: not a list",
                    origin(d),
                    other.show()
                ));
                vec![]
            }
        },
        None => vec![(
            "22".into(),
            "nixpkgs default of services.openssh.ports".into(),
        )],
    };
    for (p, o) in &ports {
        lines.push((format!("Port {p}"), o.clone()));
    }
    let mut listen: BTreeMap<String, (Option<String>, Option<String>, String)> = BTreeMap::new();
    for d in ssh
        .iter()
        .filter(|d| d.path.len() == 5 && d.path[2] == "listenAddresses")
    {
        let e = listen
            .entry(d.path[3].clone())
            .or_insert((None, None, origin(d)));
        match (d.path[4].as_str(), &d.val) {
            ("addr", Val::Str(a)) => e.0 = Some(a.clone()),
            ("port", Val::Int(p)) => e.1 = Some(p.to_string()),
            ("port", Val::Null) => {}
            (f, v) => r.errors.push(format!(
                "{}: {f} = {}: cannot write ListenAddress",
                origin(d),
                v.show()
            )),
        }
    }
    for (addr, port, o) in listen.values() {
        match addr {
            Some(a) => lines.push((
                format!(
                    "ListenAddress {a}{}",
                    port.as_ref().map(|p| format!(":{p}")).unwrap_or_default()
                ),
                o.clone(),
            )),
            None => r.errors.push(format!(
                "{o}: addr must be specified in each listenAddresses entry (sshd.nix assertion)"
            )),
        }
    }
    lines.push((
        "Subsystem sftp /usr/lib/openssh/sftp-server".into(),
        "sshd.nix extraConfig (allowSFTP; sftp-server path substituted)".into(),
    ));
    r.substituted
        .push("Subsystem sftp: the Nix store's sftp-server → /usr/lib/openssh/sftp-server".into());
    let homedir = !matches!(
        get("authorizedKeysInHomedir").map(|d| &d.val),
        Some(Val::Bool(false))
    );
    let akf = if homedir {
        "%h/.ssh/authorized_keys /etc/ssh/authorized_keys.d/%u"
    } else {
        "/etc/ssh/authorized_keys.d/%u"
    };
    lines.push((
        format!("AuthorizedKeysFile {akf}"),
        "sshd.nix extraConfig (authorizedKeysInHomedir)".into(),
    ));
    let keys: Vec<(String, String, String)> = match get("hostKeys") {
        Some(d) => match &d.val {
            Val::List(l) => l
                .iter()
                .filter_map(|(k, _)| match k {
                    Val::Attrs(a) => {
                        let f = |n: &str| {
                            a.iter()
                                .find(|(k, _, _)| k == n)
                                .and_then(|(_, v, _)| match v {
                                    Val::Str(s) => Some(s.clone()),
                                    _ => None,
                                })
                        };
                        Some((
                            f("type").unwrap_or_default(),
                            f("path").unwrap_or_default(),
                            origin(d),
                        ))
                    }
                    _ => None,
                })
                .collect(),
            _ => vec![],
        },
        None => vec![
            (
                "rsa".into(),
                "/etc/ssh/ssh_host_rsa_key".into(),
                "nixpkgs default hostKeys".into(),
            ),
            (
                "ed25519".into(),
                "/etc/ssh/ssh_host_ed25519_key".into(),
                "nixpkgs default hostKeys".into(),
            ),
        ],
    };
    for (i, (ty, path, o)) in keys.iter().enumerate() {
        let local = keydir.join(format!("hostkey{i}_{ty}"));
        if !local.exists() {
            let st = Command::new(crate::common::oracle("ssh-keygen"))
                .args(["-q", "-t", ty, "-N", "", "-f"])
                .arg(&local)
                .output()
                .expect("ssh-keygen");
            if !st.status.success() {
                r.errors.push(format!(
                    "{o}: host key type {ty:?}: ssh-keygen -t {ty} fails: {}",
                    String::from_utf8_lossy(&st.stderr).trim()
                ));
                continue;
            }
        }
        r.substituted
            .push(format!("HostKey {path} → a fresh {ty} key"));
        lines.push((format!("HostKey {}", local.display()), o.clone()));
    }
    for (l, o) in lines {
        r.text.push_str(&l);
        r.text.push('\n');
        r.origin.push(o);
    }
    Some(r)
}

/// `sshd -t` then `sshd -T` (with the connection spec nixpkgs' own check uses) on the rendered config.
pub fn run_sshd(dir: &Path, r: &Rendered, listen: &[(String, String)]) -> Vec<String> {
    let f = dir.join("sshd_config");
    std::fs::write(&f, &r.text).unwrap();
    let mut errs = Vec::new();
    let mut runs: Vec<Vec<String>> = vec![vec!["-t".into()]];
    for (addr, port) in listen {
        runs.push(vec![
            "-T".into(),
            "-C".into(),
            format!("laddr={addr},lport={port},user=root,host=localhost,addr=127.0.0.1"),
        ]);
    }
    let line_re = regex::Regex::new(r"line (\d+)").unwrap();
    for args in runs {
        let o = Command::new(crate::common::oracle("sshd"))
            .args(&args)
            .arg("-f")
            .arg(&f)
            .output()
            .expect("running sshd");
        if o.status.success() {
            continue;
        }
        for l in String::from_utf8_lossy(&o.stderr).lines() {
            let at = line_re
                .captures(l)
                .and_then(|c| c[1].parse::<usize>().ok())
                .and_then(|n| r.origin.get(n - 1).cloned())
                .unwrap_or_else(|| "sshd_config".into());
            errs.push(format!("{at}: sshd {}: {l}", args[0]));
        }
        break;
    }
    errs
}

/// nix.conf from `nix.settings` definitions, read by Nix 2.8: unknown settings are errors.
pub fn nix_conf_errors(defs: &[&Def]) -> Vec<String> {
    let mut conf = String::new();
    let mut origins = BTreeMap::new();
    for d in defs
        .iter()
        .filter(|d| d.path.len() == 3 && d.path[0] == "nix" && d.path[1] == "settings")
    {
        let v = match &d.val {
            Val::List(l) => l
                .iter()
                .map(|(x, _)| x.show().trim_matches('"').to_string())
                .collect::<Vec<_>>()
                .join(" "),
            Val::Bool(b) => b.to_string(),
            Val::Str(s) => s.clone(),
            other => other.show(),
        };
        conf.push_str(&format!("{} = {v}\n", d.path[2]));
        origins.insert(
            d.path[2].clone(),
            format!("{}:{}: {}", d.file, d.line, d.path.join(".")),
        );
    }
    if conf.is_empty() {
        return vec![];
    }
    let o = Command::new(crate::common::oracle("nix"))
        .arg("show-config")
        .env("NIX_CONFIG", &conf)
        .env(
            "NIX_CONF_DIR",
            std::env::temp_dir().join("labforge-empty-nix-conf-dir"),
        )
        .output()
        .expect("running nix show-config");
    let err = String::from_utf8_lossy(&o.stderr);
    let mut out = Vec::new();
    for l in err.lines() {
        if let Some(rest) = l.split("unknown setting '").nth(1) {
            let name = rest.split('\'').next().unwrap_or("");
            let at = origins
                .get(name)
                .cloned()
                .unwrap_or_else(|| "nix.settings".into());
            out.push(format!("{at}: Nix 2.8 `nix show-config`: {l}"));
        }
    }
    if !o.status.success() {
        out.push(format!("nix show-config failed: {err}"));
    }
    out
}
