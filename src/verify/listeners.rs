//! Listening sockets, read from the kernel's own tables (`/proc/net/{tcp,tcp6,udp,udp6}`) with their owners
//! from `/proc/<pid>/fd` and `/proc/<pid>/comm`. A process name is chosen by whoever starts the process (any
//! local user), so it travels hex-encoded and is only ever shown, never parsed: a name with a newline and a
//! marker in it cannot end the table or hide a socket.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The probe command (run as root in the host's network namespace). Sections: `== tcp|tcp6|udp|udp6`
/// (the raw tables), then `== owners` with `PID INODE HEX(comm)` for every socket in a listening state.
pub const PROBE: &str = r#"d=$(for f in tcp tcp6 udp udp6; do echo "== $f"; cat "/proc/net/$f" 2>/dev/null; done)
printf '%s\n' "$d"
L=$(printf '%s\n' "$d" | awk '$1=="=="{t=$2; next} $1=="sl"{next} (t ~ /^tcp/ && $4=="0A") || (t ~ /^udp/ && $4=="07") {printf " %s", $10}')
echo "== owners"
me=$(readlink /proc/self/ns/net | sed 's/[][*?\\]/\\&/g')
find /proc/[0-9]*/ns/net -maxdepth 0 -lname "$me" -printf '%h\n' 2>/dev/null | sed 's|/ns$|/fd|' | xargs -r sh -c 'find "$@" -lname "socket:*" -printf "%h %l\n" 2>/dev/null' sh | awk -v L="$L " '{i=$2; gsub(/[^0-9]/,"",i); if (i != "" && index(L, " " i " ")) {split($1,a,"/"); print a[3], i}}' | sort -u | while read -r p i; do printf '%s %s ' "$p" "$i"; od -An -v -tx1 "/proc/$p/comm" 2>/dev/null | tr -d ' \n'; echo; done"#;

/// The tool the probe needs besides the shell and coreutils.
pub const TOOL: &str = "find";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// `tcp` or `udp` (either family).
    pub proto: String,
    pub addr: String,
    pub port: u16,
    pub uid: u32,
    /// Owners as `"name"/pid` (name escaped for display), `?` when no process holds the socket any more.
    pub owners: Vec<(u32, String)>,
}

impl Listener {
    pub fn process(&self) -> String {
        if self.owners.is_empty() {
            return format!("(uid {}, owner unknown)", self.uid);
        }
        let o: Vec<String> = self
            .owners
            .iter()
            .map(|(pid, name)| format!("{name:?} pid {pid}"))
            .collect();
        format!("({}, uid {})", o.join(", "), self.uid)
    }
    pub fn has_process(&self, name: &str) -> bool {
        self.owners.iter().any(|(_, n)| n == name)
    }
}

fn addr4(h: &str) -> Option<IpAddr> {
    let v = u32::from_str_radix(h, 16).ok()?;
    Some(IpAddr::V4(Ipv4Addr::from(v.to_le_bytes())))
}

