//! Pass conditions → (status, detail). A probe that could not run is an `error`, never a pass.

use super::checks::{Check, Pass, Probe};
use super::{Facts, RemoteOut, Status};
use serde_json::Value;

pub(super) type R = (Status, String);

pub(super) fn ok(d: impl Into<String>) -> R {
    (Status::Pass, d.into())
}
pub(super) fn fail(d: impl Into<String>) -> R {
    (Status::Fail, d.into())
}
pub(super) fn err(d: impl Into<String>) -> R {
    (Status::Error, d.into())
}

pub fn evaluate(c: &Check, f: &Facts) -> R {
    match &c.probe {
        Probe::Remote { key, tool, .. } => {
            if let Some(e) = &f.remote_error {
                return err(e.clone());
            }
            match f.remote.get(key) {
                None => err(format!("probe `{key}` produced no result")),
                Some(RemoteOut::Missing(_)) => err(format!(
                    "`{tool}` is not installed on the host: cannot check (not a pass)"
                )),
                Some(RemoteOut::Failed { status, output }) => err(format!(
                    "probe `{key}` failed with status {status}: {}",
                    output.trim()
                )),
                Some(RemoteOut::Ok(out)) => match &c.pass {
                    Pass::SshdHostKeyAlgorithms { allowed } => {
                        super::eval_sshd::hostkey_algorithms(out, allowed, f)
                    }
                    p => remote(p, out),
                },
            }
        }
        Probe::Accounts { ctx } => {
            if let Some(e) = &f.remote_error {
                return err(e.clone());
            }
            match super::accounts::analyze(ctx, &f.remote) {
                Err(e) => err(e),
                Ok(a) => super::eval_sshd::accounts(ctx, &c.pass, &a),
            }
        }
        Probe::Kexinit { .. } => match &f.kexinit {
            None => err("KEXINIT probe did not run"),
            Some(Err(e)) => err(e.clone()),
            Some(Ok(k)) => match &c.pass {
                Pass::WireSubset { list, allowed } => {
                    let got = match list.as_str() {
                        "kex" => k
                            .kex
                            .iter()
                            .filter(|a| !is_kex_pseudo(a))
                            .cloned()
                            .collect(),
                        "host_key" => k.host_key.clone(),
                        "ciphers" => k.ciphers.clone(),
                        _ => k.macs.clone(),
                    };
                    subset(&got, allowed, &format!("server offers {list}"))
                }
                Pass::WireShares { must_share } => {
                    if k.kex.iter().any(|a| a == must_share) {
                        ok(format!("{must_share} offered"))
                    } else {
                        fail(format!(
                            "server kex {} lacks {must_share}: labforge could not connect",
                            k.kex.join(",")
                        ))
                    }
                }
                Pass::WireHasStrictKex => {
                    if k.kex.iter().any(|a| a == "kex-strict-s-v00@openssh.com") {
                        ok(format!("{} offers kex-strict-s-v00@openssh.com", k.banner))
                    } else {
                        fail(format!("{} does not offer strict KEX", k.banner))
                    }
                }
                p => err(format!("internal: {p:?} on a KEXINIT probe")),
            },
        },
        Probe::Auth { .. } => match &f.auth {
            None => err("auth probe did not run"),
            Some(Err(e)) => err(e.clone()),
            Some(Ok(a)) => match &c.pass {
                Pass::OnlyPublickey => {
                    if a.methods == ["publickey"] {
                        ok("server offers: publickey")
                    } else {
                        fail(format!("server offers: {}", a.methods.join(",")))
                    }
                }
                Pass::PasswordRefused => match a.password_accepted {
                    None => ok("password authentication is not offered"),
                    Some(false) => fail(
                        "password authentication is offered (a wrong password was refused, but guessing is possible)",
                    ),
                    Some(true) => fail("a WRONG password was accepted"),
                },
                p => err(format!("internal: {p:?} on an auth probe")),
            },
        },
        Probe::HostKeyPinned { .. } => match &f.pinned {
            None => err("no SSH connection was attempted"),
            Some(Ok(())) => ok("the presented host key matches the secrets store"),
            Some(Err(e)) => fail(e.clone()),
        },
        Probe::Integrity => match &f.integrity {
            None => err(f
                .remote_error
                .clone()
                .unwrap_or_else(|| "no remote probe ran".into())),
            Some(Ok(how)) => ok(how.clone()),
            Some(Err(e)) => fail(format!("refused: {e}")),
        },
        Probe::Tcp { address, port } => {
            let want_open = matches!(c.pass, Pass::TcpOpen);
            match (f.tcp.get(&(address.clone(), *port)), want_open) {
                (None, _) => err("TCP probe did not run"),
                (Some(true), false) => fail(format!("{address}:{port} accepted a connection")),
                (Some(false), false) => ok(format!("{address}:{port} refused or filtered")),
                (Some(true), true) => ok(format!("{address}:{port} answered")),
                (Some(false), true) => fail(format!(
                    "{address}:{port} did not answer although the exposure policy allows it from here"
                )),
            }
        }
    }
}

