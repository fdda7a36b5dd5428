//! `labforge deploy` against real OpenSSH servers in network namespaces (tests/netns_lab/mod.rs).

mod netns_lab;
use netns_lab::*;
use serde_json::Value;
use std::process::Output;

const STACK: &str = r#"
[secrets.app_password]
source = "store"

[stacks.web]
description = "test stack"

[stacks.web.networks.web]

[stacks.web.services.app]
image = "nginx:1.27.0@sha256:2a2ef3e2fe7ac2a7ba7e7b0a2e1b0a2e1b0a2e1b0a2e1b0a2e1b0a2e1b0a2e1b"
platforms = ["linux/amd64"]
networks = ["web"]
environment = { APP_PASSWORD = "secret:app_password" }
ports = [{ host = 8080, container = 80, network = "servers" }]

[gates.web-ready]
seed = "001"
title = "web prerequisites"
when = "before:stack:web"
checklist = ["the operator checked the web prerequisites"]
evidence = ["echo evidence-from-the-host"]
"#;

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn events(o: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON event: {l}: {e}")))
        .collect()
}

fn step_status(ev: &[Value], step: &str) -> String {
    ev.iter()
        .find(|e| e["event"] == "step" && e["step"] == step)
        .map(|e| e["status"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("no event for {step}: {ev:?}"))
}

#[test]
fn deploy_blocks_on_gate_then_converges_and_a_second_run_changes_nothing() {
    let mut lab = Lab::new(
        &[HostSpec {
            name: "d1".into(),
            os: "ubuntu",
            stacks: vec!["web".into()],
        }],
        STACK,
    );
    let canary = format!("canary-{}-value", std::process::id());
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_labforge"))
        .args(["secrets", "set", "app_password"])
        .current_dir(lab.dir.path())
        .env("LABFORGE_AGE_IDENTITY", &lab.identity)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(canary.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let d = lab.rendered_dropin("d1");
    lab.start("d1", &d);
    let key = lab.op_key.display().to_string();
    let root = lab.host("d1").root.clone();

    // 0. dry-run on the fresh host: connects, compares, reports what would change, writes nothing
    let o = lab.labforge(&["deploy", "d1", "--identity", &key, "--json", "--dry-run"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "a host that would change → exit 1\n{}",
        text(&o)
    );
    let ev = events(&o);
    assert_eq!(step_status(&ev, "d1:upload:sshd"), "unchanged");
    assert_eq!(step_status(&ev, "d1:firewall"), "would-change");
    assert_eq!(step_status(&ev, "d1:gate:web-ready"), "blocked");
    assert!(!root.join("opt/labforge").exists(), "dry-run wrote files");
    assert!(
        !root.join("etc/nftables.conf").exists(),
        "dry-run wrote the ruleset"
    );
    assert!(!root.join("fake-docker/compose.log").exists());
    assert!(!text(&o).contains(&canary));
    let o = lab.labforge(&["deploy", "d1", "--identity", &key, "--dry-run", "--offline"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("d1:compose-up:web"), "{}", text(&o));

    // 1. the gate is pending: the host stops before the stack, shows evidence, and exit is 1
    let o = lab.labforge(&["deploy", "d1", "--identity", &key, "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let ev = events(&o);
    assert_eq!(step_status(&ev, "d1:gate:web-ready"), "blocked");
    let blocked = ev
        .iter()
        .find(|e| e["step"] == "d1:gate:web-ready")
        .unwrap();
    assert!(blocked["detail"]
        .as_str()
        .unwrap()
        .contains("evidence-from-the-host"));
    assert_eq!(step_status(&ev, "d1:compose-up:web"), "skipped");
    assert_eq!(step_status(&ev, "d1:firewall"), "changed", "{}", text(&o));
    assert!(
        !lab.dir.path().join("gates/web-ready.toml").exists(),
        "labforge must never sign off a gate"
    );
    assert!(!root.join("fake-docker/compose.log").exists());

    // 2. the operator signs off (as `labforge gate confirm` would record it)
    let spec = lab.spec();
    labforge::gate::record(
        &spec,
        lab.dir.path(),
        &spec.gates["web-ready"],
        "test-operator",
        "",
    )
    .unwrap();
    let o = lab.labforge(&["deploy", "d1", "--identity", &key, "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let ev = events(&o);
    assert_eq!(step_status(&ev, "d1:upload:sshd"), "unchanged");
    assert_eq!(step_status(&ev, "d1:upload:web"), "changed");
    assert_eq!(step_status(&ev, "d1:upload-env:web"), "changed");
    assert_eq!(step_status(&ev, "d1:compose-up:web"), "changed");
    assert_eq!(step_status(&ev, "d1:verify"), "ok", "{}", text(&o));
    let env = root.join("opt/labforge/stacks/web/.env");
    let meta = std::fs::metadata(&env).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(std::fs::read_to_string(&env)
        .unwrap()
        .contains(&format!("APP_PASSWORD='{canary}'")));
    assert!(root
        .join("opt/labforge/stacks/web/docker-compose.yml")
        .exists());
    let compose = std::fs::read_to_string(root.join("fake-docker/compose.log")).unwrap();
    assert_eq!(compose.lines().count(), 1, "{compose}");
    assert!(
        compose.contains("--env-file hosts/d1.env --env-file .env up -d"),
        "{compose}"
    );
    assert!(
        !text(&o).contains(&canary),
        "the secret value leaked into deploy output"
    );

    // 3. a second run changes nothing and says so
    let o = lab.labforge(&["deploy", "d1", "--identity", &key]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("no changes"), "{out}");
    assert!(out.contains("unchanged"), "{out}");
    let compose = std::fs::read_to_string(root.join("fake-docker/compose.log")).unwrap();
    assert_eq!(
        compose.lines().count(),
        1,
        "compose must not run for an unchanged stack"
    );
    assert!(!text(&o).contains(&canary));
    // on a terminal the same run is shown as one progress bar per host (a view over the same events)
    let o = std::process::Command::new("script")
        .args(["-q", "-e", "-c"])
        .arg(format!(
            "ip netns exec {} {} deploy d1 --identity {key}",
            lab.ctl,
            env!("CARGO_BIN_EXE_labforge")
        ))
        .arg("/dev/null")
        .current_dir(lab.dir.path())
        .env("LABFORGE_AGE_IDENTITY", &lab.identity)
        .env_remove("SSH_AUTH_SOCK")
        .env("COLUMNS", "160")
        .output()
        .unwrap();
    let tty = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{tty}");
    let spec = lab.spec();
    let plan = labforge::plan::plan(&spec, &[&spec.hosts["d1"]]);
    let n = plan.hosts[0].deploy.len();
    assert!(
        tty.contains(&format!("] {n}/{n} "))
            && tty.contains("Unchanged")
            && tty.contains("no changes"),
        "no progress bar on a terminal:\n{tty}"
    );
    assert!(
        !tty.contains("[d1] "),
        "plain log lines on a terminal:\n{tty}"
    );
    // and a dry-run agrees: nothing would change, exit 0
    let o = lab.labforge(&["deploy", "d1", "--identity", &key, "--json", "--dry-run"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(events(&o)
        .iter()
        .filter(|e| e["event"] == "step")
        .all(|e| e["status"] != "would-change" && e["status"] != "changed"));
    // drift on the host: the dry-run names exactly the file and the restart, and repairs nothing
    let compose_file = root.join("opt/labforge/stacks/web/docker-compose.yml");
    std::fs::write(&compose_file, "# edited on the host\n").unwrap();
    let o = lab.labforge(&["deploy", "d1", "--identity", &key, "--json", "--dry-run"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let ev = events(&o);
    assert_eq!(step_status(&ev, "d1:upload:web"), "would-change");
    assert_eq!(step_status(&ev, "d1:compose-up:web"), "would-change");
    assert_eq!(step_status(&ev, "d1:upload-env:web"), "unchanged");
    assert_eq!(step_status(&ev, "d1:firewall"), "unchanged");
    assert_eq!(
        std::fs::read_to_string(&compose_file).unwrap(),
        "# edited on the host\n"
    );
    assert!(!text(&o).contains(&canary));
    let o = lab.labforge(&["deploy", "d1", "--identity", &key]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // no temp files left anywhere under the host's root
    let o = sh(&format!("find {} -name '*labforge-tmp*'", root.display()));
    assert!(
        o.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}

#[test]
fn changed_host_key_is_refused_before_any_command_and_unknown_keys_need_the_flag() {
    let mut lab = Lab::new(
        &[HostSpec {
            name: "k1".into(),
            os: "ubuntu",
            stacks: vec![],
        }],
        "",
    );
    let d = lab.rendered_dropin("k1");
    lab.start("k1", &d);
    let key = lab.op_key.display().to_string();
    // The store now pins another key than the one the host serves.
    let pubf = lab.dir.path().join("secrets/ssh-host-keys/k1.pub");
    let real = std::fs::read_to_string(&pubf).unwrap();
    let other = lab.dir.path().join("other");
    must(&format!(
        "ssh-keygen -q -t ed25519 -N '' -f {}",
        other.display()
    ));
    std::fs::write(
        &pubf,
        std::fs::read_to_string(other.with_extension("pub")).unwrap(),
    )
    .unwrap();
    let o = lab.labforge(&["deploy", "k1", "--identity", &key]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("HOST KEY MISMATCH"), "{}", text(&o));
    assert!(text(&o).contains("k1:connect"), "{}", text(&o));
    assert_eq!(
        lab.session_log("k1").trim(),
        "",
        "a command reached the host despite the mismatch"
    );
    // The flag does not override a mismatch.
    let o = lab.labforge(&[
        "deploy",
        "k1",
        "--identity",
        &key,
        "--trust-on-first-use",
        "k1",
    ]);
    assert!(text(&o).contains("HOST KEY MISMATCH"));
    assert_eq!(lab.session_log("k1").trim(), "");
    // Unknown host key: refused without the flag, accepted and recorded with it.
    std::fs::remove_file(&pubf).unwrap();
    let o = lab.labforge(&["verify", "k1", "--identity", &key, "--json"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("--trust-on-first-use k1"), "{}", text(&o));
    assert_eq!(lab.session_log("k1").trim(), "");
    let o = lab.labforge(&[
        "verify",
        "k1",
        "--identity",
        &key,
        "--trust-on-first-use",
        "k1",
    ]);
    assert!(!lab.session_log("k1").trim().is_empty(), "{}", text(&o));
    let kh = std::fs::read_to_string(lab.dir.path().join(".labforge/known_hosts")).unwrap();
    let served = real.split_whitespace().nth(1).unwrap();
    assert!(kh.contains("# tofu") && kh.contains(served), "{kh}");
}

/// Runs inside the controller namespace (re-executed by the test below): upload LF_SIZE bytes.
#[test]
#[ignore = "helper, run by upload_killed_midway_keeps_the_old_file_and_a_rerun_converges"]
fn helper_upload() {
    let addr = std::env::var("LF_ADDR").expect("LF_ADDR");
    let size: usize = std::env::var("LF_SIZE").unwrap().parse().unwrap();
    let opts = labforge::transport::ssh::SshOptions {
        user: "ops".into(),
        identity: Some(std::env::var("LF_KEY").unwrap().into()),
        known_hosts: std::env::var("LF_KH").unwrap().into(),
        trust_on_first_use: false,
        connect_timeout: std::time::Duration::from_secs(10),
        command_timeout: std::time::Duration::from_secs(30),
        connect_via: Default::default(),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let r = rt.block_on(async {
        use labforge::transport::Transport;
        let t = labforge::transport::ssh::SshTransport::connect("u1", &addr, 22, &opts).await?;
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        t.upload("u1:upload:big", "/srv/big.bin", &data, 0o640, None)
            .await?;
        anyhow::Ok(())
    });
    match r {
        Ok(()) => println!("UPLOAD-OK"),
        Err(e) => {
            println!("UPLOAD-ERR {e:#}");
            std::process::exit(3);
        }
    }
}

#[test]
fn upload_killed_midway_keeps_the_old_file_and_a_rerun_converges() {
    let mut lab = Lab::new(
        &[HostSpec {
            name: "u1".into(),
            os: "ubuntu",
            stacks: vec![],
        }],
        "",
    );
    let d = lab.rendered_dropin("u1");
    lab.start("u1", &d);
    // known_hosts as labforge writes it
    let o = lab.labforge(&["verify", "u1", "--identity", lab.op_key.to_str().unwrap()]);
    assert!(o.status.code().is_some());
    let root = lab.host("u1").root.clone();
    std::fs::create_dir_all(root.join("srv")).unwrap();
    std::fs::write(root.join("srv/big.bin"), b"old content\n").unwrap();
    let (ctl, mgmt, opk, kh) = (
        lab.ctl.clone(),
        lab.host("u1").mgmt.clone(),
        lab.op_key.clone(),
        lab.dir.path().join(".labforge/known_hosts"),
    );
    let helper = |size: usize| {
        std::process::Command::new("ip")
            .args(["netns", "exec", &ctl])
            .arg(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "helper_upload",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("LF_ADDR", &mgmt)
            .env("LF_SIZE", size.to_string())
            .env("LF_KEY", &opk)
            .env("LF_KH", &kh)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let child = helper(48 * 1024 * 1024);
    // Wait until the temp file is being written, then kill the host's sshd and its sessions.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let o = sh(&format!(
            "find {}/srv -name '.big.bin.labforge-tmp.*' -size +1M",
            root.display()
        ));
        if !o.stdout.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the upload never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    lab.kill_sshd("u1");
    let out = child.wait_with_output().unwrap();
    let msg = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{msg}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(msg.contains("host `u1`"), "{msg}");
    assert!(msg.contains("step `u1:upload:big`"), "{msg}");
    assert!(msg.contains("upload /srv/big.bin"), "{msg}");
    assert!(msg.contains("previous content"), "{msg}");
    assert!(
        msg.contains("connection") && !msg.contains("timed out"),
        "the loss must be seen at once: {msg}"
    );
    assert_eq!(
        std::fs::read(root.join("srv/big.bin")).unwrap(),
        b"old content\n",
        "target half-written"
    );
    // rerun converges: new content, no temp files left
    lab.start("u1", &d);
    let out = helper(3 * 1024 * 1024).wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("UPLOAD-OK"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let got = std::fs::read(root.join("srv/big.bin")).unwrap();
    assert_eq!(got.len(), 3 * 1024 * 1024);
    assert!(got.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8));
    let o = sh(&format!(
        "find {}/srv -name '*labforge-tmp*'",
        root.display()
    ));
    assert!(
        o.stdout.is_empty(),
        "temp files left: {}",
        String::from_utf8_lossy(&o.stdout)
    );
}

/// Issue 17: deploy uploaded whatever was on disk. Each rendered file's sha256 is in the plan; a file edited
/// after `render` (here: the sshd drop-in given a weakening line, and a stack file) is refused before anything
/// reaches the host, and `labforge render` puts the planned bytes back so the next deploy converges.
#[test]
fn deploy_refuses_a_rendered_file_tampered_with_after_render() {
    let mut lab = Lab::new(
        &[HostSpec {
            name: "t1".into(),
            os: "ubuntu",
            stacks: vec![],
        }],
        "",
    );
    let d = lab.rendered_dropin("t1");
    lab.start("t1", &d);
    let key = lab.op_key.display().to_string();
    // The plan carries what deploy may install: typed mode and owner, the sha256 of each file.
    let o = lab.labforge(&["plan", "t1", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let plan: Value = serde_json::from_slice(&o.stdout).unwrap();
    let up = plan["hosts"][0]["deploy"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "t1:upload:sshd")
        .expect("an sshd upload step")["action"]
        .clone();
    assert_eq!(up["mode"], "0644", "{up}");
    assert_eq!(up["owner"], "root:root", "{up}");
    assert_eq!(up["purpose"]["kind"], "sshd-dropin", "{up}");
    let f = &up["files"][0];
    assert_eq!(f["source"], "rendered/t1/sshd_config.d/10-labforge.conf");
    assert_eq!(f["to"], "/etc/ssh/sshd_config.d/10-labforge.conf");
    let local = lab
        .dir
        .path()
        .join("rendered/t1/sshd_config.d/10-labforge.conf");
    let planned = f["sha256"]
        .as_str()
        .expect("sha256 in the plan")
        .to_string();
    assert_eq!(
        planned,
        labforge::transport::sha256_hex(&std::fs::read(&local).unwrap())
    );

    // Tamper: a weakening line appended after render.
    std::fs::write(&local, format!("{d}PasswordAuthentication yes\n")).unwrap();
    let on_host = lab
        .host("t1")
        .root
        .join("etc/ssh/sshd_config.d/10-labforge.conf");
    let before = std::fs::read_to_string(&on_host).unwrap();
    let o = lab.labforge(&["deploy", "t1", "--identity", &key]);
    assert_ne!(o.status.code(), Some(0), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("not what the plan rendered") && t.contains("run `labforge render`"),
        "{t}"
    );
    assert_eq!(
        std::fs::read_to_string(&on_host).unwrap(),
        before,
        "the tampered drop-in reached the host"
    );

    // Render restores the planned bytes; the deploy then converges.
    let o = lab.labforge(&["render"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read_to_string(&local).unwrap(), d);
    let o = lab.labforge(&["deploy", "t1", "--identity", &key]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}
