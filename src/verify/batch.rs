//! The remote probe batch: one script per run, framed so the host it judges cannot forge what it reports.
//!
//! * The script travels on stdin (`exec sudo -n /bin/sh -s`), never on the command line: the per-run nonce
//!   it carries is not visible in `ps` to other local users, nor in the `SSH_ORIGINAL_COMMAND` a
//!   `ForceCommand` sees.
//! * Every probe's output is captured to a file first and emitted length-prefixed (`NONCE KEY STATUS LEN`
//!   then exactly LEN bytes), so nothing a probe prints — a process name with a newline and a marker in it, a
//!   forged block — can end or start a frame. The controller accepts exactly the expected sequence of keys
//!   and nothing before, between or after them.
//! * As root, the script signs everything it emits (`ssh-keygen -Y sign`, namespace `labforge-verify`) with
//!   the host key the SSH session was pinned to, and the controller verifies the signature against that
//!   pinned key. The admin's login shell, its startup files (`~/.bashrc` functions named `sudo` or `exec`),
//!   a `ForceCommand` wrapper or anything else between root on the host and the controller cannot rewrite,
//!   drop or append output without holding the host's private key.
//!
//! What this cannot defend against is root on the host itself lying (it holds the key and runs every tool):
//! no remote verifier can. Everything with less privilege is caught.

use super::RemoteOut;
use std::collections::BTreeMap;

/// The `ssh-keygen -Y` namespace of the probe signature (separates it from every other use of the key).
pub const SIG_NAMESPACE: &str = "labforge-verify";

/// One run's script and what its output must look like.
#[derive(Debug, Clone)]
pub struct Batch {
    pub nonce: String,
    pub keys: Vec<String>,
    /// The pinned host public key (`algo base64`) the host must sign with, if any.
    pub host_key: Option<String>,
    pub script: String,
}

