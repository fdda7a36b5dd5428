//! A lab of real OpenSSH servers for deploy/verify tests and the P3 benchmark (run as root).
//!
//! * One network namespace per host plus one for the controller. This kernel has no 802.1Q, so each VLAN is
//!   its own veth pair per host, joined in the controller namespace by one bridge per VLAN (br99 = mgmt
//!   10.99.0.1/24, br60 = servers 10.60.0.1/24). Host-side interfaces carry the spec's names (ens19 mgmt,
//!   ens18 servers), so the rendered nftables ruleset loads unchanged.
//! * Each host's sshd is the Debian binary (`/usr/sbin/sshd -D -e`) started with `ip netns exec NS unshare -m`:
//!   in its private mount namespace the host's own view is bind-mounted over `/etc/ssh` (sshd_config that
//!   includes `sshd_config.d/10-labforge.conf` — the drop-in labforge rendered, or a weakened copy — and the
//!   host key from the secrets store), `/etc/passwd`, `/etc/group`, `/etc/shadow` (adds the admin `ops`,
//!   UID 4242) and `/etc/sudoers` (ops may sudo; secure_path starts with the host's fake bin dir).
//! * labforge logs in as `ops` and uses the real `sudo`, so `sshd -T`, `ss`, `nft` (the ruleset really is
//!   loaded in the host's namespace) and `getent` are the real tools seeing the host's namespaces.
//!   A `ForceCommand` wrapper sets `LABFORGE_ROOT` (files labforge writes land under the host's directory,
//!   never in the machine's /etc) and logs every command; the fake bin dir provides `docker` (canned
//!   `docker inspect` output), `systemctl` (reload = SIGHUP to this sshd), `nixos-rebuild`/`nix-env`/
//!   `nix-store` for the NixOS rollback test.
//! * Everything is torn down in Drop: sshd and its session processes (by pid), then the namespaces.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const ADMIN_UID: u32 = 4242;
static SEQ: AtomicUsize = AtomicUsize::new(0);

pub fn sh(cmd: &str) -> Output {
    Command::new("sh").arg("-c").arg(cmd).output().expect("sh")
}

pub fn must(cmd: &str) {
    let o = sh(cmd);
    assert!(
        o.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

pub fn require_root() {
    let o = sh("id -u");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "0",
        "the real-sshd tests need root (network namespaces, bind mounts)"
    );
    for t in [
        "/usr/sbin/sshd",
        "/usr/bin/sudo",
        "/usr/bin/unshare",
        "/usr/sbin/nft",
        "/usr/bin/ssh-keygen",
    ] {
        assert!(
            Path::new(t).exists(),
            "{t} missing: run `bash scripts/install-test-deps.sh`"
        );
    }
}

/// The lab has no systemd (no PID 1 manager in a network namespace), so `systemd-run --unit=U
/// --on-active=N CMD…` is modelled by this stand-in: it starts `sleep N; CMD…` in its own session in the
/// background (surviving the SSH session, the controller and a killed connection, as a transient timer
/// unit does) and records the sleeper's pid under `run/fake-systemd/U.pid`. `systemctl stop U.timer`
/// ([`FAKE_STOP_TIMER`]) kills that session before it fires, as stopping the timer unit would. What it does
/// not model: timers surviving a reboot of the host (transient units do not either).
pub const FAKE_SYSTEMD_RUN: &str = r#"unit=; delay=
while [ $# -gt 0 ]; do
  case "$1" in
    --unit=*) unit=${1#--unit=};;
    --on-active=*) delay=${1#--on-active=};;
    --*) ;;
    *) break;;
  esac
  shift
done
[ -n "$unit" ] && [ -n "$delay" ] || { echo "fake systemd-run: needs --unit= and --on-active=" >&2; exit 1; }
delay=${delay%s}
mkdir -p {rs}/run/fake-systemd
pidf={rs}/run/fake-systemd/$unit.pid
rm -f "$pidf"
setsid sh -c 'echo $$ > "$1"; sleep "$2"; shift 2; "$@"; echo "$$ exit $?" >> {rs}/run/fake-systemd/fired.log' sh "$pidf" "$delay" "$@" >>{rs}/run/fake-systemd/$unit.log 2>&1 </dev/null &
while [ ! -s "$pidf" ]; do sleep 0.05; done
echo "$unit armed for ${delay}s: $*" >> {rs}/run/fake-systemd/armed.log
"#;