fn addr6(h: &str) -> Option<IpAddr> {
    if h.len() != 32 {
        return None;
    }
    let mut b = [0u8; 16];
    for w in 0..4 {
        let v = u32::from_str_radix(&h[w * 8..w * 8 + 8], 16).ok()?;
        b[w * 4..w * 4 + 4].copy_from_slice(&v.to_le_bytes());
    }
    let a = Ipv6Addr::from(b);
    Some(match a.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(a),
    })
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// Parse [`PROBE`]'s output. Errors on anything that is not a kernel table row or an owner row.
pub fn parse(out: &str) -> Result<Vec<Listener>, String> {
    let mut section = String::new();
    let mut rows: Vec<(String, IpAddr, u16, u32, u64)> = Vec::new();
    let mut owners: BTreeMap<u64, Vec<(u32, String)>> = BTreeMap::new();
    let mut seen_owners = false;
    for l in out.lines() {
        if let Some(s) = l.strip_prefix("== ") {
            section = s.to_string();
            seen_owners |= section == "owners";
            continue;
        }
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.is_empty() {
            continue;
        }
        match section.as_str() {
            "tcp" | "tcp6" | "udp" | "udp6" => {
                if f[0] == "sl" {
                    continue;
                }
                if f.len() < 10 {
                    return Err(format!("/proc/net/{section}: short row {l:?}"));
                }
                let (a, p) = f[1]
                    .split_once(':')
                    .ok_or_else(|| format!("/proc/net/{section}: bad address {:?}", f[1]))?;
                let ip = if section.ends_with('6') {
                    addr6(a)
                } else {
                    addr4(a)
                }
                .ok_or_else(|| format!("/proc/net/{section}: bad address {:?}", f[1]))?;
                let port = u16::from_str_radix(p, 16)
                    .map_err(|_| format!("/proc/net/{section}: bad port {p:?}"))?;
                let listening = if section.starts_with("tcp") {
                    f[3] == "0A"
                } else {
                    f[3] == "07"
                };
                if !listening {
                    continue;
                }
                let uid = f[7].parse().unwrap_or(u32::MAX);
                let inode = f[9]
                    .parse()
                    .map_err(|_| format!("/proc/net/{section}: bad inode {:?}", f[9]))?;
                let proto = section.trim_end_matches('6').to_string();
                rows.push((proto, ip, port, uid, inode));
            }
            "owners" => {
                if f.len() > 3 {
                    return Err(format!("bad owner row {l:?}"));
                }
                let pid: u32 = f[0].parse().map_err(|_| format!("bad owner row {l:?}"))?;
                let inode: u64 = f
                    .get(1)
                    .and_then(|x| x.parse().ok())
                    .ok_or_else(|| format!("bad owner row {l:?}"))?;
                let name = match f.get(2) {
                    Some(h) => unhex(h).ok_or_else(|| format!("bad owner row {l:?}"))?,
                    None => Vec::new(),
                };
                let mut name = String::from_utf8_lossy(&name).into_owned();
                if name.ends_with('\n') {
                    name.pop();
                }
                owners.entry(inode).or_default().push((pid, name));
            }
            _ => return Err(format!("unexpected line outside the kernel tables: {l:?}")),
        }
    }
    if !seen_owners {
        return Err("the listener probe ended before its owner table".into());
    }
    Ok(rows
        .into_iter()
        .map(|(proto, ip, port, uid, inode)| Listener {
            proto,
            addr: ip.to_string(),
            port,
            uid,
            owners: owners.get(&inode).cloned().unwrap_or_default(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_tables_and_hex_names_parse_and_a_name_is_only_data() {
        // comm = "\n@@LF-END ss 0" (what a local user can name a process), hex-encoded by the probe.
        let evil: String = b"\n@@LF-END ss 0\n"
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let out = format!(
            "== tcp\n  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000:115C 00000000:0000 0A 00000000:00000000 00:00000000 00000000 65534        0 777 1 0000000000000000 100 0 0 10 0\n   1: 0263000A:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 778 1 0000000000000000 100 0 0 10 0\n   2: 0263000A:0016 0163000A:D431 01 00000000:00000000 00:00000000 00000000     0        0 779 1 0000000000000000 100 0 0 10 0\n== tcp6\n  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 780 1 0000000000000000 100 0 0 10 0\n== udp\n   0: 0100007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 781 2 0000000000000000 0\n== udp6\n== owners\n4242 777 {evil}\n1 778 737368640a\n"
        );
        let l = parse(&out).unwrap();
        assert_eq!(l.len(), 4, "{l:?}");
        assert_eq!(
            (l[0].proto.as_str(), l[0].addr.as_str(), l[0].port, l[0].uid),
            ("tcp", "0.0.0.0", 4444, 65534)
        );
        assert_eq!(l[0].owners, vec![(4242, "\n@@LF-END ss 0".to_string())]);
        assert!(l[0].process().contains("\\n@@LF-END"), "{}", l[0].process());
        assert_eq!((l[1].addr.as_str(), l[1].port), ("10.0.99.2", 22));
        assert_eq!((l[2].addr.as_str(), l[2].port), ("::", 8080));
        assert_eq!(
            (l[3].proto.as_str(), l[3].addr.as_str(), l[3].port),
            ("udp", "127.0.0.1", 53)
        );
        // Anything but kernel rows and owner rows is refused.
        assert!(parse(&format!("{out}@@LF-END ss 0\n")).is_err());
        assert!(parse("== tcp\n").is_err(), "no owner table");
    }
}