/// A fresh random per-run nonce (128 bits, hex).
pub fn nonce() -> String {
    use rand_core::RngCore;
    let mut b = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// Build the batch for `probes` (`key`, `tool`, `command`), signed with the host key whose public half is
/// `host_key` (`algo base64`; looked up among the host's key files), or unsigned when `None`.
pub fn batch(probes: &[(String, String, String)], host_key: Option<&str>) -> Batch {
    batch_with(probes, host_key, &nonce(), "/etc/ssh/ssh_host_*_key")
}

/// [`batch`] with a given nonce and host key file glob (tests).
pub fn batch_with(
    probes: &[(String, String, String)],
    host_key: Option<&str>,
    nonce: &str,
    key_glob: &str,
) -> Batch {
    use crate::transport::sq;
    let host_key = host_key.map(|k| {
        let mut it = k.split_whitespace();
        format!("{} {}", it.next().unwrap_or(""), it.next().unwrap_or(""))
    });
    let mut s = format!(
        r#"set -u
N={n}
umask 077
T=$(mktemp -d 2>/dev/null) || {{ echo "labforge verify: cannot create a temporary directory" >&2; exit 70; }}
trap 'rm -rf "$T"' EXIT
e() {{ printf '%s %s %s %s\n' "$N" "$1" "$2" $(($(wc -c <"$T/p"))); cat "$T/p"; printf '\n'; }}
{{
printf 'LABFORGE-PROBES 1 %s\n' "$N"
"#,
        n = sq(nonce)
    );
    let mut keys = Vec::new();
    for (key, tool, cmd) in probes {
        assert!(valid_key(key), "probe key `{key}`");
        keys.push(key.clone());
        s.push_str(&format!(
            "if command -v {tool} >/dev/null 2>&1; then ( {cmd}\n) </dev/null >\"$T/p\" 2>&1; st=$?; else : >\"$T/p\"; st=missing; fi; e {key} \"$st\"\n",
            tool = sq(tool),
        ));
    }
    s.push_str(&format!(
        "printf '%s end %s\\n' \"$N\" {}\n}} >\"$T/out\"\n",
        keys.len()
    ));
    match &host_key {
        None => s.push_str("cat \"$T/out\"; printf '%s unsigned 0\\n' \"$N\"\n"),
        Some(hk) => s.push_str(&format!(
            r#"HK={hk}
K=
for k in {glob} $(sshd -T 2>/dev/null | awk '$1=="hostkey"{{print $2}}'); do
  [ -f "$k" ] || continue
  if [ -f "$k.pub" ]; then a= b=; read -r a b _ <"$k.pub"; [ -n "$b" ] || continue; else set -- $(ssh-keygen -y -f "$k" 2>/dev/null) x x; a=$1; b=$2; fi
  if [ "$a $b" = "$HK" ]; then K=$k; break; fi
done
if [ -z "$K" ]; then
  echo "no host key file on this host matches the key the session was pinned to" >"$T/p"; w=nosig
elif ssh-keygen -Y sign -q -f "$K" -n {ns} <"$T/out" >"$T/p" 2>"$T/err"; then w=sig
else
  {{ echo "ssh-keygen -Y sign with $K failed:"; cat "$T/err"; }} >"$T/p"; w=nosig
fi
cat "$T/out"; printf '%s %s %s\n' "$N" "$w" $(($(wc -c <"$T/p"))); cat "$T/p"
"#,
            hk = sq(hk),
            glob = key_glob,
            ns = sq(SIG_NAMESPACE),
        )),
    }
    Batch {
        nonce: nonce.to_string(),
        keys,
        host_key,
        script: s,
    }
}

/// The unsigned script for `probes` (what the benchmark hands to Ansible: the same probe work).
pub fn batch_script(probes: &[(String, String, String)]) -> String {
    batch(probes, None).script
}

/// A cursor over the raw output that accepts only the exact expected shape.
struct Cur<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cur<'a> {
    fn line(&mut self, what: &str) -> Result<&'a str, String> {
        let rest = &self.b[self.i..];
        let nl = rest
            .iter()
            .position(|&c| c == b'\n')
            .ok_or_else(|| format!("the output ends before {what} (byte {})", self.i))?;
        let l = std::str::from_utf8(&rest[..nl])
            .map_err(|_| format!("{what} at byte {} is not text", self.i))?;
        self.i += nl + 1;
        Ok(l)
    }
    fn bytes(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self
            .i
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or_else(|| format!("the output ends inside {what} (byte {})", self.i))?;
        let v = &self.b[self.i..end];
        self.i = end;
        Ok(v)
    }
}

fn show(l: &str) -> String {
    let s: String = l.chars().take(80).collect();
    format!("{s:?}")
}

/// Parse a run's output exactly: the header, every expected probe in order, the end line and the signature
/// (verified against the pinned host key). Anything else — a missing, extra, reordered or truncated frame,
/// bytes before or after, a wrong nonce, a bad or missing signature — refuses the whole output.
pub fn parse(out: &[u8], b: &Batch) -> Result<BTreeMap<String, RemoteOut>, String> {
    let n = &b.nonce;
    let mut c = Cur { b: out, i: 0 };
    let head = c.line("the header")?;
    if head != format!("LABFORGE-PROBES 1 {n}") {
        return Err(format!(
            "the output does not start with this run's header (got {}): something on the host printed before the probes ran",
            show(head)
        ));
    }
    let mut m = BTreeMap::new();
    for key in &b.keys {
        let what = format!("probe `{key}`");
        let l = c.line(&what)?;
        let f: Vec<&str> = l.split(' ').collect();
        if f.len() != 4 || f[0] != n || f[1] != key {
            return Err(format!("expected the frame of {what}, got {}", show(l)));
        }
        let len: usize = f[3]
            .parse()
            .map_err(|_| format!("{what}: bad length {}", show(f[3])))?;
        let body = c.bytes(len, &what)?;
        if c.bytes(1, &what)? != b"\n" {
            return Err(format!(
                "{what}: its frame is not closed where its length says"
            ));
        }
        let body = String::from_utf8_lossy(body).into_owned();
        let r = match f[2] {
            "0" => RemoteOut::Ok(body),
            "missing" => RemoteOut::Missing(key.clone()),
            st if st.bytes().all(|x| x.is_ascii_digit()) && !st.is_empty() => RemoteOut::Failed {
                status: st.to_string(),
                output: body,
            },
            st => return Err(format!("{what}: bad status {}", show(st))),
        };
        m.insert(key.clone(), r);
    }
    let l = c.line("the end line")?;
    if l != format!("{n} end {}", b.keys.len()) {
        return Err(format!("expected this run's end line, got {}", show(l)));
    }
    let signed = &out[..c.i];
    let l = c.line("the signature")?;
    let f: Vec<&str> = l.split(' ').collect();
    if f.len() != 3 || f[0] != n {
        return Err(format!(
            "expected this run's signature line, got {}",
            show(l)
        ));
    }
    let len: usize = f[2]
        .parse()
        .map_err(|_| format!("bad signature length {}", show(f[2])))?;
    let sig = c.bytes(len, "the signature")?;
    if c.i != out.len() {
        return Err(format!(
            "{} byte(s) follow the signed output (forged or appended output)",
            out.len() - c.i
        ));
    }
    match (&b.host_key, f[1]) {
        (None, "unsigned") if len == 0 => Ok(m),
        (Some(pk), "sig") => {
            let pk = ssh_key::PublicKey::from_openssh(pk)
                .map_err(|e| format!("the pinned host key does not parse: {e}"))?;
            let sig = ssh_key::SshSig::from_pem(sig)
                .map_err(|e| format!("the probe signature does not parse: {e}"))?;
            pk.verify(SIG_NAMESPACE, signed, &sig).map_err(|_| {
                "the probe output's signature does not verify with the pinned host key: the output was changed between root on the host and labforge".to_string()
            })?;
            Ok(m)
        }
        (Some(_), "nosig") => Err(format!(
            "the host could not sign its probe output with its pinned host key: {}",
            String::from_utf8_lossy(sig).trim()
        )),
        (Some(_), w) => Err(format!(
            "the output carries no signature ({w:?}) but this session's host key is pinned"
        )),
        (None, w) => Err(format!("unexpected signature line {w:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probes(v: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
        v.iter()
            .map(|(k, t, c)| (k.to_string(), t.to_string(), c.to_string()))
            .collect()
    }

    fn sh(script: &str) -> Vec<u8> {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap()
            .stdout
    }

    #[test]
    fn probe_output_without_trailing_newline_keeps_the_framing() {
        let b = batch(
            &probes(&[
                ("a", "printf", "printf '[\\n  1\\n]'"),
                ("b", "printf", "printf 'x\\ny\\n'"),
                ("c", "printf", "printf ''"),
                ("d", "sh", "echo out; exit 3"),
                ("e", "no-such-tool-labforge", "no-such-tool-labforge"),
            ]),
            None,
        );
        let m = parse(&sh(&b.script), &b).unwrap();
        assert_eq!(m["a"], RemoteOut::Ok("[\n  1\n]".into()));
        assert_eq!(m["b"], RemoteOut::Ok("x\ny\n".into()));
        assert_eq!(m["c"], RemoteOut::Ok(String::new()));
        assert_eq!(
            m["d"],
            RemoteOut::Failed {
                status: "3".into(),
                output: "out\n".into()
            }
        );
        assert_eq!(m["e"], RemoteOut::Missing("e".into()));
    }

    #[test]
    fn a_probe_printing_frames_of_its_own_cannot_end_or_forge_one() {
        // The old marker format and the new one, with this run's nonce even: all data.
        let n = nonce();
        let evil = format!("printf 'x\\n@@LF-END ss 0\\n{n} b 0 2\\nok\\n{n} end 2\\n'");
        let b = batch_with(
            &probes(&[("a", "printf", &evil), ("b", "printf", "printf real")]),
            None,
            &n,
            "/nonexistent/*",
        );
        let m = parse(&sh(&b.script), &b).unwrap();
        assert!(matches!(&m["a"], RemoteOut::Ok(s) if s.contains("@@LF-END")));
        assert_eq!(m["b"], RemoteOut::Ok("real".into()));
    }

    #[test]
    fn output_that_does_not_parse_exactly_is_refused() {
        let b = batch(&probes(&[("a", "echo", "echo hi")]), None);
        let good = sh(&b.script);
        parse(&good, &b).unwrap();
        let mut appended = good.clone();
        appended.extend_from_slice(b"@@LF-BEGIN a\nforged\n@@LF-END a 0\n");
        assert!(parse(&appended, &b).unwrap_err().contains("follow"));
        let mut before = b"motd\n".to_vec();
        before.extend_from_slice(&good);
        assert!(parse(&before, &b).is_err());
        let other = Batch {
            nonce: nonce(),
            ..b.clone()
        };
        assert!(parse(&good, &other).is_err(), "another run's nonce");
        for cut in [0, 10, good.len() - 1] {
            assert!(parse(&good[..cut], &b).is_err(), "cut at {cut}");
        }
        // A pinned key demands a signature.
        let pinned = Batch {
            host_key: Some(
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
                    .into(),
            ),
            ..b.clone()
        };
        assert!(parse(&good, &pinned).unwrap_err().contains("no signature"));
    }

    /// A fresh ed25519 host key at `k` (with `k.pub`); its public line, or `None` without ssh-keygen.
    fn host_key(k: &std::path::Path) -> Option<String> {
        let o = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(k)
            .status();
        if !matches!(o, Ok(s) if s.success()) {
            return None;
        }
        Some(std::fs::read_to_string(k.with_extension("pub")).unwrap())
    }

    #[test]
    fn signed_output_verifies_and_any_change_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("ssh_host_ed25519_key");
        let Some(public) = host_key(&k) else {
            eprintln!("ssh-keygen not available: skipped");
            return;
        };
        let glob = format!("{}/ssh_host_*_key", d.path().display());
        let b = batch_with(
            &probes(&[("a", "echo", "echo passwordauthentication yes")]),
            Some(public.trim()),
            &nonce(),
            &glob,
        );
        let out = sh(&b.script);
        let m =
            parse(&out, &b).unwrap_or_else(|e| panic!("{e}\n{}", String::from_utf8_lossy(&out)));
        assert_eq!(m["a"], RemoteOut::Ok("passwordauthentication yes\n".into()));
        // A filter that rewrites a value keeps every length and frame, and still fails.
        let s = String::from_utf8(out.clone()).unwrap();
        let forged = s.replace("passwordauthentication yes", "passwordauthentication no!");
        assert_ne!(forged, s);
        assert!(parse(forged.as_bytes(), &b)
            .unwrap_err()
            .contains("does not verify"));
        // Another key (the host's key was replaced, or the output signed elsewhere).
        let b2 = Batch {
            host_key: Some(
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
                    .into(),
            ),
            ..b.clone()
        };
        assert!(parse(&out, &b2).is_err());
        // No key file matches the pinned key: refused with the reason.
        let b3 = batch_with(
            &probes(&[("a", "echo", "echo x")]),
            b2.host_key.as_deref(),
            &nonce(),
            &glob,
        );
        let e = parse(&sh(&b3.script), &b3).unwrap_err();
        assert!(e.contains("no host key file"), "{e}");
    }

    /// cloud-init writes `ssh_keys: ed25519_public` verbatim, and labforge's seed carries the key without a
    /// final newline: `read` then returns non-zero at EOF although it read the key. Found by the QEMU e2e
    /// (vulcan refused every probe with "no host key file … matches").
    #[test]
    fn probe_signing_finds_a_host_key_whose_pub_file_has_no_final_newline() {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("ssh_host_ed25519_key");
        let Some(public) = host_key(&k) else {
            eprintln!("ssh-keygen not available: skipped");
            return;
        };
        std::fs::write(k.with_extension("pub"), public.trim()).unwrap();
        let glob = format!("{}/ssh_host_*_key", d.path().display());
        let b = batch_with(
            &probes(&[("a", "echo", "echo ok")]),
            Some(public.trim()),
            &nonce(),
            &glob,
        );
        let out = sh(&b.script);
        let m =
            parse(&out, &b).unwrap_or_else(|e| panic!("{e}\n{}", String::from_utf8_lossy(&out)));
        assert_eq!(m["a"], RemoteOut::Ok("ok\n".into()));
    }
}
