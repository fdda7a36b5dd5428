//! NixOS deploy with magic rollback, against a real sshd whose session PATH holds fake `nixos-rebuild`,
//! `nix-env` and `nix-store` (tests/netns_lab/mod.rs): generations are directories under the host's root,
//! `switch-to-configuration` of a "broken" generation makes the host refuse new SSH sessions.

mod netns_lab;
use netns_lab::*;
use serde_json::Value;

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn setup() -> Lab {
    let mut lab = Lab::new(
        &[
            HostSpec {
                name: "n1".into(),
                os: "nixos",
                stacks: vec![],
            },
            HostSpec {
                name: "x1".into(),
                os: "ubuntu",
                stacks: vec![],
            },
        ],
        "",
    );
    // `Lab::new` rendered the lab: n1's flake, modules and host key are the NixOS backend's own.
    let (n1, x1) = (lab.host("n1").mgmt.clone(), lab.host("x1").mgmt.clone());
    let (n1s, x1s) = (
        lab.host("n1").servers.clone(),
        lab.host("x1").servers.clone(),
    );
    // The NixOS module renders the same hardened sshd settings; reuse the Ubuntu drop-in for this sshd.
    let d = lab.rendered_dropin("x1").replace(&x1, &n1);
    lab.start("n1", &d);
    let fw = std::fs::read_to_string(lab.dir.path().join("rendered/x1/nftables.conf"))
        .unwrap()
        .replace(&x1, &n1)
        .replace(&x1s, &n1s);
    let fwf = lab.dir.path().join("n1-nft.conf");
    std::fs::write(&fwf, fw).unwrap();
    must(&format!(
        "ip netns exec {} nft -f {}",
        lab.host("n1").ns,
        fwf.display()
    ));
    let r = lab.host("n1").root.display().to_string();
    let gen = |n: u32| {
        format!(
            "mkdir -p {r}/nix/store/gen-{n}/bin && cat > {r}/nix/store/gen-{n}/bin/switch-to-configuration <<'X'\n#!/bin/sh\nif [ -e {r}/nix/store/gen-{n}/broken ]; then touch {r}/run/broken; else rm -f {r}/run/broken; fi\necho gen-{n} > {r}/run/current-system\nX\nchmod 755 {r}/nix/store/gen-{n}/bin/switch-to-configuration"
        )
    };
    must(&gen(0));
    must(&format!("mkdir -p {r}/nix/var/nix/profiles && ln -sfn {r}/nix/store/gen-0 {r}/nix/var/nix/profiles/system"));
    let fake = |name: &str, body: &str| {
        let p = format!("{r}/fakebin/{name}");
        std::fs::write(&p, format!("#!/bin/sh\n{body}")).unwrap();
        must(&format!("chmod 755 {p}"));
    };
    // nixos-rebuild switch --flake DIR#HOST: a new generation, broken if the test planted the marker.
    fake(
        "nixos-rebuild",
        &format!(
            "[ \"$1\" = switch ] && [ \"$2\" = --flake ] || exit 2\n[ -f \"${{3%#*}}/flake.nix\" ] || {{ echo \"no flake at $3\" >&2; exit 1; }}\nn=$(ls {r}/nix/store | wc -l)\n{}\n[ -e {r}/break-next ] && touch {r}/nix/store/gen-$n/broken\nln -sfn {r}/nix/store/gen-$n {r}/nix/var/nix/profiles/system\nexec {r}/nix/store/gen-$n/bin/switch-to-configuration switch\n",
            gen(999).replace("gen-999", "gen-$n").replace("<<'X'", "<<X")
        ),
    );
    fake(
        "nix-env",
        "[ \"$1\" = -p ] && [ \"$3\" = --set ] || exit 2\nln -sfn \"$4\" \"$2\"\n",
    );
    fake(
        "nix-store",
        "printf '%s\\n' /nix/store/aaaa-glibc-2.40 /nix/store/bbbb-openssh-9.9p1\n",
    );
    lab
}