/// The `systemctl stop U.timer` arm of the fake systemctl (see [`FAKE_SYSTEMD_RUN`]).
pub const FAKE_STOP_TIMER: &str = r#"u=${2%.timer}; if [ -f {rs}/run/fake-systemd/$u.pid ]; then kill -TERM -"$(cat {rs}/run/fake-systemd/$u.pid)" 2>/dev/null; rm -f {rs}/run/fake-systemd/$u.pid; echo "$u stopped" >> {rs}/run/fake-systemd/armed.log; fi"#;

pub struct HostSpec {
    pub name: String,
    pub os: &'static str,
    pub stacks: Vec<String>,
}

pub struct TestHost {
    pub name: String,
    pub index: usize,
    pub ns: String,
    pub root: PathBuf,
    pub mgmt: String,
    pub servers: String,
    pub child: Option<Child>,
    /// Stands in for the containers' published ports (docker-proxy's listeners): no Docker engine runs here.
    pub services: Option<Child>,
    /// Other processes started in the host's namespace (killed with the host).
    pub extra: Vec<Child>,
}

/// A local account besides the admin `ops` (for the "every account that can log in" checks).
#[derive(Clone, Default)]
pub struct ExtraUser {
    pub name: String,
    pub uid: u32,
    pub shell: String,
    /// Lines of `~/.ssh/authorized_keys` (none = no file).
    pub authorized_keys: Option<String>,
    /// Supplementary groups (created when missing).
    pub groups: Vec<String>,
}

/// How a test host differs from the plain one (all optional).
#[derive(Clone, Default)]
pub struct StartOpts {
    /// The admin's login shell (default /bin/sh). sshd runs every command through it, as on a real host.
    pub admin_shell: Option<String>,
    /// The admin's `~/.bashrc`.
    pub admin_bashrc: Option<String>,
    /// Shell text the session wrapper runs after the command (a `ForceCommand` that appends output).
    pub after_command: Option<String>,
    pub extra_users: Vec<ExtraUser>,
    /// Extra files under the host's view: (absolute path inside the host, content). `/etc/ssh/...` paths
    /// land in the bind-mounted /etc/ssh.
    pub files: Vec<(String, String)>,
    /// The body of the fake `systemctl` (default: `reload ssh` = SIGHUP to this sshd). `{rs}` is replaced by
    /// the host's root directory.
    pub systemctl: Option<String>,
}

pub struct Lab {
    pub dir: tempfile::TempDir,
    pub ctl: String,
    pub hosts: Vec<TestHost>,
    pub identity: PathBuf,
    pub op_key: PathBuf,
    pub op_pub: String,
}

fn pid_children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            // pid (comm) state ppid …
            let Some(rest) = stat.rsplit_once(')').map(|x| x.1) else {
                continue;
            };
            let ppid: u32 = rest
                .split_whitespace()
                .nth(1)
                .and_then(|x| x.parse().ok())
                .unwrap_or(0);
            if ppid == pid {
                out.push(p);
            }
        }
    }
    out
}

/// `pid` and all its descendants (depth first).
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut v = vec![pid];
    let mut i = 0;
    while i < v.len() {
        let c = pid_children(v[i]);
        v.extend(c);
        i += 1;
    }
    v
}

pub fn kill_tree(pid: u32) {
    for p in process_tree(pid).into_iter().rev() {
        unsafe_kill(p);
    }
}

fn unsafe_kill(p: u32) {
    let _ = Command::new("kill")
        .arg("-KILL")
        .arg(p.to_string())
        .stderr(Stdio::null())
        .status();
}

