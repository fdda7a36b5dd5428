//! The check catalog: data derived from the spec. Each check says what to run (a [`Probe`]), how to judge
//! it (a [`Pass`] condition), how to fix a finding, and which seed rule it enforces.

use crate::spec::model::*;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub id: String,
    pub title: String,
    /// The seed rule it enforces (document and section).
    pub rule: String,
    pub probe: Probe,
    pub pass: Pass,
    pub remediation: String,
    /// Set when the check does not apply to this host (reported as `skip` with this reason).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_applicable: Option<String>,
}

pub use super::probes::{Pass, Probe};

const SEED_ACCESS: &str = "seed 000 Access Model";
const SEED_FW: &str = "seed 000 Firewall";
const SEED_DOCKER: &str = "seed 001 Service Template";
const SEED_DISPOSABLE: &str = "seed 000 Disposable Nodes";
const SEED_BASELINE: &str = "seed 000 Baseline Packages";

pub const FORBIDDEN_PORTS: &[u16] = &[21, 23, 2375, 2376, 3389, 5900];
pub const DESKTOP_PREFIXES: &[&str] = &[
    "xserver-xorg",
    "xwayland",
    "gnome-shell",
    "gdm3",
    "lightdm",
    "sddm",
    "kde-plasma",
    "plasma-desktop",
    "xfce4",
    "lxde",
    "lxqt",
    "mate-desktop",
    "cinnamon",
    "ubuntu-desktop",
    "task-desktop",
];

/// The address a client on `net` would have (its gateway, else the first host address).
fn client_on(net: &Network) -> String {
    net.gateway
        .map(|g| g.to_string())
        .or_else(|| net.cidr.hosts().next().map(|a| a.to_string()))
        .unwrap_or_else(|| net.cidr.addr().to_string())
}

fn sshd_t(user: &str, addr: &str, laddr: &str, lport: u16) -> String {
    format!("sshd -T -C user={user},host=labforge-verify,addr={addr},laddr={laddr},lport={lport}")
}

