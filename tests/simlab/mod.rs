//! The simulated lab: the example lab's topology built from `labforge plan --json` in network namespaces, each
//! host's rendered firewall loaded with `nft -f`, every published port served by a real Docker engine, and a
//! probe matrix whose expected value is the exposure policy. Run as root.
//!
//! * One bridge per spec network (this kernel has no 802.1Q) inside a **router** namespace that forwards
//!   between them without any filtering: each host's own firewall must hold by itself. A network with a
//!   gateway gets that address on its bridge; one without (storage) is L2 only.
//! * One namespace per SSH-managed host, its interfaces named and addressed as the spec says (veth peers on the
//!   network bridges), the default route as the rendered network config sets it (servers, else management).
//! * The host's firewall: Ubuntu/Debian `rendered/<host>/nftables.conf` as is; NixOS: the content of
//!   `networking.nftables.tables.labforge` evaluated from the rendered `firewall.nix` by the real Nix evaluator,
//!   wrapped the way NixOS's nftables module wraps a table (`table inet labforge { … }`).
//! * Host-delivered flows (SSH, NFS) are served by a stand-in (`standin.c`, built with `gcc -static`) bound to
//!   the flow's address; every other probed (address, port) of the host gets a decoy listener too, so a drop
//!   is the firewall's doing, never an absent service.
//! * Published ports: `dockerd` per host namespace (`nsenter --net=…`: `ip netns exec` would remount /sys and
//!   hide the cgroup mounts dockerd needs), an image made by `docker import` of the stand-in (no registry), and
//!   one container per service published exactly as the rendered Compose file publishes it — host address,
//!   port, protocol, as the real Compose binary resolves them (`config --format json` with the host's env
//!   file) — on the stack's Docker networks.
//! * A client namespace on every network (USER and GUEST included); the host namespaces are clients too (that
//!   is where the addresses `allow_from` names live, e.g. the platform VM for the Portainer agent's 9001).
//! * Probes: TCP connect + payload round trip (replies count), UDP DNS-shaped query + answer, bounded timeouts,
//!   all cells of one source concurrently; container → resolver DNS from inside each Docker host's container.
//!
//! Everything is torn down in `Drop`: dockerd (SIGTERM, so it unmounts its containers) and every process the
//! lab started (by pid, with their children), the namespaces, the data directories.
#![allow(dead_code)]

use ipnet::Ipv4Net;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::common::{compose_bin, copy_dir, labforge};
use super::netns_lab::kill_tree;

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// How long a probe waits for its answer. Denied cells cost this once per source (all run concurrently).
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

/// Ports every host address is probed on besides the policies' own: SSH, NFS, and some never allowed.
pub const EXTRA_TCP: [u16; 6] = [22, 2049, 23, 111, 2375, 9100];

fn sh(cmd: &str) -> std::process::Output {
    Command::new("sh").arg("-c").arg(cmd).output().expect("sh")
}