impl Lab {
    /// Write a spec with these hosts, render it, and create the controller namespace with one bridge per VLAN.
    pub fn new(hosts: &[HostSpec], extra_spec: &str) -> Lab {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("lf-lab-")
            .tempdir()
            .unwrap();
        let d = dir.path();
        let seq = SEQ.fetch_add(1, Ordering::SeqCst);
        let tag = format!("lf{}x{}", std::process::id() % 100000, seq);
        let op_key = d.join("op_key");
        must(&format!(
            "ssh-keygen -q -t ed25519 -N '' -C operator -f {}",
            op_key.display()
        ));
        let op_pub = std::fs::read_to_string(d.join("op_key.pub"))
            .unwrap()
            .trim()
            .to_string();
        let mut spec = format!(
            r#"[site]
name = "t"
domain = "t.example.net"
timezone = "UTC"

[[site.admins]]
name = "ops"
ssh_keys = ["{op_pub}"]

[networks.mgmt]
vlan = 99
cidr = "10.99.0.0/24"
gateway = "10.99.0.1"
role = "management"

[networks.servers]
vlan = 60
cidr = "10.60.0.0/24"
gateway = "10.60.0.1"
role = "servers"

[networks.user]
vlan = 20
cidr = "10.20.0.0/24"
gateway = "10.20.0.1"
role = "user"
{extra_spec}
"#
        );
        for (i, h) in hosts.iter().enumerate() {
            let n = 10 + i;
            let stacks = h
                .stacks
                .iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(", ");
            let nix = if h.os == "nixos" {
                "state_version = \"25.05\"\n"
            } else {
                ""
            };
            spec.push_str(&format!(
                r#"
[hosts.{name}]
os = "{os}"
arch = "x86_64"
board = "vm"
role = "server"
stacks = [{stacks}]
{nix}
[hosts.{name}.interfaces.ens19]
mac = "52:54:00:00:{hi:02x}:{lo:02x}"
network = "mgmt"
address = "10.99.{hi}.{lo}"

[hosts.{name}.interfaces.ens18]
mac = "52:54:00:01:{hi:02x}:{lo:02x}"
network = "servers"
address = "10.60.{hi}.{lo}"
"#,
                name = h.name,
                os = h.os,
                hi = n / 250,
                lo = n % 250 + 2,
            ));
        }
        std::fs::create_dir_all(d.join("hosts")).unwrap();
        std::fs::write(d.join("hosts/site.toml"), spec).unwrap();
        let identity = d.join("identity.txt");
        let lab = Lab {
            ctl: format!("{tag}c"),
            hosts: hosts
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    let n = 10 + i;
                    TestHost {
                        name: h.name.clone(),
                        index: i,
                        ns: format!("{tag}h{i}"),
                        root: d.join("roots").join(&h.name),
                        mgmt: format!("10.99.{}.{}", n / 250, n % 250 + 2),
                        servers: format!("10.60.{}.{}", n / 250, n % 250 + 2),
                        child: None,
                        services: None,
                        extra: Vec::new(),
                    }
                })
                .collect(),
            dir,
            identity,
            op_key,
            op_pub,
        };
        let o = lab.labforge_here(&["secrets", "init"]);
        assert!(
            o.status.success(),
            "secrets init: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let o = lab.labforge_here(&["render"]);
        assert!(
            o.status.success(),
            "render: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        // The /24s cover 10.x.0.0–10.x.0.255 only; more hosts use 10.x.N.0 via /16 below.
        let c = &lab.ctl;
        must(&format!("ip netns add {c} && ip -n {c} link set lo up"));
        for (br, addr) in [("br99", "10.99.0.1/16"), ("br60", "10.60.0.1/16")] {
            must(&format!("ip -n {c} link add {br} type bridge && ip -n {c} addr add {addr} dev {br} && ip -n {c} link set {br} up"));
        }
        for h in &lab.hosts {
            let (ns, i) = (&h.ns, h.index);
            must(&format!("ip netns add {ns} && ip -n {ns} link set lo up"));
            for (peer, ifname, br, addr) in [
                ("m", "ens19", "br99", &h.mgmt),
                ("s", "ens18", "br60", &h.servers),
            ] {
                must(&format!(
                    "ip -n {c} link add {peer}{i} type veth peer name {ifname} netns {ns} && ip -n {c} link set {peer}{i} master {br} up && ip -n {ns} addr add {addr}/16 dev {ifname} && ip -n {ns} link set {ifname} up"
                ));
            }
        }
        lab
    }

    pub fn spec_dir(&self) -> PathBuf {
        self.dir.path().join("hosts")
    }

    pub fn host(&self, name: &str) -> &TestHost {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .expect("test host")
    }

    fn labforge_here(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_labforge"))
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("LABFORGE_SPEC")
            .env_remove("SSH_AUTH_SOCK")
            .env("LABFORGE_AGE_IDENTITY", &self.identity)
            .output()
            .unwrap()
    }

    /// Run labforge inside the controller namespace (where the lab's networks are).
    pub fn labforge(&self, args: &[&str]) -> Output {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ctl, env!("CARGO_BIN_EXE_labforge")])
            .args(args)
            .current_dir(self.dir.path())
            .env_remove("LABFORGE_SPEC")
            .env_remove("SSH_AUTH_SOCK")
            .env("LABFORGE_AGE_IDENTITY", &self.identity);
        c.output().unwrap()
    }

    /// The spec's (validated) model, via the library.
    pub fn spec(&self) -> labforge::spec::Spec {
        labforge::spec::load_dir(&self.spec_dir())
            .unwrap()
            .spec
            .expect("valid spec")
    }

    /// The host's private SSH host key from the store (decrypted with the lab's identity, via the CLI-free
    /// library path: age identity file → store).
    pub fn host_key(&self, host: &str) -> (String, String) {
        let id = std::fs::read_to_string(&self.identity).unwrap();
        let id: age::x25519::Identity = id
            .lines()
            .find(|l| l.starts_with("AGE-SECRET-KEY-"))
            .unwrap()
            .parse()
            .unwrap();
        let f = self
            .dir
            .path()
            .join(format!("secrets/ssh-host-keys/{host}.age"));
        let data = std::fs::read(&f).unwrap();
        let dec = age::Decryptor::new_buffered(age::armor::ArmoredReader::new(&data[..])).unwrap();
        let mut r = dec
            .decrypt(std::iter::once(&id as &dyn age::Identity))
            .unwrap();
        let mut priv_ = String::new();
        std::io::Read::read_to_string(&mut r, &mut priv_).unwrap();
        let public = std::fs::read_to_string(
            self.dir
                .path()
                .join(format!("secrets/ssh-host-keys/{host}.pub")),
        )
        .unwrap();
        (priv_, public.trim().to_string())
    }

    pub fn rendered_dropin(&self, host: &str) -> String {
        std::fs::read_to_string(
            self.dir
                .path()
                .join(format!("rendered/{host}/sshd_config.d/10-labforge.conf")),
        )
        .unwrap()
    }

    /// Prepare the host's filesystem view and start its sshd with `dropin` as 10-labforge.conf.
    pub fn start(&mut self, host: &str, dropin: &str) {
        self.start_with(host, dropin, &StartOpts::default())
    }

    /// [`start`](Self::start) with the differences in `opts`.
    pub fn start_with(&mut self, host: &str, dropin: &str, opts: &StartOpts) {
        let (priv_, public) = self.host_key(host);
        let idx = self.hosts.iter().position(|h| h.name == host).unwrap();
        let r = self.hosts[idx].root.clone();
        let ns = self.hosts[idx].ns.clone();
        for d in [
            "etc/ssh/sshd_config.d",
            "run",
            "fakebin",
            "home/ops/.ssh",
            "var/run",
            "fake-docker",
        ] {
            std::fs::create_dir_all(r.join(d)).unwrap();
        }
        let rs = r.display().to_string();
        std::fs::write(
            r.join("etc/ssh/sshd_config"),
            format!(
                "# test harness additions (no keyword the labforge drop-in sets)\nPidFile {rs}/run/sshd.pid\nUsePAM no\nStrictModes no\nForceCommand {rs}/hostenv.sh\nInclude /etc/ssh/sshd_config.d/*.conf\n"
            ),
        )
        .unwrap();
        std::fs::write(r.join("etc/ssh/sshd_config.d/10-labforge.conf"), dropin).unwrap();
        // As on a real host (diffie-hellman-group-exchange needs it).
        if Path::new("/etc/ssh/moduli").exists() {
            std::fs::copy("/etc/ssh/moduli", r.join("etc/ssh/moduli")).unwrap();
        }
        std::fs::write(r.join("etc/ssh/ssh_host_ed25519_key"), priv_).unwrap();
        std::fs::write(
            r.join("etc/ssh/ssh_host_ed25519_key.pub"),
            format!("{public}\n"),
        )
        .unwrap();
        must(&format!("chmod 600 {rs}/etc/ssh/ssh_host_ed25519_key"));
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
        let shell = opts.admin_shell.as_deref().unwrap_or("/bin/sh");
        let mut extra_pw = String::new();
        let mut extra_gr = String::new();
        let mut extra_sh = String::new();
        let group = std::fs::read_to_string("/etc/group").unwrap();
        let mut groups: Vec<(String, Vec<String>)> = Vec::new();
        for u in &opts.extra_users {
            extra_pw.push_str(&format!(
                "{n}:x:{id}:{id}:{n}:{rs}/home/{n}:{sh}\n",
                n = u.name,
                id = u.uid,
                sh = u.shell
            ));
            extra_gr.push_str(&format!("{}:x:{}:\n", u.name, u.uid));
            extra_sh.push_str(&format!("{}:*:19000:0:99999:7:::\n", u.name));
            std::fs::create_dir_all(r.join(format!("home/{}/.ssh", u.name))).unwrap();
            if let Some(k) = &u.authorized_keys {
                std::fs::write(r.join(format!("home/{}/.ssh/authorized_keys", u.name)), k).unwrap();
            }
            must(&format!(
                "chown -R {id}:{id} {rs}/home/{n}",
                id = u.uid,
                n = u.name
            ));
            for g in &u.groups {
                match groups.iter_mut().find(|x| &x.0 == g) {
                    Some(x) => x.1.push(u.name.clone()),
                    None => groups.push((g.clone(), vec![u.name.clone()])),
                }
            }
        }
        for (i, (g, members)) in groups.iter().enumerate() {
            extra_gr.push_str(&format!("{g}:x:{}:{}\n", 5100 + i, members.join(",")));
        }
        std::fs::write(
            r.join("passwd"),
            format!("{passwd}ops:x:{ADMIN_UID}:{ADMIN_UID}:ops:{rs}/home/ops:{shell}\n{extra_pw}"),
        )
        .unwrap();
        let docker_group = if group.lines().any(|l| l.starts_with("docker:")) {
            String::new()
        } else {
            "docker:x:4243:\n".into()
        };
        std::fs::write(
            r.join("group"),
            format!("{group}ops:x:{ADMIN_UID}:\n{docker_group}{extra_gr}"),
        )
        .unwrap();
        let shadow: String = passwd
            .lines()
            .filter_map(|l| l.split(':').next())
            .map(|u| {
                format!(
                    "{u}:{}:19000:0:99999:7:::\n",
                    if u == "root" { "!" } else { "*" }
                )
            })
            .collect();
        std::fs::write(
            r.join("shadow"),
            format!("{shadow}ops:*:19000:0:99999:7:::\n{extra_sh}"),
        )
        .unwrap();
        must(&format!("chmod 640 {rs}/shadow"));
        std::fs::write(
            r.join("sudoers"),
            format!("Defaults env_keep += \"LABFORGE_ROOT\"\nDefaults secure_path=\"{rs}/fakebin:/usr/sbin:/usr/bin:/sbin:/bin\"\nDefaults !lecture\nroot ALL=(ALL:ALL) ALL\nops ALL=(ALL) NOPASSWD:ALL\n"),
        )
        .unwrap();
        must(&format!("chmod 440 {rs}/sudoers"));
        std::fs::write(
            r.join("home/ops/.ssh/authorized_keys"),
            format!("{}\n", self.op_pub),
        )
        .unwrap();
        if let Some(b) = &opts.admin_bashrc {
            std::fs::write(r.join("home/ops/.bashrc"), b).unwrap();
        }
        for (path, content) in &opts.files {
            let p = r.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, content).unwrap();
        }
        std::fs::write(
            r.join("hostenv.sh"),
            format!(
                "#!/bin/sh\nprintf '%s\\n' \"$SSH_ORIGINAL_COMMAND\" | head -c 300 >> {rs}/session.log; echo >> {rs}/session.log\nif [ -e {rs}/run/broken ]; then echo 'this generation refuses logins' >&2; exit 255; fi\nexport LABFORGE_ROOT={rs} PATH={rs}/fakebin:/usr/sbin:/usr/bin:/sbin:/bin\n{run}",
                run = match &opts.after_command {
                    None => "unset SHLVL; exec \"$SHELL\" -c \"$SSH_ORIGINAL_COMMAND\"\n".to_string(),
                    Some(a) => format!("unset SHLVL; \"$SHELL\" -c \"$SSH_ORIGINAL_COMMAND\"; st=$?\n{a}\nexit $st\n"),
                },
            ),
        )
        .unwrap();
        std::fs::write(r.join("session.log"), "").unwrap();
        // Fake tools for what the machine cannot provide in a namespace.
        let fake = |name: &str, body: String| {
            std::fs::write(r.join("fakebin").join(name), format!("#!/bin/sh\n{body}")).unwrap();
        };
        match &opts.systemctl {
            Some(body) => fake("systemctl", body.replace("{rs}", &rs)),
            None => fake("systemctl", format!("case \"$1 $2\" in 'reload ssh'|'reload sshd') kill -HUP \"$(cat {rs}/run/sshd.pid)\";;\n 'stop '*.timer) {STOP_TIMER};;\n *) echo \"fake systemctl: $*\" >&2; exit 1;; esac\n", STOP_TIMER = FAKE_STOP_TIMER.replace("{rs}", &rs))),
        }
        fake("systemd-run", FAKE_SYSTEMD_RUN.replace("{rs}", &rs));
        fake(
            "docker",
            format!(
                "case \"$1\" in\n ps) cat {rs}/fake-docker/ps 2>/dev/null;;\n inspect) cat {rs}/fake-docker/inspect.json;;\n compose) echo \"$(pwd) $*\" >> {rs}/fake-docker/compose.log;;\n *) echo \"fake docker: $*\" >&2; exit 1;;\nesac\n"
            ),
        );
        std::fs::write(r.join("var/run/docker.sock"), "").unwrap();
        must(&format!("chgrp docker {rs}/var/run/docker.sock 2>/dev/null || chgrp 4243 {rs}/var/run/docker.sock; chmod 660 {rs}/var/run/docker.sock"));
        std::fs::write(r.join("fake-docker/inspect.json"), "[]\n").unwrap();
        must(&format!("chmod -R a+rX {rs}/fakebin {rs}/hostenv.sh && chmod 755 {rs}/fakebin/* {rs}/hostenv.sh && chmod 666 {rs}/session.log && chown -R {ADMIN_UID}:{ADMIN_UID} {rs}/home/ops && chmod 755 {rs} {}", r.parent().unwrap().display()));
        must(&format!("chmod 755 {}", self.dir.path().display()));
        let log = std::fs::File::create(r.join("sshd.log")).unwrap();
        let script = format!(
            "mount --bind {rs}/etc/ssh /etc/ssh && mount --bind {rs}/passwd /etc/passwd && mount --bind {rs}/group /etc/group && mount --bind {rs}/shadow /etc/shadow && mount --bind {rs}/sudoers /etc/sudoers && exec /usr/sbin/sshd -D -e -f /etc/ssh/sshd_config"
        );
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "unshare",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                &script,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.hosts[idx].child = Some(child);
        self.wait_listening(host);
        if self.hosts[idx].services.is_none() {
            self.start_published(idx);
        }
    }

    /// Listeners at the addresses and ports the host's stacks publish (from the plan's exposure policy), so
    /// verify's exposure checks find them answering as the running containers would.
    fn start_published(&mut self, idx: usize) {
        let name = self.hosts[idx].name.clone();
        let o = self.labforge(&["plan", "--json", &name]);
        assert!(o.status.success(), "plan --json {name}");
        let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let binds: Vec<String> = plan["hosts"][0]["exposure"]["flows"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|f| f["delivery"] == "docker" && f["protocol"] == "tcp")
            .map(|f| format!("('{}',{})", f["address"].as_str().unwrap(), f["port"]))
            .collect();
        if binds.is_empty() {
            return;
        }
        let py = format!(
            "import socket,select\nss=[]\nfor a in [{}]:\n s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(a);s.listen(64);ss.append(s)\nprint('ready',flush=True)\nwhile True:\n for s in select.select(ss,[],[])[0]:\n  c,_=s.accept();c.close()\n",
            binds.join(",")
        );
        let mut c = Command::new("ip")
            .args(["netns", "exec", &self.hosts[idx].ns, "python3", "-c", &py])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(c.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "published-port listeners of {name}");
        self.hosts[idx].services = Some(c);
    }

    pub fn wait_listening(&self, host: &str) {
        let h = self.host(host);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let log = std::fs::read_to_string(h.root.join("sshd.log")).unwrap_or_default();
            if log.contains("Server listening on") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sshd of {host} did not start:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Load the host's rendered nftables ruleset in its namespace (as `nft -f` on the host would).
    pub fn load_firewall(&self, host: &str) {
        let h = self.host(host);
        must(&format!(
            "ip netns exec {} nft -f {}/rendered/{host}/nftables.conf",
            h.ns,
            self.dir.path().display()
        ));
    }

    /// Start `cmd` (`sh -c`) in the host's network namespace; it is killed with the lab.
    pub fn spawn_in(&mut self, host: &str, cmd: &str) {
        let idx = self.hosts.iter().position(|h| h.name == host).unwrap();
        let ns = self.hosts[idx].ns.clone();
        let c = Command::new("ip")
            .args(["netns", "exec", &ns, "sh", "-c", cmd])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.hosts[idx].extra.push(c);
    }

    pub fn sshd_pid(&self, host: &str) -> Option<u32> {
        self.host(host).child.as_ref().map(|c| c.id())
    }

    /// Kill the host's sshd and every session process under it.
    pub fn kill_sshd(&mut self, host: &str) {
        let idx = self.hosts.iter().position(|h| h.name == host).unwrap();
        if let Some(mut c) = self.hosts[idx].child.take() {
            kill_tree(c.id());
            let _ = c.wait();
        }
    }

    pub fn session_log(&self, host: &str) -> String {
        std::fs::read_to_string(self.host(host).root.join("session.log")).unwrap_or_default()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for h in &mut self.hosts {
            for mut c in [h.child.take(), h.services.take()].into_iter().flatten() {
                kill_tree(c.id());
                let _ = c.wait();
            }
            for mut c in h.extra.drain(..) {
                kill_tree(c.id());
                let _ = c.wait();
            }
        }
        for h in &self.hosts {
            // Armed stand-in timers (FAKE_SYSTEMD_RUN) live in their own sessions: end them by pid.
            if let Ok(rd) = std::fs::read_dir(h.root.join("run/fake-systemd")) {
                for e in rd.flatten() {
                    if e.path().extension().is_some_and(|x| x == "pid") {
                        if let Ok(p) = std::fs::read_to_string(e.path()) {
                            if let Ok(p) = p.trim().parse::<u32>() {
                                kill_tree(p);
                            }
                        }
                    }
                }
            }
            let _ = Command::new("ip")
                .args(["netns", "del", &h.ns])
                .stderr(Stdio::null())
                .status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.ctl])
            .stderr(Stdio::null())
            .status();
    }
}
