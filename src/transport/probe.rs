//! Probes that need no login: the server's SSH banner and KEXINIT (what it offers, read from the raw
//! packet), and plain TCP connects from the controller.

use anyhow::{anyhow, bail, Context, Result};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// The algorithm name-lists of a server's SSH_MSG_KEXINIT.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct KexInit {
    pub banner: String,
    pub kex: Vec<String>,
    pub host_key: Vec<String>,
    pub ciphers: Vec<String>,
    pub macs: Vec<String>,
    pub compression: Vec<String>,
}

/// Connect, exchange banners and read the server's KEXINIT (RFC 4253 §7.1). Nothing is authenticated.
pub async fn kexinit(addr: SocketAddr, timeout: Duration) -> Result<KexInit> {
    tokio::time::timeout(timeout, kexinit_inner(addr))
        .await
        .map_err(|_| anyhow!("no SSH KEXINIT from {addr} within {timeout:?}"))?
}

async fn kexinit_inner(addr: SocketAddr) -> Result<KexInit> {
    let s = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let mut r = BufReader::new(s);
    r.get_mut()
        .write_all(b"SSH-2.0-labforge_verify\r\n")
        .await?;
    let mut banner = String::new();
    for _ in 0..20 {
        banner.clear();
        if r.read_line(&mut banner).await? == 0 {
            bail!("{addr} closed the connection before its SSH banner");
        }
        if banner.starts_with("SSH-") {
            break;
        }
    }
    if !banner.starts_with("SSH-") {
        bail!("{addr} sent no SSH banner");
    }
    let len = r.read_u32().await? as usize;
    if !(16..=256 * 1024).contains(&len) {
        bail!("{addr}: implausible packet length {len}");
    }
    let mut pkt = vec![0u8; len];
    r.read_exact(&mut pkt).await?;
    let pad = pkt[0] as usize;
    let payload = pkt
        .get(1..len.saturating_sub(pad))
        .ok_or_else(|| anyhow!("{addr}: bad padding"))?;
    parse_kexinit(payload).map(|mut k| {
        k.banner = banner.trim().to_string();
        k
    })
}

/// Parse what a server sent first on a connection — optional pre-banner lines, its `SSH-` banner line, then
/// its first binary packet, which is the unencrypted SSH_MSG_KEXINIT — from bytes recorded off a real session
/// (see `ssh::connect_probing`), so one connection both logs in and shows what the server offers.
pub fn parse_server_hello(bytes: &[u8]) -> Result<KexInit> {
    let mut i = 0;
    let mut banner = None;
    for _ in 0..20 {
        let nl = bytes[i..]
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| anyhow!("the server's SSH banner is incomplete"))?;
        let line = String::from_utf8_lossy(&bytes[i..i + nl])
            .trim()
            .to_string();
        i += nl + 1;
        if line.starts_with("SSH-") {
            banner = Some(line);
            break;
        }
    }
    let banner = banner.ok_or_else(|| anyhow!("the server sent no SSH banner"))?;
    let hdr = bytes
        .get(i..i + 4)
        .ok_or_else(|| anyhow!("the server's KEXINIT is incomplete"))?;
    let len = u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]) as usize;
    if !(16..=256 * 1024).contains(&len) {
        bail!("implausible packet length {len}");
    }
    let pkt = bytes
        .get(i + 4..i + 4 + len)
        .ok_or_else(|| anyhow!("the server's KEXINIT is incomplete"))?;
    let pad = pkt[0] as usize;
    let payload = pkt
        .get(1..len.saturating_sub(pad))
        .ok_or_else(|| anyhow!("bad padding in the server's KEXINIT"))?;
    parse_kexinit(payload).map(|mut k| {
        k.banner = banner;
        k
    })
}

