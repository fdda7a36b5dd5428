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