fn must(cmd: &str) -> String {
    let o = sh(cmd);
    assert!(
        o.status.success(),
        "`{cmd}` failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn require_root() {
    assert_eq!(
        must("id -u").trim(),
        "0",
        "the simulated lab needs root (network namespaces, nft, dockerd)"
    );
    for t in [
        "/usr/sbin/nft",
        "/usr/sbin/dockerd",
        "/usr/bin/docker",
        "/usr/bin/nsenter",
        "/usr/bin/nix-instantiate",
        "/usr/bin/gcc",
    ] {
        assert!(
            Path::new(t).exists(),
            "{t} missing: run `bash scripts/install-test-deps.sh`"
        );
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn parse(s: &str) -> Proto {
        if s == "udp" {
            Proto::Udp
        } else {
            Proto::Tcp
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Net {
    pub name: String,
    pub cidr: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    pub role: String,
    pub bridge: String,
}

#[derive(Debug, Clone)]
pub struct Iface {
    pub name: String,
    pub network: String,
    pub address: Ipv4Addr,
}

#[derive(Debug, Clone)]
pub struct SimHost {
    pub name: String,
    pub os: String,
    pub ns: String,
    pub ifaces: Vec<Iface>,
    /// The exposure policy from `plan --json`.
    pub exposure: Value,
    /// The network whose gateway is the default route.
    pub default_net: Option<String>,
    pub docker: Option<Docker>,
}

#[derive(Debug, Clone)]
pub struct Docker {
    pub sock: PathBuf,
    pub pidfile: PathBuf,
    pub data: PathBuf,
    pub exec: PathBuf,
    /// Containers started (name → the (proto, container port) it serves).
    pub containers: Vec<String>,
}

/// Who sends a probe: a client namespace on one network, or a host namespace.
#[derive(Debug, Clone)]
pub struct Source {
    pub label: String,
    pub ns: String,
    /// The host it is (host namespaces), to skip probing itself.
    pub host: Option<String>,
    /// Address per network it sits on, and its default-route network.
    pub addrs: Vec<(String, Ipv4Addr)>,
    pub default_net: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    pub host: String,
    pub network: String,
    pub addr: Ipv4Addr,
    pub port: u16,
    pub proto: Proto,
}

/// One probe to run: target, the source address, the expected verdict.
type Job = (Target, Ipv4Addr, bool);

#[derive(Debug, Clone)]
pub struct Cell {
    pub source: String,
    pub src_addr: Ipv4Addr,
    pub target: Target,
    pub expected: bool,
    pub answered: bool,
}

impl Cell {
    pub fn wrong(&self) -> bool {
        self.expected != self.answered
    }
    pub fn describe(&self) -> String {
        format!(
            "{} ({}) → {} {}:{}/{}: policy {}, observed {}",
            self.source,
            self.src_addr,
            self.target.host,
            self.target.addr,
            self.target.port,
            self.target.proto.as_str(),
            if self.expected { "allows" } else { "denies" },
            if self.answered {
                "answered"
            } else {
                "no answer"
            }
        )
    }
}

#[derive(Debug, Default)]
pub struct Matrix {
    pub cells: Vec<Cell>,
    /// Cells the topology cannot deliver (no route between the networks): not a firewall question.
    pub unroutable: usize,
}

impl Matrix {
    pub fn summary(&self) -> String {
        let ok_allowed = self
            .cells
            .iter()
            .filter(|c| c.expected && c.answered)
            .count();
        let ok_denied = self
            .cells
            .iter()
            .filter(|c| !c.expected && !c.answered)
            .count();
        let wrong = self.cells.iter().filter(|c| c.wrong()).count();
        format!("{ok_allowed} allowed and answered, {ok_denied} denied and dropped, {wrong} wrong")
    }
    pub fn wrong(&self) -> Vec<&Cell> {
        self.cells.iter().filter(|c| c.wrong()).collect()
    }
    pub fn cell(&self, source: &str, addr: &str, port: u16, proto: Proto) -> Option<&Cell> {
        self.cells.iter().find(|c| {
            c.source == source
                && c.target.addr.to_string() == addr
                && c.target.port == port
                && c.target.proto == proto
        })
    }
}

pub struct SimLab {
    pub dir: tempfile::TempDir,
    /// The spec copy, rendered.
    pub spec_dir: PathBuf,
    pub plan: Value,
    pub id: String,
    pub router: String,
    pub nets: Vec<Net>,
    pub hosts: Vec<SimHost>,
    pub clients: Vec<Source>,
    pub namespaces: Vec<String>,
    pub children: Vec<Child>,
    pub dockerd: Vec<Child>,
    pub standin: PathBuf,
    pub log: Vec<String>,
}

/// Options: which hosts to build (empty: every host with a firewall), per-host ruleset overrides.
#[derive(Default)]
pub struct Options {
    pub only_hosts: Vec<String>,
    /// host → ruleset text to load instead of the rendered one (for showing what an old ruleset did).
    pub ruleset_override: BTreeMap<String, String>,
}

fn nth_host(net: &Ipv4Net, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + n)
}

/// The address a host namespace sends from to reach `dst`: its address on `dst`'s network, else the one on
/// its default-route network (what the kernel's route lookup picks in this topology).
fn source_addr(src: &Source, nets: &[Net], dst: Ipv4Addr) -> Option<(Ipv4Addr, bool)> {
    for (n, a) in &src.addrs {
        if nets.iter().any(|x| &x.name == n && x.cidr.contains(&dst)) {
            return Some((*a, true));
        }
    }
    let dn = src.default_net.as_ref()?;
    let a = src.addrs.iter().find(|(n, _)| n == dn)?.1;
    Some((a, false))
}

impl SimLab {
    pub fn build(opts: Options) -> SimLab {
        require_root();
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let id = format!("lf{}{}", std::process::id() % 100000, n);
        let dir = tempfile::Builder::new().prefix("lfsim").tempdir().unwrap();
        let spec_dir = dir.path().join("lab");
        std::fs::create_dir_all(&spec_dir).unwrap();
        copy_dir(
            &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("hosts"),
            &spec_dir.join("hosts"),
        );
        for args in [&["secrets", "init"][..], &["render"][..]] {
            let o = labforge(&spec_dir, args);
            assert!(
                o.status.success(),
                "labforge {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        let o = labforge(&spec_dir, &["plan", "--json"]);
        assert!(o.status.success());
        let plan: Value = serde_json::from_slice(&o.stdout).expect("plan --json");
        let standin = dir.path().join("standin");
        must(&format!(
            "gcc -static -O2 -o {} {}/tests/simlab/standin.c",
            standin.display(),
            env!("CARGO_MANIFEST_DIR")
        ));

        let nets: Vec<Net> = plan["networks"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(k, n)| Net {
                name: n["name"].as_str().unwrap().into(),
                cidr: n["cidr"].as_str().unwrap().parse().unwrap(),
                gateway: n["gateway"].as_str().map(|g| g.parse().unwrap()),
                role: n["role"].as_str().unwrap().into(),
                bridge: format!("b{k}"),
            })
            .collect();
        let mut hosts = Vec::new();
        for (i, h) in plan["hosts"].as_array().unwrap().iter().enumerate() {
            let name = h["name"].as_str().unwrap().to_string();
            let Some(x) = h.get("exposure") else { continue };
            if !opts.only_hosts.is_empty() && !opts.only_hosts.contains(&name) {
                continue;
            }
            let ifaces: Vec<Iface> = x["addresses"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| Iface {
                    name: a["interface"].as_str().unwrap().into(),
                    network: a["network"].as_str().unwrap().into(),
                    address: a["address"].as_str().unwrap().parse().unwrap(),
                })
                .collect();
            // servers first, then management, then any network with a gateway (render::nixos / netplan).
            let role_of = |n: &str| nets.iter().find(|x| x.name == n).unwrap();
            let default_net = ["servers", "management"]
                .iter()
                .find_map(|r| {
                    ifaces.iter().find(|i| {
                        role_of(&i.network).role == *r && role_of(&i.network).gateway.is_some()
                    })
                })
                .or_else(|| {
                    ifaces
                        .iter()
                        .find(|i| role_of(&i.network).gateway.is_some())
                })
                .map(|i| i.network.clone());
            hosts.push(SimHost {
                name: name.clone(),
                os: h["os"].as_str().unwrap().into(),
                ns: format!("{id}-h{i}"),
                ifaces,
                exposure: x.clone(),
                default_net,
                docker: None,
            });
        }
        let mut lab = SimLab {
            dir,
            spec_dir,
            plan,
            router: format!("{id}-r"),
            id,
            nets,
            hosts,
            clients: Vec::new(),
            namespaces: Vec::new(),
            children: Vec::new(),
            dockerd: Vec::new(),
            standin,
            log: Vec::new(),
        };
        lab.topology();
        for k in 0..lab.hosts.len() {
            let name = lab.hosts[k].name.clone();
            let ruleset = match opts.ruleset_override.get(&name) {
                Some(r) => r.clone(),
                None => lab.rendered_ruleset(&lab.hosts[k]),
            };
            lab.load_ruleset(k, &ruleset);
        }
        lab.host_listeners();
        lab.docker_all();
        lab
    }

    fn ns_add(&mut self, ns: &str) {
        must(&format!("ip netns add {ns}"));
        self.namespaces.push(ns.to_string());
        must(&format!("ip -n {ns} link set lo up"));
    }

    fn topology(&mut self) {
        let r = self.router.clone();
        self.ns_add(&r);
        must(&format!(
            "ip netns exec {r} sysctl -qw net.ipv4.ip_forward=1"
        ));
        for n in self.nets.clone() {
            must(&format!(
                "ip -n {r} link add {} type bridge && ip -n {r} link set {} up",
                n.bridge, n.bridge
            ));
            if let Some(g) = n.gateway {
                must(&format!(
                    "ip -n {r} addr add {g}/{} dev {}",
                    n.cidr.prefix_len(),
                    n.bridge
                ));
            }
        }
        for (i, h) in self.hosts.clone().into_iter().enumerate() {
            self.ns_add(&h.ns);
            for (j, ifc) in h.ifaces.iter().enumerate() {
                let net = self.net(&ifc.network).clone();
                let peer = format!("v{i}x{j}");
                must(&format!(
                    "ip link add {peer} netns {r} type veth peer name {} netns {}",
                    ifc.name, h.ns
                ));
                must(&format!(
                    "ip -n {r} link set {peer} master {} up",
                    net.bridge
                ));
                must(&format!(
                    "ip -n {} addr add {}/{} dev {} && ip -n {} link set {} up",
                    h.ns,
                    ifc.address,
                    net.cidr.prefix_len(),
                    ifc.name,
                    h.ns,
                    ifc.name
                ));
            }
            if let Some(dn) = &h.default_net {
                let g = self.net(dn).gateway.unwrap();
                must(&format!("ip -n {} route add default via {g}", h.ns));
            }
            self.clients.push(Source {
                label: format!("host {}", h.name),
                ns: h.ns.clone(),
                host: Some(h.name.clone()),
                addrs: h
                    .ifaces
                    .iter()
                    .map(|i| (i.network.clone(), i.address))
                    .collect(),
                default_net: h.default_net.clone(),
            });
        }
        // One client on every network, at the network's 200th address.
        for (k, n) in self.nets.clone().into_iter().enumerate() {
            let ns = format!("{}-c{k}", self.id);
            self.ns_add(&ns);
            let a = nth_host(&n.cidr, 200);
            must(&format!(
                "ip link add c{k} netns {r} type veth peer name eth0 netns {ns}"
            ));
            must(&format!("ip -n {r} link set c{k} master {} up", n.bridge));
            must(&format!(
                "ip -n {ns} addr add {a}/{} dev eth0 && ip -n {ns} link set eth0 up",
                n.cidr.prefix_len()
            ));
            if let Some(g) = n.gateway {
                must(&format!("ip -n {ns} route add default via {g}"));
            }
            self.clients.push(Source {
                label: format!("client on {} ({})", n.name, n.role),
                ns,
                host: None,
                addrs: vec![(n.name.clone(), a)],
                default_net: n.gateway.map(|_| n.name.clone()),
            });
        }
    }

    pub fn net(&self, name: &str) -> &Net {
        self.nets.iter().find(|n| n.name == name).unwrap()
    }

    /// The ruleset the host's OS loads, from the rendered files.
    pub fn rendered_ruleset(&self, h: &SimHost) -> String {
        if h.os == "nixos" {
            let f = self
                .spec_dir
                .join(format!("nixos/hosts/{}/firewall.nix", h.name));
            let expr = format!(
                "(import {} {{}}).networking.nftables.tables.labforge.content",
                f.display()
            );
            let o = Command::new("nix-instantiate")
                .args(["--eval", "--strict", "--json", "-E", &expr])
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "nix-instantiate {}: {}",
                f.display(),
                String::from_utf8_lossy(&o.stderr)
            );
            let content: String = serde_json::from_slice(&o.stdout).unwrap();
            // nixos/modules/services/networking/nftables.nix: how a table of `networking.nftables.tables` is loaded.
            format!(
                "table inet labforge\ndelete table inet labforge\ntable inet labforge {{\n  {content}\n}}\n"
            )
        } else {
            std::fs::read_to_string(
                self.spec_dir
                    .join(format!("rendered/{}/nftables.conf", h.name)),
            )
            .unwrap()
        }
    }

    fn load_ruleset(&mut self, k: usize, ruleset: &str) {
        let h = &self.hosts[k];
        let f = self.dir.path().join(format!("{}.nft", h.name));
        std::fs::write(&f, ruleset).unwrap();
        must(&format!("ip netns exec {} nft -f {}", h.ns, f.display()));
    }

    /// Every (address, port, proto) probed on a host: the policies' ports of the whole lab plus EXTRA_TCP.
    pub fn probe_ports(&self) -> BTreeSet<(u16, Proto)> {
        let mut s: BTreeSet<(u16, Proto)> = EXTRA_TCP.iter().map(|p| (*p, Proto::Tcp)).collect();
        for h in &self.hosts {
            for f in flows(&h.exposure) {
                if f["address"].is_string() {
                    s.insert((
                        f["port"].as_u64().unwrap() as u16,
                        Proto::parse(f["protocol"].as_str().unwrap()),
                    ));
                }
            }
        }
        s
    }

    /// Host-delivered flows served by the stand-in; every other probed address:port gets a decoy listener.
    /// Docker-published ones are left to docker-proxy / DNAT.
    fn host_listeners(&mut self) {
        let ports = self.probe_ports();
        for h in self.hosts.clone() {
            let docker_bound: BTreeSet<(String, u16, Proto)> = flows(&h.exposure)
                .filter(|f| f["delivery"] == "docker")
                .map(|f| {
                    (
                        f["address"].as_str().unwrap().to_string(),
                        f["port"].as_u64().unwrap() as u16,
                        Proto::parse(f["protocol"].as_str().unwrap()),
                    )
                })
                .collect();
            let mut specs = Vec::new();
            for i in &h.ifaces {
                for (p, proto) in &ports {
                    if !docker_bound.contains(&(i.address.to_string(), *p, *proto)) {
                        specs.push(format!("{}:{}:{p}", proto.as_str(), i.address));
                    }
                }
            }
            let child = Command::new("ip")
                .args(["netns", "exec", &h.ns])
                .arg(&self.standin)
                .arg("listen")
                .args(&specs)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap();
            let mut child = child;
            let mut line = String::new();
            use std::io::BufRead;
            std::io::BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut line)
                .unwrap();
            assert_eq!(line.trim(), "ready", "stand-in listeners on {}", h.name);
            self.children.push(child);
        }
    }

    fn docker_all(&mut self) {
        // Start every engine first (they come up in parallel), then fill them.
        let mut started = Vec::new();
        for k in 0..self.hosts.len() {
            let h = &self.hosts[k];
            if !flows(&h.exposure).any(|f| f["delivery"] == "docker") {
                continue;
            }
            let base = self.dir.path().join(format!("d{k}"));
            let d = Docker {
                sock: self.dir.path().join(format!("d{k}.sock")),
                pidfile: self.dir.path().join(format!("d{k}.pid")),
                data: base.join("data"),
                exec: base.join("exec"),
                containers: Vec::new(),
            };
            std::fs::create_dir_all(&d.data).unwrap();
            std::fs::create_dir_all(&d.exec).unwrap();
            let log = std::fs::File::create(base.join("dockerd.log")).unwrap();
            let child = Command::new("nsenter")
                .arg(format!("--net=/var/run/netns/{}", h.ns))
                .arg("dockerd")
                .arg("--data-root")
                .arg(&d.data)
                .arg("--exec-root")
                .arg(&d.exec)
                .arg("-H")
                .arg(format!("unix://{}", d.sock.display()))
                .arg("--pidfile")
                .arg(&d.pidfile)
                .args(["--containerd-namespace", &format!("{}-{k}", self.id)])
                .args([
                    "--containerd-plugins-namespace",
                    &format!("{}-{k}p", self.id),
                ])
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap();
            self.dockerd.push(child);
            self.hosts[k].docker = Some(d);
            started.push(k);
        }
        let tar = self.dir.path().join("standin.tar");
        must(&format!(
            "tar -C {} -cf {} standin",
            self.dir.path().display(),
            tar.display()
        ));
        for k in started {
            self.wait_docker(k);
            let dk = self.docker_cmd(k);
            must(&format!("{dk} import {} lf-standin:lab", tar.display()));
            self.run_stacks(k);
        }
    }

    pub fn docker_cmd(&self, k: usize) -> String {
        format!(
            "DOCKER_HOST=unix://{} docker",
            self.hosts[k].docker.as_ref().unwrap().sock.display()
        )
    }

    fn wait_docker(&self, k: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let dk = self.docker_cmd(k);
        loop {
            if sh(&format!("{dk} info --format '{{{{.ServerVersion}}}}'"))
                .status
                .success()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "dockerd for {} did not come up in 60 s: {}",
                self.hosts[k].name,
                std::fs::read_to_string(self.dir.path().join(format!("d{k}/dockerd.log")))
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// One container per service with published ports, published as the rendered Compose file says.
    fn run_stacks(&mut self, k: usize) {
        let host = self.hosts[k].name.clone();
        let dk = self.docker_cmd(k);
        let ph = self.plan["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["name"] == host.as_str())
            .unwrap()
            .clone();
        let compose_files: Vec<String> = ph["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a["path"].as_str())
            .filter(|p| p.ends_with("/docker-compose.yml"))
            .map(String::from)
            .collect();
        for cf in compose_files {
            let dir = self
                .spec_dir
                .join(cf.trim_end_matches("/docker-compose.yml"));
            // Secret values stand in (deploy writes the real `.env` from the store); the bind addresses come
            // from the host's rendered env file, which is given last and wins.
            let secrets: String = std::fs::read_to_string(dir.join(".env.example"))
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.starts_with('#') && l.ends_with('='))
                .map(|l| format!("{l}simlab-stand-in\n"))
                .collect();
            std::fs::write(dir.join(".env.simlab"), secrets).unwrap();
            let o = Command::new(compose_bin())
                .current_dir(&dir)
                .args(["--env-file", ".env.simlab"])
                .args(["--env-file", &format!("hosts/{host}.env")])
                .args(["-f", "docker-compose.yml", "config", "--format", "json"])
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "compose config {cf} for {host}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let model: Value = serde_json::from_slice(&o.stdout).unwrap();
            let project = model["name"].as_str().unwrap().to_string();
            for (net, n) in model["networks"].as_object().into_iter().flatten() {
                let name = n["name"]
                    .as_str()
                    .map(String::from)
                    .unwrap_or(format!("{project}_{net}"));
                if sh(&format!("{dk} network inspect {name}")).status.success() {
                    continue;
                }
                let internal = if n["internal"] == true {
                    "--internal"
                } else {
                    ""
                };
                must(&format!("{dk} network create {internal} {name}"));
            }
            for (svc, s) in model["services"].as_object().unwrap() {
                let ports: Vec<&Value> = s["ports"].as_array().into_iter().flatten().collect();
                if ports.is_empty() {
                    continue;
                }
                let mut publish = Vec::new();
                let mut listen = Vec::new();
                for p in ports {
                    let proto = p["protocol"].as_str().unwrap_or("tcp");
                    let host_ip = p["host_ip"].as_str().unwrap_or("");
                    let published = p["published"].as_str().unwrap_or("");
                    let target = &p["target"];
                    assert!(
                        !host_ip.is_empty() && host_ip != "0.0.0.0",
                        "{cf}: {svc} publishes {published} on every address"
                    );
                    publish.push(format!("-p {host_ip}:{published}:{target}/{proto}"));
                    listen.push(format!("{proto}:0.0.0.0:{target}"));
                }
                listen.sort();
                listen.dedup();
                let nets: Vec<String> = s["networks"]
                    .as_object()
                    .map(|m| m.keys().cloned().collect())
                    .unwrap_or_default();
                let net_name = |n: &str| {
                    model["networks"][n]["name"]
                        .as_str()
                        .map(String::from)
                        .unwrap_or(format!("{project}_{n}"))
                };
                let cname = format!("{project}-{svc}");
                let first = nets
                    .first()
                    .map(|n| format!("--network {}", net_name(n)))
                    .unwrap_or_default();
                must(&format!(
                    "{dk} create --pull never --name {cname} {first} {} lf-standin:lab /standin listen {}",
                    publish.join(" "),
                    listen.join(" ")
                ));
                for n in nets.iter().skip(1) {
                    must(&format!("{dk} network connect {} {cname}", net_name(n)));
                }
                must(&format!("{dk} start {cname}"));
                self.hosts[k]
                    .docker
                    .as_mut()
                    .unwrap()
                    .containers
                    .push(cname);
            }
        }
    }

    /// Whether `src` can reach `dst` at all in this topology (same network, or both routed by the router).
    fn routable(&self, src: &Source, dst: Ipv4Addr) -> Option<Ipv4Addr> {
        let (a, direct) = source_addr(src, &self.nets, dst)?;
        if direct {
            return Some(a);
        }
        let dnet = self.nets.iter().find(|n| n.cidr.contains(&dst))?;
        dnet.gateway.map(|_| a)
    }

    /// Whether the host's policy allows `src` → `dst:port/proto` (the packet arrives on `dst`'s interface).
    pub fn expected(
        &self,
        host: &SimHost,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        port: u16,
        proto: Proto,
    ) -> bool {
        flows(&host.exposure).any(|f| {
            f["address"].as_str() == Some(dst.to_string().as_str())
                && f["port"].as_u64() == Some(port as u64)
                && f["protocol"].as_str() == Some(proto.as_str())
                && admits(&f["from"], src)
        })
    }

    /// Probe every source × every host address × every probed port.
    pub fn matrix(&self) -> Matrix {
        let ports = self.probe_ports();
        let mut m = Matrix::default();
        let mut jobs: Vec<(String, Vec<Job>)> = Vec::new();
        for src in &self.clients {
            let mut list = Vec::new();
            for h in &self.hosts {
                if src.host.as_deref() == Some(h.name.as_str()) {
                    continue;
                }
                for i in &h.ifaces {
                    let Some(sa) = self.routable(src, i.address) else {
                        m.unroutable += ports.len();
                        continue;
                    };
                    for (p, proto) in &ports {
                        let t = Target {
                            host: h.name.clone(),
                            network: i.network.clone(),
                            addr: i.address,
                            port: *p,
                            proto: *proto,
                        };
                        list.push((t, sa, self.expected(h, sa, i.address, *p, *proto)));
                    }
                }
            }
            jobs.push((src.ns.clone(), list));
        }
        let labels: BTreeMap<String, String> = self
            .clients
            .iter()
            .map(|c| (c.ns.clone(), c.label.clone()))
            .collect();
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|(ns, list)| {
                std::thread::spawn(move || {
                    let targets: Vec<(SocketAddr, Proto)> = list
                        .iter()
                        .map(|(t, _, _)| (SocketAddr::new(IpAddr::V4(t.addr), t.port), t.proto))
                        .collect();
                    let answered = probe_in_ns(&ns, &targets);
                    (ns, list, answered)
                })
            })
            .collect();
        for hd in handles {
            let (ns, list, answered) = hd.join().expect("probe thread");
            for ((t, sa, exp), ans) in list.into_iter().zip(answered) {
                m.cells.push(Cell {
                    source: labels[&ns].clone(),
                    src_addr: sa,
                    target: t,
                    expected: exp,
                    answered: ans,
                });
            }
        }
        m
    }

    /// From inside each Docker host's containers: DNS to every site resolver. (label, expected, answered)
    pub fn container_dns(&self) -> Vec<(String, bool, bool)> {
        let mut out = Vec::new();
        let resolvers: Vec<Ipv4Addr> = self.resolvers();
        for (k, h) in self.hosts.iter().enumerate() {
            let Some(d) = &h.docker else { continue };
            let Some(c) = d.containers.first() else {
                continue;
            };
            for r in &resolvers {
                let Some(rh) = self
                    .hosts
                    .iter()
                    .find(|x| x.ifaces.iter().any(|i| i.address == *r))
                else {
                    continue;
                };
                // A container's query leaves its own host masqueraded to the host's route source address;
                // to its own host's address it arrives from a Docker bridge (local containers).
                let expected = if rh.name == h.name {
                    flows(&h.exposure).any(|f| {
                        f["address"].as_str() == Some(r.to_string().as_str())
                            && f["port"] == 53
                            && f["protocol"] == "udp"
                            && f["local_containers"] == true
                    })
                } else {
                    let src = self
                        .clients
                        .iter()
                        .find(|s| s.host.as_deref() == Some(&h.name))
                        .unwrap();
                    match self.routable(src, *r) {
                        Some(sa) => self.expected(rh, sa, *r, 53, Proto::Udp),
                        None => continue,
                    }
                };
                let ok = sh(&format!(
                    "{} exec {c} /standin probe udp {r} 53",
                    self.docker_cmd(k)
                ))
                .status
                .success();
                out.push((
                    format!("container {c} on {} → DNS {r}:53/udp ({})", h.name, rh.name),
                    expected,
                    ok,
                ));
            }
        }
        out
    }

    /// The lab's resolvers: the site nameservers the hosts use (from the rendered NixOS networking, which
    /// names them; the plan does not carry them), falling back to every address serving 53/udp.
    pub fn resolvers(&self) -> Vec<Ipv4Addr> {
        let mut v: Vec<Ipv4Addr> = Vec::new();
        for h in &self.hosts {
            for f in flows(&h.exposure) {
                if f["port"] == 53 && f["protocol"] == "udp" {
                    if let Some(a) = f["address"].as_str() {
                        v.push(a.parse().unwrap());
                    }
                }
            }
        }
        v.sort();
        v.dedup();
        v
    }

    pub fn host(&self, name: &str) -> &SimHost {
        self.hosts.iter().find(|h| h.name == name).unwrap()
    }
}

impl Drop for SimLab {
    fn drop(&mut self) {
        // dockerd: SIGTERM so it stops its containers and unmounts their layers, then wait (bounded).
        for c in &self.dockerd {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        for c in &mut self.dockerd {
            loop {
                match c.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        kill_tree(c.id());
                        let _ = c.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        }
        for c in &mut self.children {
            kill_tree(c.id());
            let _ = c.wait();
        }
        // Anything still running inside the lab's namespaces (shims, proxies) goes by pid too.
        for ns in &self.namespaces {
            if let Ok(o) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for p in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-KILL", p]).status();
                }
            }
        }
        // Mounts dockerd left behind under the lab's directory (a killed engine leaves its overlays).
        let d = self.dir.path().display().to_string();
        if let Ok(m) = std::fs::read_to_string("/proc/self/mounts") {
            let mut points: Vec<&str> = m
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter(|p| p.starts_with(&d))
                .collect();
            points.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for p in points {
                let _ = Command::new("umount").args(["-l", p]).status();
            }
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

pub fn flows(x: &Value) -> impl Iterator<Item = &Value> {
    x["flows"].as_array().into_iter().flatten()
}

/// The policy's `from`: `any`, or only the listed networks/hosts.
pub fn admits(from: &Value, src: Ipv4Addr) -> bool {
    match from["kind"].as_str() {
        Some("any") => true,
        _ => from["sources"].as_array().into_iter().flatten().any(|s| {
            let c = s["cidr"].as_str().unwrap();
            match c.parse::<Ipv4Net>() {
                Ok(n) => n.contains(&src),
                Err(_) => c.parse::<Ipv4Addr>().map(|a| a == src).unwrap_or(false),
            }
        }),
    }
}

/// Run every probe from inside network namespace `ns` (this thread joins it; a current-thread runtime keeps
/// every socket in it), all concurrently, each bounded by PROBE_TIMEOUT.
pub fn probe_in_ns(ns: &str, targets: &[(SocketAddr, Proto)]) -> Vec<bool> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("netns file");
    // SAFETY: setns on this thread only, with a valid namespace fd.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {ns}: {}", std::io::Error::last_os_error());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Bounded: at most 128 sockets of this source at once.
        let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(128));
        let mut out = Vec::with_capacity(targets.len());
        let handles: Vec<_> = targets
            .iter()
            .map(|(a, p)| {
                let (a, p, sem) = (*a, *p, sem.clone());
                tokio::spawn(async move {
                    let _permit = sem.acquire_owned().await.ok()?;
                    Some(probe_one(a, p).await)
                })
            })
            .collect();
        for h in handles {
            out.push(h.await.ok().flatten().unwrap_or(false));
        }
        out
    })
}

/// A DNS query for lab.home.arpa/A with id 0x4c46: the stand-in answers it with the QR bit set.
const DNS_QUERY: [u8; 31] = [
    0x4c, 0x46, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 3, b'l', b'a', b'b', 4, b'h', b'o', b'm', b'e',
    4, b'a', b'r', b'p', b'a', 0, 0, 1, 0, 1,
];

async fn probe_one(addr: SocketAddr, proto: Proto) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let work = async move {
        match proto {
            Proto::Tcp => {
                let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
                let payload = format!("lf-probe {addr}\n");
                s.write_all(payload.as_bytes()).await.ok()?;
                let mut buf = vec![0u8; payload.len()];
                s.read_exact(&mut buf).await.ok()?;
                (buf == payload.as_bytes()).then_some(())
            }
            Proto::Udp => {
                let s = tokio::net::UdpSocket::bind("0.0.0.0:0").await.ok()?;
                s.connect(addr).await.ok()?;
                s.send(&DNS_QUERY).await.ok()?;
                let mut buf = [0u8; 512];
                let n = s.recv(&mut buf).await.ok()?;
                (n >= 12 && buf[0] == 0x4c && buf[1] == 0x46 && buf[2] & 0x80 != 0).then_some(())
            }
        }
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, work).await,
        Ok(Some(()))
    )
}