/// Every check for one host, in a stable order.
pub fn for_host(spec: &Spec, h: &Host) -> Vec<Check> {
    let mut v = Vec::new();
    if !h.os.has_ssh() {
        return v;
    }
    let hd = &h.hardening;
    let mgmt = h
        .management_address()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let mgmt_iface = h.iface_on_role(spec, NetRole::Management);
    let mgmt_net = mgmt_iface.and_then(|i| spec.networks.get(&i.network));
    let admin = h.login_user().unwrap_or("root").to_string();
    let port = h.facts.ssh_port;
    let mut push = |id: &str, title: String, rule: &str, probe: Probe, pass: Pass, fix: String| {
        v.push(Check {
            id: id.to_string(),
            title,
            rule: rule.to_string(),
            probe,
            pass,
            remediation: fix,
            not_applicable: None,
        })
    };
    let mgmt_client = mgmt_net.map(client_on).unwrap_or_else(|| mgmt.clone());
    let user_net = spec
        .networks
        .values()
        .find(|n| n.role == NetRole::User)
        .or_else(|| spec.networks.values().find(|n| n.role == NetRole::Guest));
    let remote = |key: &str, tool: &str, cmd: String| Probe::Remote {
        key: key.into(),
        tool: tool.into(),
        command: cmd,
    };
    let fix_dropin = "render and deploy the sshd drop-in (`labforge deploy HOST`); remove any sshd_config or Match block that overrides it";
    let yesno = |b: bool| if b { "yes" } else { "no" }.to_string();
    let eq = |k: &str, vals: &[String]| Pass::SshdEquals {
        keyword: k.into(),
        any_of: vals.to_vec(),
    };
    // --- effective sshd config, admin from the management network ---
    let p_mgmt = remote(
        "sshd-mgmt",
        "sshd",
        sshd_t(&admin, &mgmt_client, &mgmt, port),
    );
    let root_values: Vec<String> = if hd.permit_root_login == "no" {
        vec!["no".into()]
    } else {
        vec![hd.permit_root_login.clone(), "no".into()]
    };
    let mgmt_rows: Vec<(&str, Pass)> = vec![
        ("permitrootlogin", eq("permitrootlogin", &root_values)),
        (
            "passwordauthentication",
            eq("passwordauthentication", &["no".into()]),
        ),
        (
            "kbdinteractiveauthentication",
            eq("kbdinteractiveauthentication", &["no".into()]),
        ),
        (
            "pubkeyauthentication",
            eq("pubkeyauthentication", &["yes".into()]),
        ),
        (
            "permitemptypasswords",
            eq("permitemptypasswords", &["no".into()]),
        ),
        (
            "authenticationmethods",
            eq("authenticationmethods", &["publickey".into()]),
        ),
        (
            "x11forwarding",
            eq("x11forwarding", &[yesno(hd.x11_forwarding)]),
        ),
        (
            "allowagentforwarding",
            eq("allowagentforwarding", &[yesno(hd.allow_agent_forwarding)]),
        ),
        (
            "allowtcpforwarding",
            eq(
                "allowtcpforwarding",
                &if hd.allow_tcp_forwarding {
                    vec!["yes".into(), "all".into(), "local".into()]
                } else {
                    vec!["no".into()]
                },
            ),
        ),
        ("permittunnel", eq("permittunnel", &["no".into()])),
        (
            "maxauthtries",
            Pass::SshdAtMost {
                keyword: "maxauthtries".into(),
                max: hd.max_auth_tries as u64,
            },
        ),
        (
            "logingracetime",
            Pass::SshdAtMost {
                keyword: "logingracetime".into(),
                max: hd.login_grace_time as u64,
            },
        ),
        (
            "kexalgorithms",
            Pass::SshdSubset {
                keyword: "kexalgorithms".into(),
                allowed: hd.kex_algorithms.clone(),
            },
        ),
        (
            "ciphers",
            Pass::SshdSubset {
                keyword: "ciphers".into(),
                allowed: hd.ciphers.clone(),
            },
        ),
        (
            "macs",
            Pass::SshdSubset {
                keyword: "macs".into(),
                allowed: hd.macs.clone(),
            },
        ),
        (
            "hostkeyalgorithms",
            Pass::SshdHostKeyAlgorithms {
                allowed: hd.host_key_algorithms.clone(),
            },
        ),
        (
            "listenaddress",
            Pass::SshdListenOn {
                addresses: vec![mgmt.clone()],
            },
        ),
        ("port", eq("port", &[port.to_string()])),
    ];
    let mut mgmt_rows = mgmt_rows;
    for (k, vals) in super::accounts::forwarding(
        hd.x11_forwarding,
        hd.allow_agent_forwarding,
        hd.allow_tcp_forwarding,
    ) {
        if !mgmt_rows.iter().any(|(x, _)| *x == k) {
            mgmt_rows.push((k, eq(k, &vals)));
        }
    }
    mgmt_rows.push((
        "key-sources",
        Pass::SshdAll {
            want: super::accounts::key_sources()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        },
    ));
    for (k, pass) in mgmt_rows {
        push(
            &format!("sshd.mgmt.{k}"),
            format!("sshd -T for {admin} from the management network: {k}"),
            SEED_ACCESS,
            p_mgmt.clone(),
            pass,
            fix_dropin.into(),
        );
    }
    // --- the same from the user network: catches `Match Address` blocks that loosen auth ---
    let user_rows = [
        "passwordauthentication",
        "kbdinteractiveauthentication",
        "authenticationmethods",
        "permitemptypasswords",
        "pubkeyauthentication",
        "x11forwarding",
        "allowtcpforwarding",
        "permittunnel",
    ];
    let p_user = user_net.map(|n| {
        remote(
            "sshd-user",
            "sshd",
            sshd_t(&admin, &client_on(n), &mgmt, port),
        )
    });
    for k in user_rows {
        let pass = match k {
            "passwordauthentication"
            | "kbdinteractiveauthentication"
            | "permitemptypasswords"
            | "permittunnel" => eq(k, &["no".into()]),
            "authenticationmethods" => eq(k, &["publickey".into()]),
            "pubkeyauthentication" => eq(k, &["yes".into()]),
            "x11forwarding" => eq(k, &[yesno(hd.x11_forwarding)]),
            _ => eq(k, &["no".into()]),
        };
        let mut c = Check {
            id: format!("sshd.user.{k}"),
            title: format!("sshd -T for {admin} from the user network: {k} (Match blocks)"),
            rule: SEED_ACCESS.into(),
            probe: p_user.clone().unwrap_or_else(|| p_mgmt.clone()),
            pass,
            remediation:
                "remove the `Match Address` block that loosens sshd for user-network clients".into(),
            not_applicable: None,
        };
        if p_user.is_none() {
            c.not_applicable = Some("the spec has no user or guest network".into());
        }
        v.push(c);
    }
    let mut push = |id: &str, title: String, rule: &str, probe: Probe, pass: Pass, fix: String| {
        v.push(Check {
            id: id.to_string(),
            title,
            rule: rule.to_string(),
            probe,
            pass,
            remediation: fix,
            not_applicable: None,
        })
    };
    push(
        "sshd.root.permitrootlogin",
        "sshd -T for root from the management network: permitrootlogin".into(),
        SEED_ACCESS,
        remote(
            "sshd-root",
            "sshd",
            sshd_t("root", &mgmt_client, &mgmt, port),
        ),
        eq("permitrootlogin", &root_values),
        "remove the `Match User root` block that permits root login".into(),
    );
    // --- on the wire ---
    let kex = Probe::Kexinit {
        address: mgmt.clone(),
        port,
    };
    let auth = Probe::Auth {
        address: mgmt.clone(),
        port,
        user: admin.clone(),
    };
    push(
        "wire.auth.methods",
        "authentication methods offered on the wire are publickey only".into(),
        SEED_ACCESS,
        auth.clone(),
        Pass::OnlyPublickey,
        fix_dropin.into(),
    );
    push(
        "wire.auth.password",
        "password authentication is refused".into(),
        SEED_ACCESS,
        auth,
        Pass::PasswordRefused,
        "PasswordAuthentication no (and no Match block re-enabling it)".into(),
    );
    for (list, allowed, id) in [
        ("kex", &hd.kex_algorithms, "wire.kex"),
        ("ciphers", &hd.ciphers, "wire.ciphers"),
        ("macs", &hd.macs, "wire.macs"),
        (
            "host_key",
            &hd.host_key_algorithms,
            "wire.hostkey-algorithms",
        ),
    ] {
        push(
            id,
            format!("server KEXINIT {list} offers only the spec's algorithms"),
            SEED_ACCESS,
            kex.clone(),
            Pass::WireSubset {
                list: list.into(),
                allowed: allowed.clone(),
            },
            fix_dropin.into(),
        );
    }
    push(
        "wire.labforge-kex",
        "server offers curve25519-sha256, which labforge's SSH client speaks (no lock-out)".into(),
        SEED_ACCESS,
        kex.clone(),
        Pass::WireShares {
            must_share: "curve25519-sha256".into(),
        },
        "keep curve25519-sha256 in KexAlgorithms".into(),
    );
    push(
        "wire.strict-kex",
        "server implements strict KEX (Terrapin, CVE-2023-48795)".into(),
        SEED_ACCESS,
        kex,
        Pass::WireHasStrictKex,
        "upgrade OpenSSH to 9.6 or a distribution build with the Terrapin fix".into(),
    );
    push(
        "hostkey.pinned",
        "the host key matches the one in the secrets store".into(),
        SEED_ACCESS,
        Probe::HostKeyPinned {
            address: mgmt.clone(),
            port,
        },
        Pass::Pinned,
        "reinstall the host from its seed, or `labforge render` if the store's key was replaced on purpose".into(),
    );
    push(
        "probe.output-authentic",
        "the host's probe output is exactly framed (this run's nonce) and signed by its pinned host key".into(),
        SEED_ACCESS,
        Probe::Integrity,
        Pass::Authentic,
        "find what rewrites command output on the host — a ForceCommand wrapper, the admin's login-shell startup files (a `sudo` or `exec` function in ~/.bashrc, ~/.zshenv), a replaced sudo or sh — remove it, and re-run verify".into(),
    );
    push(
        "hostkey.types",
        "sshd serves only the spec's host key types (RSA ≥ 3072 bits)".into(),
        SEED_ACCESS,
        remote(
            "hostkeys",
            "ssh-keygen",
            format!("{} | awk '$1==\"hostkey\"{{print $2}}' | while read -r k; do ssh-keygen -l -f \"$k\"; done", sshd_t(&admin, &mgmt_client, &mgmt, port)),
        ),
        Pass::HostKeyTypes {
            algorithms: hd.host_key_algorithms.clone(),
            min_rsa_bits: 3072,
        },
        "remove other HostKey lines and key files; keep /etc/ssh/ssh_host_ed25519_key".into(),
    );
    // --- listeners ---
    let ss = remote(
        "listeners",
        super::listeners::TOOL,
        super::listeners::PROBE.into(),
    );
    let mut allowed_addrs: Vec<String> = h
        .interfaces
        .iter()
        .filter_map(|i| i.address.map(|a| a.to_string()))
        .collect();
    allowed_addrs.sort();
    push(
        "listen.ssh-mgmt-only",
        format!("port {port} listens only on the management address"),
        SEED_ACCESS,
        ss.clone(),
        Pass::ListenPortOnly {
            port,
            addresses: vec![mgmt.clone()],
        },
        "ListenAddress <management address> in the sshd drop-in".into(),
    );
    push(
        "listen.addresses",
        "every listener is on loopback or one of the host's spec addresses".into(),
        SEED_FW,
        ss.clone(),
        Pass::ListenAddressesAllowed {
            addresses: allowed_addrs.clone(),
        },
        "bind services to their network's address (compose ports use LABFORGE_BIND_*)".into(),
    );
    push(
        "listen.no-wildcard",
        "nothing listens on 0.0.0.0 / [::] / *".into(),
        SEED_FW,
        ss.clone(),
        Pass::ListenNoWildcard,
        "bind the service to one address".into(),
    );
    push(
        "listen.forbidden-ports",
        format!("none of the forbidden ports {FORBIDDEN_PORTS:?} listens"),
        SEED_FW,
        ss.clone(),
        Pass::PortsNotListening {
            ports: FORBIDDEN_PORTS.to_vec(),
        },
        "stop the service (telnet/ftp/VNC/RDP/Docker API)".into(),
    );
    // --- firewall ---
    let nft = remote("nft", "nft", "nft -j list ruleset".into());
    push(
        "fw.table",
        "the labforge nftables table is loaded".into(),
        SEED_FW,
        nft.clone(),
        Pass::NftTable {
            family: "inet".into(),
            name: "labforge".into(),
        },
        "nft -f /etc/nftables.conf (labforge deploy)".into(),
    );
    push(
        "fw.input-drop",
        format!("input policy is {}", hd.firewall_default),
        SEED_FW,
        nft.clone(),
        Pass::NftInputPolicyDrop,
        "policy drop on every input-hook chain".into(),
    );
    push(
        "fw.ssh-mgmt-only",
        "SSH is accepted only on the management interface/address".into(),
        SEED_FW,
        nft,
        Pass::NftSshOnlyMgmt {
            port,
            interface: mgmt_iface.map(|i| i.name.clone()),
            address: mgmt.clone(),
            cidr: mgmt_net.map(|n| n.cidr.to_string()).unwrap_or_default(),
        },
        "restrict the SSH accept rule with iifname/ip daddr of the management network".into(),
    );
    // --- Docker ---
    let stacks: Vec<&Stack> = h.stacks.iter().filter_map(|s| spec.stacks.get(s)).collect();
    let no_docker = if stacks.is_empty() {
        Some("the host runs no stacks".to_string())
    } else {
        None
    };
    let servers: Vec<String> = h
        .interfaces
        .iter()
        .filter(|i| spec.networks.get(&i.network).map(|n| n.role) == Some(NetRole::Servers))
        .filter_map(|i| i.address.map(|a| a.to_string()))
        .collect();
    let socket_ok: Vec<String> = stacks
        .iter()
        .flat_map(|s| {
            s.services
                .values()
                .filter(|x| x.docker_socket)
                .map(|x| x.name.clone())
        })
        .collect();
    let metrics: Vec<u16> = stacks
        .iter()
        .flat_map(|s| {
            s.services
                .values()
                .filter_map(|x| x.metrics.as_ref().map(|m| m.port))
        })
        .collect();
    let inspect = remote(
        "docker-inspect",
        "docker",
        "ids=$(docker ps -q); if [ -z \"$ids\" ]; then echo '[]'; else docker inspect $ids; fi"
            .into(),
    );
    let docker_rows: Vec<(&str, String, Probe, Pass, &str)> = vec![
        (
            "docker.no-tcp-socket",
            "the Docker API listens on no TCP port and daemon.json has no tcp:// host".into(),
            remote(
                "docker-daemon",
                super::listeners::TOOL,
                format!(
                    "{}\necho '--daemon.json--'; cat \"${{LABFORGE_ROOT:-}}/etc/docker/daemon.json\" 2>/dev/null || true",
                    super::listeners::PROBE
                ),
            ),
            Pass::DockerNoTcpSocket,
            "remove `-H tcp://` / `hosts` from dockerd; use the unix socket",
        ),
        (
            "docker.socket-mode",
            "/var/run/docker.sock is 0660 root:docker".into(),
            remote(
                "docker-sock",
                "stat",
                "stat -L -c '%a %U %G' \"${LABFORGE_ROOT:-}/var/run/docker.sock\"".into(),
            ),
            Pass::DockerSocketMode,
            "chmod 0660 /var/run/docker.sock; chown root:docker",
        ),
        (
            "docker.no-socket-mounts",
            format!("no container mounts the Docker socket (documented exceptions: {socket_ok:?})"),
            inspect.clone(),
            Pass::DockerNoSocketMounts {
                allowed_services: socket_ok.clone(),
            },
            "drop the /var/run/docker.sock volume, or declare docker_socket = true with an exception",
        ),
        (
            "docker.published-on-servers",
            format!("published ports bind only to the servers address(es) {servers:?}"),
            inspect.clone(),
            Pass::DockerPublishedOn {
                addresses: servers.clone(),
            },
            "publish as \"${LABFORGE_BIND_SERVERS}:PORT:PORT\" (labforge render)",
        ),
        (
            "docker.metrics-unpublished",
            "metrics ports are never published".into(),
            inspect.clone(),
            Pass::DockerMetricsUnpublished { ports: metrics },
            "remove the metrics port from `ports:`; Prometheus scrapes it on the Docker network",
        ),
        (
            "docker.images-by-digest",
            "every running container's image is pinned by digest".into(),
            inspect,
            Pass::DockerImagesByDigest,
            "pin image@sha256:… in the spec and redeploy",
        ),
    ];
    for (id, title, probe, pass, fix) in docker_rows {
        v.push(Check {
            id: id.into(),
            title,
            rule: SEED_DOCKER.into(),
            probe,
            pass,
            remediation: fix.into(),
            not_applicable: no_docker.clone(),
        });
    }
    // --- accounts ---
    let pw = super::accounts::PASSWD;
    let passwd = remote(pw.0, pw.1, pw.2.into());
    let mut push = |id: &str, title: String, rule: &str, probe: Probe, pass: Pass, fix: String| {
        v.push(Check {
            id: id.to_string(),
            title,
            rule: rule.to_string(),
            probe,
            pass,
            remediation: fix,
            not_applicable: None,
        })
    };
    push(
        "accounts.admin-exists",
        format!("admin account `{admin}` exists"),
        SEED_ACCESS,
        passwd.clone(),
        Pass::AccountExists {
            user: admin.clone(),
        },
        "re-seed the host (cloud-init creates the admin)".into(),
    );
    push(
        "accounts.root-locked",
        "root's password is locked".into(),
        SEED_ACCESS,
        remote("shadow-root", "getent", "getent shadow root".into()),
        Pass::RootLocked,
        "passwd -l root".into(),
    );
    push(
        "accounts.single-uid0",
        "root is the only UID 0 account".into(),
        SEED_ACCESS,
        passwd,
        Pass::SingleUid0,
        "remove or renumber the extra UID 0 account".into(),
    );
    // --- every account sshd would admit, from every address that matters ---
    let admins: Vec<(String, Vec<String>)> = h
        .facts
        .admins
        .iter()
        .map(|n| {
            let keys = spec
                .site
                .admins
                .iter()
                .filter(|a| &a.name == n)
                .flat_map(|a| a.ssh_keys.clone())
                .collect();
            (n.clone(), keys)
        })
        .collect();
    let mut reps: Vec<String> = Vec::new();
    for n in spec.networks.values() {
        let mut r = super::accounts::representatives(&n.cidr);
        if let Some(g) = n.gateway {
            r.push(g.to_string());
        }
        for a in r {
            if !reps.contains(&a) {
                reps.push(a);
            }
        }
    }
    let actx = super::accounts::Ctx {
        admin: admin.clone(),
        admins: admins.clone(),
        mgmt_client: mgmt_client.clone(),
        laddr: mgmt.clone(),
        lport: port,
        reps,
        root_values: root_values.clone(),
        x11: hd.x11_forwarding,
        agent: hd.allow_agent_forwarding,
        tcp: hd.allow_tcp_forwarding,
    };
    let ap = Probe::Accounts {
        ctx: Box::new(actx),
    };
    let names: Vec<&str> = admins.iter().map(|a| a.0.as_str()).collect();
    push(
        "sshd.allowusers",
        format!("sshd admits exactly the spec's admins {names:?}, from every address"),
        SEED_ACCESS,
        ap.clone(),
        Pass::AdmitsExactly,
        format!("AllowUsers {} in the sshd drop-in; remove other AllowUsers/AllowGroups entries and Match blocks that admit more accounts", names.join(" ")),
    );
    use super::accounts::{Group, Scope};
    for (scope, sid, who) in [
        (
            Scope::Accounts,
            "accounts",
            "every other account sshd admits, from every address",
        ),
        (
            Scope::Addresses,
            "addresses",
            "the admin from every network's representative addresses and every Match address",
        ),
    ] {
        for (group, gid, what) in [
            (Group::Auth, "auth", "key-only authentication"),
            (
                Group::Forwarding,
                "forwarding",
                "no forwarding, tunnels or user environment beyond the spec",
            ),
            (
                Group::KeySources,
                "key-sources",
                "no key source but the authorized keys files",
            ),
        ] {
            push(
                &format!("sshd.{sid}.{gid}"),
                format!("sshd -T for {who}: {what}"),
                SEED_ACCESS,
                ap.clone(),
                Pass::AccountRows { scope, group },
                "remove the `Match` block (User, Group or Address) that loosens sshd for these clients".into(),
            );
        }
    }
    push(
        "accounts.authorized-keys",
        "every key file sshd reads for an admitted account holds exactly that admin's spec keys".into(),
        SEED_ACCESS,
        ap,
        Pass::KeyFiles,
        "rewrite the listed key files from the spec (cloud-init / labforge deploy) and remove extra AuthorizedKeysFile entries".into(),
    );
    let (ptool, pcmd) = match h.os {
        Os::Nixos => (
            "nix-store",
            "nix-store --query --requisites /run/current-system | sed 's|^/nix/store/[a-z0-9]*-||'"
                .to_string(),
        ),
        _ => (
            "dpkg-query",
            "dpkg-query -W -f '${db:Status-Abbrev} ${Package}\\n' | awk '$1 ~ /^ii/ {print $2}'"
                .to_string(),
        ),
    };
    push(
        "packages.no-desktop",
        "no desktop environment or display server is installed".into(),
        SEED_BASELINE,
        remote("packages", ptool, pcmd),
        Pass::NoPackagesMatching {
            prefixes: DESKTOP_PREFIXES.iter().map(|s| s.to_string()).collect(),
        },
        "apt purge the desktop packages (servers are headless)".into(),
    );
    let paths = h.persistent_paths.clone();
    v.push(Check {
        id: "mounts.persistent-remote".into(),
        title: format!("persistent paths {paths:?} are network mounts (disposable node)"),
        rule: SEED_DISPOSABLE.into(),
        probe: remote("findmnt", "findmnt", "findmnt -J".into()),
        pass: Pass::PathsRemote {
            paths: paths.clone(),
        },
        remediation: "mount the persistent paths from storage (NFS/SMB) before running workloads"
            .into(),
        not_applicable: if !h.disposable {
            Some("the host is not disposable".into())
        } else if paths.is_empty() {
            Some("the host declares no persistent paths".into())
        } else {
            None
        },
    });
    // --- from the controller: forbidden address/port pairs are closed ---
    for i in &h.interfaces {
        let Some(a) = i.address else { continue };
        let role = spec.networks.get(&i.network).map(|n| n.role);
        if role == Some(NetRole::Management) {
            continue;
        }
        v.push(Check {
            id: format!("probe.ssh-closed.{}", i.network),
            title: format!(
                "TCP {a}:{port} (SSH on {}) is closed from the controller",
                i.network
            ),
            rule: SEED_ACCESS.into(),
            probe: Probe::Tcp {
                address: a.to_string(),
                port,
            },
            pass: Pass::TcpClosed,
            remediation: "ListenAddress only the management address; drop SSH on other interfaces"
                .into(),
            not_applicable: None,
        });
    }
    for p in [2375u16, 2376] {
        v.push(Check {
            id: format!("probe.docker-api-closed.{p}"),
            title: format!("TCP {mgmt}:{p} (Docker API) is closed from the controller"),
            rule: SEED_DOCKER.into(),
            probe: Probe::Tcp {
                address: mgmt.clone(),
                port: p,
            },
            pass: Pass::TcpClosed,
            remediation: "never expose the Docker API on TCP".into(),
            not_applicable: None,
        });
    }
    v
}