fn is_kex_pseudo(a: &str) -> bool {
    a.starts_with("ext-info-") || a.starts_with("kex-strict-")
}

fn subset(got: &[String], allowed: &[String], what: &str) -> R {
    let extra: Vec<&String> = got.iter().filter(|a| !allowed.contains(a)).collect();
    if got.is_empty() {
        fail(format!("{what}: nothing"))
    } else if extra.is_empty() {
        ok(format!("{what}: {}", got.join(",")))
    } else {
        fail(format!(
            "{what} {} not in the spec's list: {}",
            if extra.len() == 1 { "one" } else { "some" },
            extra
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(",")
        ))
    }
}

/// `sshd -T` output → keyword → values (keywords repeat, e.g. listenaddress).
pub(super) fn sshd_map(out: &str) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut m: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for l in out.lines() {
        let mut it = l.splitn(2, ' ');
        let k = it.next().unwrap_or("").to_ascii_lowercase();
        let v = it.next().unwrap_or("").trim().to_string();
        if !k.is_empty() {
            m.entry(k).or_default().push(v);
        }
    }
    m
}

/// Listeners from the kernel tables: (proto, address, port, process shown as data).
fn listeners(out: &str) -> Result<Vec<super::listeners::Listener>, String> {
    super::listeners::parse(out)
}

fn show(l: &super::listeners::Listener) -> String {
    format!("{} {}:{} {}", l.proto, l.addr, l.port, l.process())
}

fn is_wild(a: &str) -> bool {
    matches!(a, "0.0.0.0" | "::" | "*" | "")
}

fn is_loopback(a: &str) -> bool {
    a.parse::<std::net::IpAddr>()
        .map(|ip| ip.is_loopback())
        .unwrap_or(false)
}