pub fn parse_kexinit(p: &[u8]) -> Result<KexInit> {
    if p.first() != Some(&20) {
        bail!("first packet is not SSH_MSG_KEXINIT");
    }
    let mut i = 17;
    let mut lists = Vec::new();
    for _ in 0..10 {
        let n = p
            .get(i..i + 4)
            .ok_or_else(|| anyhow!("truncated KEXINIT"))?;
        let n = u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize;
        i += 4;
        let s = p
            .get(i..i + n)
            .ok_or_else(|| anyhow!("truncated KEXINIT name-list"))?;
        i += n;
        let s = std::str::from_utf8(s)?;
        lists.push(if s.is_empty() {
            Vec::new()
        } else {
            s.split(',').map(|x| x.to_string()).collect::<Vec<_>>()
        });
    }
    let union = |a: usize, b: usize| {
        let mut v = lists[a].clone();
        for x in &lists[b] {
            if !v.contains(x) {
                v.push(x.clone());
            }
        }
        v
    };
    Ok(KexInit {
        banner: String::new(),
        kex: lists[0].clone(),
        host_key: lists[1].clone(),
        ciphers: union(2, 3),
        macs: union(4, 5),
        compression: union(6, 7),
    })
}

/// Whether a TCP connect to `addr` succeeds within `timeout` (false = refused, unreachable or filtered).
pub async fn tcp_open(addr: SocketAddr, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server hello as OpenSSH sends it: a pre-banner line, the banner, one KEXINIT packet.
    fn hello(lists: [&str; 10]) -> Vec<u8> {
        let mut payload = vec![20u8];
        payload.extend_from_slice(&[7u8; 16]); // cookie
        for l in lists {
            payload.extend_from_slice(&(l.len() as u32).to_be_bytes());
            payload.extend_from_slice(l.as_bytes());
        }
        payload.push(0); // first_kex_packet_follows
        payload.extend_from_slice(&0u32.to_be_bytes());
        let pad = 8 - (payload.len() + 5) % 8 + 4;
        let len = (payload.len() + pad + 1) as u32;
        let mut v = b"hello from a pre-banner line\r\nSSH-2.0-OpenSSH_9.2p1 Debian-2\r\n".to_vec();
        v.extend_from_slice(&len.to_be_bytes());
        v.push(pad as u8);
        v.extend_from_slice(&payload);
        v.extend(std::iter::repeat_n(0u8, pad));
        v
    }

    #[test]
    fn server_hello_recorded_off_a_session_parses_like_the_probe() {
        let lists = [
            "curve25519-sha256,sntrup761x25519-sha512@openssh.com",
            "ssh-ed25519",
            "chacha20-poly1305@openssh.com",
            "aes256-gcm@openssh.com",
            "hmac-sha2-512-etm@openssh.com",
            "hmac-sha2-256-etm@openssh.com",
            "none",
            "none",
            "",
            "",
        ];
        let bytes = hello(lists);
        let k = parse_server_hello(&bytes).unwrap();
        assert_eq!(k.banner, "SSH-2.0-OpenSSH_9.2p1 Debian-2");
        assert_eq!(
            k.kex,
            ["curve25519-sha256", "sntrup761x25519-sha512@openssh.com"]
        );
        assert_eq!(k.host_key, ["ssh-ed25519"]);
        assert_eq!(
            k.ciphers,
            ["chacha20-poly1305@openssh.com", "aes256-gcm@openssh.com"]
        );
        assert_eq!(
            k.macs,
            [
                "hmac-sha2-512-etm@openssh.com",
                "hmac-sha2-256-etm@openssh.com"
            ]
        );
        // Trailing encrypted bytes recorded after the KEXINIT are ignored.
        let mut more = bytes.clone();
        more.extend_from_slice(&[0xAB; 300]);
        assert_eq!(parse_server_hello(&more).unwrap().kex, k.kex);
        // Truncated recordings are errors, not panics.
        for cut in [0, 10, 40, bytes.len() - 1] {
            assert!(parse_server_hello(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }
}