/// The exposure policy from the controller's vantage point (`controller` is the source address the
/// controller's connections to the host leave from). Every TCP port of a policy flow at a host address, plus
/// the never-allowed ports below, is probed: a flow the policy allows from there must answer (so its replies
/// pass), anything else must not. UDP cannot be judged by a connect, and sources other than the controller
/// only by the simulated lab (docs/verify.md). SSH on non-management addresses and the Docker API have their
/// own checks above and are not probed twice.
pub fn exposure_checks(spec: &Spec, h: &Host, controller: std::net::IpAddr) -> Vec<Check> {
    use crate::plan::exposure::{exposure, FlowKind};
    let Some(x) = exposure(spec, h) else {
        return Vec::new();
    };
    const NEVER: [u16; 3] = [23, 111, 9100];
    let mut v = Vec::new();
    for a in &x.addresses {
        let mut ports: Vec<u16> = x
            .flows
            .iter()
            .filter(|f| f.protocol == Proto::Tcp)
            .map(|f| f.port)
            .chain(NEVER)
            .collect();
        ports.sort();
        ports.dedup();
        for port in ports {
            let flow = x.flows.iter().find(|f| {
                f.address == Some(a.address)
                    && f.port == port
                    && f.protocol == Proto::Tcp
                    && f.from.admits(controller)
            });
            if flow.is_none()
                && ((port == h.facts.ssh_port && a.role != NetRole::Management)
                    || (a.role == NetRole::Management && [2375, 2376].contains(&port)))
            {
                continue;
            }
            let (title, pass, fix) = match flow {
                Some(f) => (
                    format!(
                        "TCP {}:{port} ({}) answers the controller",
                        a.address, f.id
                    ),
                    Pass::TcpOpen,
                    match f.what {
                        FlowKind::Published => format!(
                            "start the service (`labforge deploy {}`) and load the rendered ruleset",
                            h.name
                        ),
                        _ => "load the rendered ruleset (`labforge deploy`) and start the service".into(),
                    },
                ),
                None => (
                    format!(
                        "TCP {}:{port} is closed to the controller ({controller}): the exposure policy does not allow it",
                        a.address
                    ),
                    Pass::TcpClosed,
                    "load the rendered ruleset (`labforge deploy`); stop what listens there".into(),
                ),
            };
            v.push(Check {
                id: format!("exposure.{}.{port}", a.network),
                title,
                rule: "seed 000 Access Model (exposure policy)".into(),
                probe: Probe::Tcp {
                    address: a.address.to_string(),
                    port,
                },
                pass,
                remediation: fix,
                not_applicable: None,
            });
        }
    }
    v
}

/// How many distinct checks the catalog defines (for docs and tests).
pub fn catalog_ids(spec: &Spec) -> std::collections::BTreeSet<String> {
    spec.hosts
        .values()
        .flat_map(|h| for_host(spec, h).into_iter().map(|c| c.id))
        .collect()
}