fn remote(p: &Pass, out: &str) -> R {
    match p {
        Pass::SshdEquals { keyword, any_of } => {
            let m = sshd_map(out);
            match m.get(keyword).and_then(|v| v.first()) {
                None => err(format!("sshd -T printed no `{keyword}`")),
                Some(v) if any_of.iter().any(|a| a == v) => ok(format!("{keyword} {v}")),
                Some(v) => fail(format!("{keyword} {v} (want {})", any_of.join(" or "))),
            }
        }
        Pass::SshdAtMost { keyword, max } => {
            let m = sshd_map(out);
            match m
                .get(keyword)
                .and_then(|v| v.first())
                .map(|v| (v.clone(), v.parse::<u64>()))
            {
                None => err(format!("sshd -T printed no `{keyword}`")),
                Some((v, Ok(n))) if n <= *max && !(keyword == "logingracetime" && n == 0) => {
                    ok(format!("{keyword} {v}"))
                }
                Some((v, _)) => fail(format!("{keyword} {v} (want at most {max})")),
            }
        }
        Pass::SshdAll { want } => {
            let m = sshd_map(out);
            let bad = super::accounts::mismatches(&m, want);
            if bad.is_empty() {
                ok(want
                    .iter()
                    .map(|(k, v)| format!("{k} {}", v[0]))
                    .collect::<Vec<_>>()
                    .join(", "))
            } else {
                fail(bad.join(", "))
            }
        }
        Pass::SshdSubset { keyword, allowed } => {
            let m = sshd_map(out);
            match m.get(keyword).and_then(|v| v.first()) {
                None => err(format!("sshd -T printed no `{keyword}`")),
                Some(v) => {
                    let got: Vec<String> = v.split(',').map(|s| s.to_string()).collect();
                    subset(&got, allowed, keyword)
                }
            }
        }
        Pass::SshdListenOn { addresses } => {
            let m = sshd_map(out);
            let la = m.get("listenaddress").cloned().unwrap_or_default();
            let bad: Vec<&String> = la
                .iter()
                .filter(|v| {
                    let a = v
                        .rsplit_once(':')
                        .map(|(a, _)| a)
                        .unwrap_or(v)
                        .trim_start_matches('[')
                        .trim_end_matches(']');
                    !addresses.iter().any(|x| x == a)
                })
                .collect();
            if la.is_empty() {
                err("sshd -T printed no listenaddress")
            } else if bad.is_empty() {
                ok(format!("listenaddress {}", la.join(" ")))
            } else {
                fail(format!(
                    "listenaddress {} (want only {})",
                    bad.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" "),
                    addresses.join(" ")
                ))
            }
        }
        Pass::HostKeyTypes {
            algorithms,
            min_rsa_bits,
        } => {
            let mut bad = Vec::new();
            let mut seen = Vec::new();
            for l in out.lines().filter(|l| !l.trim().is_empty()) {
                let f: Vec<&str> = l.split_whitespace().collect();
                let bits: u32 = f.first().and_then(|b| b.parse().ok()).unwrap_or(0);
                let ty = f
                    .last()
                    .map(|t| t.trim_matches(|c| c == '(' || c == ')'))
                    .unwrap_or("")
                    .to_string();
                seen.push(format!("{ty} {bits}"));
                let allowed = match ty.as_str() {
                    "ED25519" => algorithms.iter().any(|a| a == "ssh-ed25519"),
                    "RSA" => {
                        bits >= *min_rsa_bits
                            && algorithms
                                .iter()
                                .any(|a| a.starts_with("rsa-sha2") || a == "ssh-rsa")
                    }
                    "ECDSA" => algorithms.iter().any(|a| a.starts_with("ecdsa-")),
                    _ => false,
                };
                if !allowed {
                    bad.push(format!("{ty} {bits}"));
                }
            }
            if seen.is_empty() {
                err("no host keys found")
            } else if bad.is_empty() {
                ok(seen.join(", "))
            } else {
                fail(format!(
                    "host keys not allowed by the spec: {}",
                    bad.join(", ")
                ))
            }
        }
        Pass::ListenPortOnly { port, addresses } => {
            let ls = match listeners(out) {
                Ok(l) => l,
                Err(e) => return err(e),
            };
            let bad: Vec<String> = ls
                .iter()
                .filter(|l| l.proto == "tcp" && l.port == *port && !addresses.contains(&l.addr))
                .map(show)
                .collect();
            if bad.is_empty() {
                ok(format!("port {port} only on {}", addresses.join(",")))
            } else {
                fail(format!("port {port} also listens on {}", bad.join(", ")))
            }
        }
        Pass::ListenAddressesAllowed { addresses } => {
            let ls = match listeners(out) {
                Ok(l) => l,
                Err(e) => return err(e),
            };
            let bad: Vec<String> = ls
                .iter()
                .filter(|l| !is_loopback(&l.addr) && !addresses.contains(&l.addr))
                .map(show)
                .collect();
            if bad.is_empty() {
                ok("all listeners on loopback or spec addresses")
            } else {
                fail(format!("listeners outside the spec: {}", bad.join("; ")))
            }
        }
        Pass::ListenNoWildcard => {
            let ls = match listeners(out) {
                Ok(l) => l,
                Err(e) => return err(e),
            };
            let bad: Vec<String> = ls.iter().filter(|l| is_wild(&l.addr)).map(show).collect();
            if bad.is_empty() {
                ok("no wildcard listeners")
            } else {
                fail(format!("wildcard listeners: {}", bad.join("; ")))
            }
        }
        Pass::PortsNotListening { ports } => {
            let ls = match listeners(out) {
                Ok(l) => l,
                Err(e) => return err(e),
            };
            let bad: Vec<String> = ls
                .iter()
                .filter(|l| ports.contains(&l.port))
                .map(show)
                .collect();
            if bad.is_empty() {
                ok("none listening")
            } else {
                fail(format!("forbidden ports listening: {}", bad.join("; ")))
            }
        }
        Pass::NftTable { family, name } => with_nft(out, |items| {
            if items.iter().any(|i| {
                i.get("table")
                    .is_some_and(|t| t["family"] == family.as_str() && t["name"] == name.as_str())
            }) {
                ok(format!("table {family} {name} loaded"))
            } else {
                fail(format!("table {family} {name} is not loaded"))
            }
        }),
        Pass::NftInputPolicyDrop => with_nft(out, |items| {
            let chains: Vec<&Value> = items
                .iter()
                .filter_map(|i| i.get("chain"))
                .filter(|c| c["hook"] == "input")
                .collect();
            if chains.is_empty() {
                return fail("no chain on the input hook: everything is accepted");
            }
            let drop = chains.iter().any(|c| c["policy"] == "drop");
            if drop {
                ok(format!("{} input chain(s), policy drop", chains.len()))
            } else {
                fail("no input-hook chain has policy drop")
            }
        }),
        Pass::NftSshOnlyMgmt {
            port,
            interface,
            address,
            cidr,
        } => with_nft(out, |items| {
            let input_chains: Vec<(String, String, String)> = items
                .iter()
                .filter_map(|i| i.get("chain"))
                .filter(|c| c["hook"] == "input")
                .map(|c| {
                    (
                        c["family"].as_str().unwrap_or("").to_string(),
                        c["table"].as_str().unwrap_or("").to_string(),
                        c["name"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect();
            let mut accepts = 0;
            let mut bad = Vec::new();
            for r in items.iter().filter_map(|i| i.get("rule")) {
                let key = (
                    r["family"].as_str().unwrap_or("").to_string(),
                    r["table"].as_str().unwrap_or("").to_string(),
                    r["chain"].as_str().unwrap_or("").to_string(),
                );
                if !input_chains.contains(&key) {
                    continue;
                }
                let expr = r["expr"].as_array().cloned().unwrap_or_default();
                let accepts_rule = expr.iter().any(|e| e.get("accept").is_some());
                if !accepts_rule || !matches_port(&expr, *port) {
                    continue;
                }
                accepts += 1;
                let restricted = expr.iter().any(|e| {
                    let Some(m) = e.get("match") else {
                        return false;
                    };
                    if m["op"] != "==" {
                        return false;
                    }
                    let left = &m["left"];
                    let right = &m["right"];
                    (left["meta"]["key"] == "iifname"
                        && interface.as_deref().is_some_and(|i| right == i))
                        || (left["payload"]["field"] == "daddr" && right == address.as_str())
                        || (left["payload"]["field"] == "saddr"
                            && (right["prefix"].is_object()
                                && format!(
                                    "{}/{}",
                                    right["prefix"]["addr"].as_str().unwrap_or(""),
                                    right["prefix"]["len"]
                                ) == *cidr))
                });
                if !restricted {
                    bad.push(format!("{}/{}/{}", key.0, key.1, key.2));
                }
            }
            if !bad.is_empty() {
                fail(format!(
                    "unrestricted accept of tcp/{port} in {}",
                    bad.join(", ")
                ))
            } else if accepts == 0 {
                fail(format!(
                    "no rule accepts tcp/{port} on the management network"
                ))
            } else {
                ok(format!(
                    "{accepts} rule(s) accept tcp/{port}, all restricted to management"
                ))
            }
        }),
        Pass::DockerNoTcpSocket => {
            let Some((ss, daemon)) = out.split_once("--daemon.json--\n") else {
                return err("the Docker probe printed no daemon.json section");
            };
            let ls = match listeners(ss) {
                Ok(l) => l,
                Err(e) => return err(e),
            };
            let tcp: Vec<String> = ls
                .iter()
                .filter(|l| {
                    l.proto == "tcp"
                        && (l.port == 2375 || l.port == 2376 || l.has_process("dockerd"))
                })
                .map(show)
                .collect();
            if !tcp.is_empty() {
                return fail(format!("Docker API on TCP: {}", tcp.join("; ")));
            }
            if daemon.contains("tcp://") {
                return fail("/etc/docker/daemon.json configures a tcp:// host");
            }
            ok("unix socket only")
        }
        Pass::DockerSocketMode => {
            let f: Vec<&str> = out.split_whitespace().collect();
            if f.len() == 3 && f[0] == "660" && f[1] == "root" && f[2] == "docker" {
                ok("0660 root:docker")
            } else {
                fail(format!(
                    "docker.sock is {} (want 660 root docker)",
                    out.trim()
                ))
            }
        }
        Pass::DockerNoSocketMounts { allowed_services } => with_containers(out, |cs| {
            let mut bad = Vec::new();
            for c in cs {
                let svc = c["Config"]["Labels"]["com.docker.compose.service"]
                    .as_str()
                    .unwrap_or("");
                let name = c["Name"].as_str().unwrap_or("").trim_start_matches('/');
                let mounts = c["Mounts"].as_array().cloned().unwrap_or_default();
                if mounts.iter().any(|m| {
                    matches!(
                        m["Source"].as_str(),
                        Some("/var/run/docker.sock") | Some("/run/docker.sock")
                    )
                }) && !allowed_services.iter().any(|s| s == svc)
                {
                    bad.push(name.to_string());
                }
            }
            if bad.is_empty() {
                ok(format!(
                    "{} container(s), no undeclared socket mounts",
                    cs.len()
                ))
            } else {
                fail(format!(
                    "containers mounting the Docker socket: {}",
                    bad.join(", ")
                ))
            }
        }),
        Pass::DockerPublishedOn { addresses } => with_containers(out, |cs| {
            let mut bad = Vec::new();
            for (name, cport, hip, hport) in published(cs) {
                if !addresses.contains(&hip) {
                    bad.push(format!(
                        "{name} {cport} on {}:{hport}",
                        if hip.is_empty() { "*" } else { &hip }
                    ));
                }
            }
            if bad.is_empty() {
                ok("published ports bind to servers addresses only")
            } else {
                fail(format!(
                    "published outside {}: {}",
                    addresses.join(","),
                    bad.join("; ")
                ))
            }
        }),
        Pass::DockerMetricsUnpublished { ports } => with_containers(out, |cs| {
            let bad: Vec<String> = published(cs)
                .into_iter()
                .filter(|(_, cport, _, _)| {
                    cport
                        .split('/')
                        .next()
                        .and_then(|p| p.parse::<u16>().ok())
                        .is_some_and(|p| ports.contains(&p))
                })
                .map(|(n, c, h, p)| format!("{n} {c} on {h}:{p}"))
                .collect();
            if bad.is_empty() {
                ok("no metrics port published")
            } else {
                fail(format!("metrics published: {}", bad.join("; ")))
            }
        }),
        Pass::DockerImagesByDigest => with_containers(out, |cs| {
            let bad: Vec<String> = cs
                .iter()
                .filter(|c| {
                    !c["Config"]["Image"]
                        .as_str()
                        .unwrap_or("")
                        .contains("@sha256:")
                })
                .map(|c| {
                    format!(
                        "{} ({})",
                        c["Name"].as_str().unwrap_or("").trim_start_matches('/'),
                        c["Config"]["Image"].as_str().unwrap_or("?")
                    )
                })
                .collect();
            if bad.is_empty() {
                ok(format!("{} container(s) pinned by digest", cs.len()))
            } else {
                fail(format!("images without a digest: {}", bad.join(", ")))
            }
        }),
        Pass::AccountExists { user } => {
            if out
                .lines()
                .any(|l| l.split(':').next() == Some(user.as_str()))
            {
                ok(format!("{user} exists"))
            } else {
                fail(format!("no account {user}"))
            }
        }
        Pass::RootLocked => {
            let pw = out.trim().split(':').nth(1).unwrap_or("");
            if pw.starts_with('!') || pw.starts_with('*') {
                ok("root password locked")
            } else if pw.is_empty() {
                fail("root has an EMPTY password")
            } else {
                fail("root has a usable password hash")
            }
        }
        Pass::SingleUid0 => {
            let uid0: Vec<&str> = out
                .lines()
                .filter(|l| l.split(':').nth(2) == Some("0"))
                .filter_map(|l| l.split(':').next())
                .collect();
            if uid0 == ["root"] {
                ok("only root has UID 0")
            } else {
                fail(format!("UID 0 accounts: {}", uid0.join(", ")))
            }
        }
        Pass::AuthorizedKeys { keys } => {
            let norm = |l: &str| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let i = f.iter().position(|x| {
                    x.starts_with("ssh-") || x.starts_with("ecdsa-") || x.starts_with("sk-")
                });
                i.and_then(|i| Some(format!("{} {}", f[i], f.get(i + 1)?)))
            };
            let want: std::collections::BTreeSet<String> =
                keys.iter().filter_map(|k| norm(k)).collect();
            let got: std::collections::BTreeSet<String> = out
                .lines()
                .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
                .filter_map(norm)
                .collect();
            if want == got {
                ok(format!("{} key(s), as in the spec", got.len()))
            } else {
                let extra: Vec<&String> = got.difference(&want).collect();
                let missing: Vec<&String> = want.difference(&got).collect();
                fail(format!(
                    "{} key(s) not in the spec, {} spec key(s) missing",
                    extra.len(),
                    missing.len()
                ))
            }
        }
        Pass::NoPackagesMatching { prefixes } => {
            let bad: Vec<&str> = out
                .lines()
                .map(|l| l.trim())
                .filter(|p| prefixes.iter().any(|x| p.starts_with(x.as_str())))
                .collect();
            if bad.is_empty() {
                ok("no desktop packages")
            } else {
                fail(format!("desktop packages installed: {}", bad.join(", ")))
            }
        }
        Pass::PathsRemote { paths } => {
            let v: Value = match serde_json::from_str(out) {
                Ok(v) => v,
                Err(e) => return err(format!("findmnt -J output is not JSON: {e}")),
            };
            let mut mounts = Vec::new();
            fn walk(v: &Value, out: &mut Vec<(String, String)>) {
                if let Some(a) = v.as_array() {
                    for m in a {
                        out.push((
                            m["target"].as_str().unwrap_or("").to_string(),
                            m["fstype"].as_str().unwrap_or("").to_string(),
                        ));
                        walk(&m["children"], out);
                    }
                }
            }
            walk(&v["filesystems"], &mut mounts);
            let mut bad = Vec::new();
            for p in paths {
                // The mount that holds p: the longest target that is a prefix of it.
                let best = mounts
                    .iter()
                    .filter(|(t, _)| {
                        p == t
                            || p.starts_with(&format!("{}/", t.trim_end_matches('/')))
                            || t == "/"
                    })
                    .max_by_key(|(t, _)| t.len());
                match best {
                    Some((_, fs)) if fs.starts_with("nfs") || fs == "cifs" || fs == "smb3" => {}
                    Some((t, fs)) => bad.push(format!("{p} is on {t} ({fs})")),
                    None => bad.push(format!("{p} is on no mount")),
                }
            }
            if bad.is_empty() {
                ok("persistent paths are network mounts")
            } else {
                fail(bad.join("; "))
            }
        }
        p => err(format!("internal: {p:?} on a remote probe")),
    }
}

fn matches_port(expr: &[Value], port: u16) -> bool {
    expr.iter().any(|e| {
        let Some(m) = e.get("match") else {
            return false;
        };
        let l = &m["left"]["payload"];
        if l["field"] != "dport" {
            return false;
        }
        let r = &m["right"];
        r.as_u64() == Some(port as u64)
            || r["set"]
                .as_array()
                .is_some_and(|s| s.iter().any(|x| x.as_u64() == Some(port as u64)))
            || r["range"].as_array().is_some_and(|a| {
                a.len() == 2
                    && a[0].as_u64().unwrap_or(u64::MAX) <= port as u64
                    && a[1].as_u64().unwrap_or(0) >= port as u64
            })
    })
}

fn with_nft(out: &str, f: impl Fn(&Vec<Value>) -> R) -> R {
    match serde_json::from_str::<Value>(out) {
        Ok(v) => match v["nftables"].as_array() {
            Some(items) => f(items),
            None => err("nft -j output has no `nftables` array"),
        },
        Err(e) => err(format!("nft -j output is not JSON: {e}")),
    }
}

fn with_containers(out: &str, f: impl Fn(&Vec<Value>) -> R) -> R {
    match serde_json::from_str::<Value>(out) {
        Ok(Value::Array(a)) => f(&a),
        Ok(_) => err("docker inspect did not print an array"),
        Err(e) => err(format!("docker inspect output is not JSON: {e}")),
    }
}

/// (container, "port/proto", host ip, host port) for every published port.
fn published(cs: &[Value]) -> Vec<(String, String, String, String)> {
    let mut v = Vec::new();
    for c in cs {
        let name = c["Name"]
            .as_str()
            .unwrap_or("")
            .trim_start_matches('/')
            .to_string();
        if let Some(ports) = c["NetworkSettings"]["Ports"].as_object() {
            for (cp, binds) in ports {
                for b in binds.as_array().cloned().unwrap_or_default() {
                    v.push((
                        name.clone(),
                        cp.clone(),
                        b["HostIp"].as_str().unwrap_or("").to_string(),
                        b["HostPort"].as_str().unwrap_or("").to_string(),
                    ));
                }
            }
        }
    }
    v
}