/// Runs inside the controller namespace: deploy n1 through the library with the plan's NixOS artifacts
/// (the CLI path is identical from here on).
#[test]
#[ignore = "helper, run by the tests below"]
fn helper_deploy_nixos() {
    use std::sync::Arc;
    let dir = std::path::PathBuf::from(std::env::var("LF_LAB").unwrap());
    let spec = labforge::spec::load_dir(&dir.join("hosts"))
        .unwrap()
        .spec
        .unwrap();
    let n1 = &spec.hosts["n1"];
    let plan = labforge::plan::plan(&spec, &[n1]);
    let hp = &plan.hosts[0];
    assert!(
        hp.artifacts
            .iter()
            .any(|a| a.path == "nixos/hosts/n1/default.nix" && a.sha256.is_some()),
        "the plan lists n1's module with its hash"
    );
    let kh = dir.join(".labforge/known_hosts");
    let public = std::fs::read_to_string(dir.join("secrets/ssh-host-keys/n1.pub")).unwrap();
    labforge::transport::known_hosts::write(
        &kh,
        &[(
            "n1".into(),
            n1.management_address().unwrap().to_string(),
            22,
            public.trim().into(),
        )],
    )
    .unwrap();
    let spec = Arc::new(spec);
    let connector = Arc::new(labforge::deploy::SshConnector {
        spec: spec.clone(),
        opts: labforge::transport::ssh::SshOptions {
            user: "ops".into(),
            identity: Some(dir.join("op_key")),
            known_hosts: kh,
            trust_on_first_use: false,
            connect_timeout: std::time::Duration::from_secs(5),
            command_timeout: std::time::Duration::from_secs(60),
            connect_via: Default::default(),
        },
        tofu: vec![],
        probe_timeout: std::time::Duration::from_secs(2),
        per_host_user: false,
    });
    let ctx = Arc::new(labforge::deploy::Ctx {
        spec: spec.clone(),
        root: dir.clone(),
        connector,
        sink: labforge::deploy::sink(true),
        confirm_timeout: std::time::Duration::from_secs(
            std::env::var("LF_TIMEOUT").unwrap().parse().unwrap(),
        ),
        secrets: Arc::new(|n: &str| Err(anyhow::anyhow!("no secret {n} in this test"))),
        dry_run: false,
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = rt.block_on(labforge::deploy::deploy(ctx, plan.hosts.clone(), 1));
    println!("{}", serde_json::json!({"event": "summary", "hosts": s}));
}

fn deploy(lab: &Lab, timeout: u32) -> std::process::Output {
    std::process::Command::new("ip")
        .args(["netns", "exec", &lab.ctl])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_deploy_nixos",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
            "-q",
        ])
        .env("LF_LAB", lab.dir.path())
        .env("LF_TIMEOUT", timeout.to_string())
        .output()
        .unwrap()
}

fn summary(o: &std::process::Output) -> Value {
    events(o)
        .into_iter()
        .find(|e| e["event"] == "summary")
        .unwrap_or_else(|| panic!("no summary: {}", text(o)))
}

fn events(o: &std::process::Output) -> Vec<Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn nixos_switch_confirmed_on_a_fresh_connection_then_unchanged() {
    let lab = setup();
    let r = lab.host("n1").root.clone();
    let o = deploy(&lab, 60);
    assert_eq!(summary(&o)["hosts"][0]["status"], "changed", "{}", text(&o));
    let ev = events(&o);
    let sw = ev.iter().find(|e| e["step"] == "n1:nixos-switch").unwrap();
    assert_eq!(sw["status"], "changed", "{sw}");
    assert!(std::fs::read_link(r.join("nix/var/nix/profiles/system"))
        .unwrap()
        .ends_with("gen-1"));
    assert!(r.join("etc/labforge/flake/flake.nix").exists());
    let confirms = std::fs::read_dir(r.join("run/labforge"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("confirm-"))
        .count();
    assert_eq!(
        confirms, 1,
        "the fresh connection writes the per-deploy confirmation"
    );
    // the session log shows the confirmation came from a different session than the switch
    let log = lab.session_log("n1");
    let sw_line = log
        .lines()
        .position(|l| l.contains("nixos-rebuild"))
        .unwrap();
    assert!(
        log.lines().skip(sw_line + 1).any(|l| l.trim() == "true"),
        "{log}"
    );
    let o = deploy(&lab, 60);
    assert_eq!(
        summary(&o)["hosts"][0]["status"],
        "unchanged",
        "{}",
        text(&o)
    );
    assert!(std::fs::read_link(r.join("nix/var/nix/profiles/system"))
        .unwrap()
        .ends_with("gen-1"));
}

#[test]
fn nixos_switch_that_locks_out_ssh_is_rolled_back_by_the_host_itself() {
    let lab = setup();
    let r = lab.host("n1").root.clone();
    std::fs::write(r.join("break-next"), "").unwrap();
    let o = deploy(&lab, 4);
    assert_eq!(summary(&o)["hosts"][0]["status"], "failed", "{}", text(&o));
    let ev = events(&o);
    let sw = ev.iter().find(|e| e["step"] == "n1:nixos-switch").unwrap();
    assert_eq!(sw["status"], "failed", "{sw}");
    let detail = sw["detail"].as_str().unwrap();
    assert!(detail.contains("rolled back to"), "{detail}");
    assert!(
        detail.contains("armed rollback timer restored the previous generation"),
        "{detail}"
    );
    // the previous generation is active again and the host accepts logins
    assert!(std::fs::read_link(r.join("nix/var/nix/profiles/system"))
        .unwrap()
        .ends_with("gen-0"));
    assert!(!r.join("run/broken").exists());
    assert_eq!(
        std::fs::read_to_string(r.join("run/current-system"))
            .unwrap()
            .trim(),
        "gen-0"
    );
    let rolled = std::fs::read_dir(r.join("run/labforge"))
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("rolled-back-"));
    assert!(rolled);
    // the host's remaining steps (verify) never ran after the failed switch
    assert!(!ev.iter().any(|e| e["step"] == "n1:verify"), "{ev:?}");
}
