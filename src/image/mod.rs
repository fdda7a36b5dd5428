//! Per-host images: a declared vendor base (verified against its pinned SHA-256 while it streams) with the
//! host's cloud-init seed written into a FAT partition, plus a manifest and a bmaptool block map beside it.
//!
//! Pipeline (one pass over the base, one over the result, flat memory, no root, no loop mounts):
//! 1. base → temporary output file next to the final one: `FICLONE` reflink when the file system shares
//!    blocks (then one hashing read of the base), else a sparse copy (`SEEK_DATA`/`SEEK_HOLE`, zero blocks
//!    left as holes) that hashes as it copies; `.xz`/`.zst` bases are decompressed into a sparse file while
//!    the compressed stream is hashed. A hash mismatch deletes the temporary file: nothing is written.
//! 2. the seed goes into the image in place: the `system-boot` FAT (Pi MBR images) or a `CIDATA` FAT
//!    (existing, or a new GPT partition, growing the image and moving the backup GPT if needed).
//! 3. one streaming pass over the result: the image SHA-256 and the block map's per-range SHA-256.
//!    Without a reflink, for a seed that goes into an existing partition of an MBR base (the Pi case),
//!    steps 1–3 overlap: the part up to the end of that partition is copied and edited first, then the
//!    rest is copied (`copy_file_range`) while the image is hashed behind the copy ([`copy_edit_hash`]).
//! 4. rename into place; write `<image>.bmap` and `<image>.manifest.json` (temp file + rename).

pub mod bmap;
pub mod cache;
pub mod debian;
pub mod decl;
pub mod fat;
pub mod gpt;
pub mod nix;
pub mod part;

use crate::io as lio;
use anyhow::{bail, Context, Result};
use decl::{Format, SeedMethod};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::path::{Path, PathBuf};

/// Decompressed images larger than this are refused (a decompression-bomb guard).
pub const MAX_IMAGE: u64 = 256 << 30;

pub const MANIFEST_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    pub generator: String,
    pub host: String,
    pub spec_revision: String,
    /// The vendor base image (base + seed images only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<BaseRef>,
    /// How an image built from source was made (nix build, mmdebstrap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<BuildRef>,
    pub image: ImageRef,
    pub bmap: BmapRef,
    /// The cloud-init seed written into the image (NixOS images carry their configuration instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<SeedRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BaseRef {
    pub name: String,
    pub source: String,
    pub format: Format,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ImageRef {
    /// File name, relative to the manifest's directory.
    pub file: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BmapRef {
    pub file: String,
    pub sha256: String,
    pub mapped_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SeedRef {
    pub method: SeedMethod,
    /// Partition number the seed went into.
    pub partition: u32,
    /// labforge added this partition (GPT `CIDATA`).
    pub partition_added: bool,
    /// The image grew to make room (old size in bytes).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub grew_from: Option<u64>,
    pub files: Vec<SeedFile>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SeedFile {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

/// Everything `build` needs; the CLI fills it from the spec, tests build it directly.
pub struct BuildInput<'a> {
    pub host: &'a str,
    pub spec_revision: &'a str,
    pub base: &'a decl::Loaded,
    /// The local base file (compressed as declared).
    pub base_path: PathBuf,
    /// The cloud-init seed: (file name, bytes), e.g. user-data, meta-data, network-config.
    pub seed: Vec<(String, Vec<u8>)>,
    /// The output image path; `.bmap` and `.manifest.json` go beside it.
    pub out: PathBuf,
    pub progress: bool,
}

/// How the base was checked against its pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseCheck {
    /// Hashed in this build.
    Hashed,
    /// Confirmed by the verified-base cache ([`cache`]): same file identity, same hash as the pin.
    Cached,
    /// Built from source (nix build, mmdebstrap): no vendor base to verify.
    NoBase,
}

/// An image built from source: the builder and its inputs (sorted keys, no timestamps).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BuildRef {
    /// `nix-build` or `mmdebstrap`.
    pub kind: String,
    pub inputs: std::collections::BTreeMap<String, String>,
}

#[derive(Debug)]
pub struct Built {
    pub base_check: BaseCheck,
    pub manifest: Manifest,
    pub image: PathBuf,
    pub bmap: PathBuf,
    pub manifest_path: PathBuf,
}

pub fn bmap_path(image: &Path) -> PathBuf {
    sibling(image, ".bmap")
}
pub fn manifest_path(image: &Path) -> PathBuf {
    sibling(image, ".manifest.json")
}
fn sibling(image: &Path, suffix: &str) -> PathBuf {
    let mut s = image.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// Build the image. On any error the temporary output is removed and nothing is left at `out`.
pub fn build(inp: &BuildInput) -> Result<Built> {
    let base = inp.base;
    let pinned = base.pinned()?.to_string();
    check_seed(&inp.seed)?;
    let src = File::open(&inp.base_path).with_context(|| {
        if decl::is_url(&base.decl.source) {
            format!(
                "base image `{}` is not downloaded: fetch {} to {} (or pass --base FILE)",
                base.name,
                base.decl.source,
                inp.base_path.display()
            )
        } else {
            format!("opening base image {}", inp.base_path.display())
        }
    })?;
    let dir = inp
        .out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".labforge-image-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    let out = tmp.as_file();

    // 1. Base → output, checked against the pin; 2. the seed; 3. one pass: image sha256 + block map.
    //    Raw bases: a base the verified-base cache confirms is not hashed again; otherwise a base that has
    //    settled (see `cache`) is hashed on a second thread while this one copies, edits and hashes the
    //    result, and the result is kept only if the base matched. A base changed within the last seconds is
    //    hashed as it is copied (one read, exactly the bytes verified) and not cached.
    let edit = |out: &File| -> Result<(SeedRef, (String, u64, bmap::Bmap))> {
        let mut magic = [0u8; 4];
        lio::read_full_at(out, &mut magic, 0)?;
        if &magic == b"QFI\xfb" {
            bail!(
                "base image {} is a qcow2 file, not a raw disk image: convert it (qemu-img convert -O raw) and pin the raw file's sha256",
                inp.base_path.display()
            );
        }
        let seed = inject(out, inp, &pinned).with_context(|| {
            format!(
                "writing the cloud-init seed into the image for {}",
                inp.host
            )
        })?;
        out.sync_all()?;
        Ok((seed, finalize(out, inp.progress)?))
    };
    let raw = base.decl.format == Format::Raw;
    let key0 = if raw { cache::Key::of(&src).ok() } else { None };
    let cache_dir = base.root().map(cache::dir);
    let settled = key0
        .as_ref()
        .map(|k| k.settled(std::time::SystemTime::now()))
        .unwrap_or(false);
    let cached = match (&key0, &cache_dir) {
        (Some(k), Some(d)) => cache::confirms(d, k, &pinned),
        _ => false,
    };
    // Copy and edit: a reflink costs nothing, then edit and hash; else, when the seed goes into an
    // existing partition, copy and hash overlapped ([`copy_edit_hash`]); else copy, edit, hash.
    let copy_edit = |out: &File| -> Result<(SeedRef, (String, u64, bmap::Bmap))> {
        if lio::reflink(&src, out).is_ok() {
            return edit(out);
        }
        let size = src.metadata()?.len();
        match edit_extent(&src, base.decl.seed, size) {
            Some(end) => copy_edit_hash(&src, out, end, inp.progress, |out| {
                inject(out, inp, &pinned).with_context(|| {
                    format!(
                        "writing the cloud-init seed into the image for {}",
                        inp.host
                    )
                })
            }),
            _ => {
                sparse_copy(&src, out, inp.progress, false)?;
                edit(out)
            }
        }
    };
    let (actual, base_check, edited) = if cached {
        let ed = copy_edit(out);
        (pinned.clone(), BaseCheck::Cached, ed)
    } else if raw && settled {
        std::thread::scope(|sc| {
            let hasher = sc.spawn(|| hash_file(&src, false, "verify"));
            let ed = copy_edit(out);
            let actual = hasher
                .join()
                .map_err(|_| anyhow::anyhow!("internal error: the base hashing thread panicked"))
                .and_then(|r| r);
            actual.map(|a| (a, BaseCheck::Hashed, ed))
        })?
    } else {
        let actual = match base.decl.format {
            Format::Raw => {
                if lio::reflink(&src, out).is_ok() {
                    hash_file(&src, inp.progress, "verify")?
                } else {
                    sparse_copy(&src, out, inp.progress, true)?.unwrap_or_default()
                }
            }
            Format::Xz | Format::Zst => decompress(&src, out, base.decl.format, inp.progress)
                .with_context(|| format!("decompressing {}", inp.base_path.display()))?,
        };
        let ed = if actual == pinned {
            edit(out)
        } else {
            Err(anyhow::anyhow!("not edited"))
        };
        (actual, BaseCheck::Hashed, ed)
    };
    // The pin first: an edit error on a base that is not the declared one is reported as the mismatch.
    if actual != pinned {
        bail!(
            "base image {} does not match its pinned sha256 (from {}):\n  expected {pinned}\n  actual   {actual}\nThe file is damaged or not the declared release; nothing was written.",
            inp.base_path.display(),
            base.file.display()
        );
    }
    let (seed, (sha, size, map)) = edited?;
    if let Some(k0) = &key0 {
        // The copy and the hash read the file separately (or not at all, when cached): it must be the
        // same file, unchanged, from start to end.
        let k1 = cache::Key::of(&src)?;
        if &k1 != k0 {
            bail!(
                "base image {} changed while the image was being built (size, mtime or ctime differ); nothing was written, run again",
                inp.base_path.display()
            );
        }
        if base_check == BaseCheck::Hashed && settled {
            if let Some(d) = &cache_dir {
                // Best effort: a cache that cannot be written only costs a hash next time.
                let _ = cache::record(d, k0, &actual, &inp.base_path);
            }
        }
    }
    publish_hashed(
        tmp,
        &inp.out,
        inp.host,
        inp.spec_revision,
        Some(BaseRef {
            name: base.name.clone(),
            source: base.decl.source.clone(),
            format: base.decl.format,
            sha256: pinned,
        }),
        None,
        Some(seed),
        (sha, size, map),
        base_check,
    )
}

/// Finish an image that sits complete in `tmp`: one pass for its SHA-256 and block map, rename it to
/// `out`, then write `out.bmap` and `out.manifest.json` (temp file + rename each).
#[allow(clippy::too_many_arguments)]
pub fn publish(
    tmp: tempfile::NamedTempFile,
    out: &Path,
    host: &str,
    spec_revision: &str,
    base: Option<BaseRef>,
    build: Option<BuildRef>,
    seed: Option<SeedRef>,
    progress: bool,
) -> Result<Built> {
    tmp.as_file().sync_all()?;
    let hashed = finalize(tmp.as_file(), progress)?;
    publish_hashed(
        tmp,
        out,
        host,
        spec_revision,
        base,
        build,
        seed,
        hashed,
        BaseCheck::NoBase,
    )
}

/// [`publish`] with the SHA-256, size and block map already computed.
#[allow(clippy::too_many_arguments)]
fn publish_hashed(
    tmp: tempfile::NamedTempFile,
    out: &Path,
    host: &str,
    spec_revision: &str,
    base: Option<BaseRef>,
    build: Option<BuildRef>,
    seed: Option<SeedRef>,
    (sha, size, map): (String, u64, bmap::Bmap),
    base_check: BaseCheck,
) -> Result<Built> {
    let xml = map.to_xml();
    tmp.persist(out)
        .map_err(|e| e.error)
        .with_context(|| format!("renaming the image into place at {}", out.display()))?;
    let file_name = |p: &Path| {
        p.file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let bp = bmap_path(out);
    crate::render::write_atomic(&bp, xml.as_bytes(), 0o644)?;
    let manifest = Manifest {
        format_version: MANIFEST_VERSION,
        generator: format!("labforge {}", env!("CARGO_PKG_VERSION")),
        host: host.to_string(),
        spec_revision: spec_revision.to_string(),
        base,
        build,
        image: ImageRef {
            file: file_name(out),
            size,
            sha256: sha,
        },
        bmap: BmapRef {
            file: file_name(&bp),
            sha256: lio::sha256_hex(xml.as_bytes()),
            mapped_bytes: map.mapped_bytes(),
        },
        seed,
    };
    let mp = manifest_path(out);
    let mut json = serde_json::to_vec_pretty(&manifest)?;
    json.push(b'\n');
    crate::render::write_atomic(&mp, &json, 0o644)?;
    Ok(Built {
        base_check,
        manifest,
        image: out.to_path_buf(),
        bmap: bp,
        manifest_path: mp,
    })
}

/// The seed files as the manifest records them.
pub fn seed_files(seed: &[(String, Vec<u8>)]) -> Vec<SeedFile> {
    seed.iter()
        .map(|(n, b)| SeedFile {
            name: n.clone(),
            size: b.len() as u64,
            sha256: lio::sha256_hex(b),
        })
        .collect()
}

/// Write the seed into a new FAT partition labelled `CIDATA` of an image being assembled (the region
/// `offset..offset+len` of `f`); the volume serial is derived from `id` so builds are reproducible.
pub fn format_cidata(
    f: &File,
    offset: u64,
    len: u64,
    start_lba: u32,
    seed: &[(String, Vec<u8>)],
    volume_id: u32,
) -> Result<()> {
    check_seed(seed)?;
    fat::format(f, offset, len, "CIDATA", volume_id, start_lba)?;
    fat::write_files(f, offset, len, seed)
}

pub(crate) fn check_seed(seed: &[(String, Vec<u8>)]) -> Result<()> {
    if seed.is_empty() {
        bail!("the cloud-init seed is empty (no user-data, meta-data or network-config to write)");
    }
    for (n, _) in seed {
        if n.is_empty() || n.contains(['/', '\\']) || n.starts_with('.') || n.len() > 64 {
            bail!("seed file name `{n}` is not a plain file name");
        }
    }
    if !seed.iter().any(|(n, _)| n == "meta-data") || !seed.iter().any(|(n, _)| n == "user-data") {
        bail!("the cloud-init seed needs at least user-data and meta-data (NoCloud ignores a seed without them)");
    }
    Ok(())
}

/// SHA-256 of a whole file, reading only its data extents (holes hash as zeros).
pub fn hash_file(f: &File, progress: bool, msg: &str) -> Result<String> {
    let size = f.metadata()?.len();
    let pb = lio::progress_bar(size, msg, progress);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; lio::CHUNK];
    let mut pos = 0;
    for (a, b) in lio::data_extents(f)? {
        lio::hash_zeros(&mut h, a - pos);
        let mut o = a;
        while o < b {
            let n = ((b - o) as usize).min(buf.len());
            let got = lio::read_full_at(f, &mut buf[..n], o)?;
            if got < n {
                bail!("the file shrank while it was read");
            }
            h.update(&buf[..n]);
            o += n as u64;
        }
        pos = b;
        pb.set_position(pos);
    }
    lio::hash_zeros(&mut h, size - pos);
    pb.finish_and_clear();
    Ok(hex::encode(h.finalize()))
}

/// Copy `src` to `dst` sparsely; returns the SHA-256 of `src` (for images built elsewhere, e.g. by Nix).
pub fn sparse_copy_pub(src: &File, dst: &File, progress: bool) -> Result<String> {
    sparse_copy(src, dst, progress, true)?
        .ok_or_else(|| anyhow::anyhow!("internal error: sparse copy returned no hash"))
}

/// Decompress a zstd file into `dst` as a sparse file; returns the SHA-256 of the compressed file.
pub fn decompress_zst(src: &File, dst: &File, progress: bool) -> Result<String> {
    decompress(src, dst, Format::Zst, progress)
}

/// Copy `src` to `dst` leaving holes for holes and all-zero blocks; returns the SHA-256 of `src` when
/// asked to hash it as it is copied.
fn sparse_copy(src: &File, dst: &File, progress: bool, hash: bool) -> Result<Option<String>> {
    let size = src.metadata()?.len();
    let pb = lio::progress_bar(size, "copy", progress);
    let mut h = hash.then(Sha256::new);
    let mut buf = vec![0u8; lio::CHUNK];
    let mut pos = 0;
    for (a, b) in lio::data_extents(src)? {
        if let Some(h) = h.as_mut() {
            lio::hash_zeros(h, a - pos);
        }
        let mut o = a;
        while o < b {
            let n = ((b - o) as usize).min(buf.len());
            let got = lio::read_full_at(src, &mut buf[..n], o)?;
            if got < n {
                bail!("the base image shrank while it was copied");
            }
            if let Some(h) = h.as_mut() {
                h.update(&buf[..n]);
            }
            lio::write_nonzero_at(dst, &buf[..n], o)?;
            o += n as u64;
        }
        pos = b;
        pb.set_position(pos);
    }
    if let Some(h) = h.as_mut() {
        lio::hash_zeros(h, size - pos);
    }
    dst.set_len(size)?;
    pb.finish_and_clear();
    Ok(h.map(|h| hex::encode(h.finalize())))
}

/// Decompress `src` (xz or zstd) into `dst` as a sparse file; returns the SHA-256 of the compressed file.
fn decompress(src: &File, dst: &File, format: Format, progress: bool) -> Result<String> {
    use std::io::{BufRead, BufReader};
    let size = src.metadata()?.len();
    let pb = lio::progress_bar(size, "unpack", progress);
    let hashed = lio::HashReader::new(lio::ProgressReader::new(src, |n| pb.inc(n)));
    let mut input = BufReader::with_capacity(1 << 16, hashed);
    let mut sink = lio::LimitWriter::new(
        lio::SparseWriter::new(dst),
        MAX_IMAGE,
        "the decompressed image",
    );
    match format {
        Format::Xz => {
            // Concatenated xz streams are valid xz files: decode until the input ends.
            while !input.fill_buf()?.is_empty() {
                lzma_rs::xz_decompress(&mut input, &mut sink)
                    .map_err(|e| anyhow::anyhow!("not a valid xz stream: {e}"))?;
            }
        }
        Format::Zst => {
            while !input.fill_buf()?.is_empty() {
                let mut d = ruzstd::decoding::StreamingDecoder::new(&mut input)
                    .map_err(|e| anyhow::anyhow!("not a valid zstd stream: {e}"))?;
                std::io::copy(&mut d, &mut sink)
                    .map_err(|e| anyhow::anyhow!("zstd stream: {e}"))?;
            }
        }
        Format::Raw => unreachable!("raw bases are copied, not decompressed"),
    }
    sink.into_inner().finish()?;
    let (sum, _) = input.into_inner().finish()?;
    pb.finish_and_clear();
    Ok(sum)
}

fn labels(f: &File, t: &part::Table) -> String {
    t.parts
        .iter()
        .map(|p| {
            let l = if p.maybe_fat {
                fat::label(f, p.offset(), p.len())
            } else {
                None
            };
            format!(
                "#{} {} at {} ({}){}",
                p.number,
                p.kind,
                p.offset(),
                lio::human(p.len()),
                l.map(|l| format!(" FAT label `{l}`")).unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn find_fat(f: &File, t: &part::Table, label: &str) -> Option<part::Part> {
    t.parts
        .iter()
        .find(|p| {
            p.maybe_fat
                && fat::label(f, p.offset(), p.len())
                    .map(|l| l.eq_ignore_ascii_case(label))
                    .unwrap_or(false)
        })
        .cloned()
}

fn inject(out: &File, inp: &BuildInput, base_sha: &str) -> Result<SeedRef> {
    let table = part::read(out)?;
    let files = seed_files(&inp.seed);
    let method = inp.base.decl.seed;
    match method {
        SeedMethod::SystemBoot => {
            let Some(p) = find_fat(out, &table, "system-boot") else {
                bail!(
                    "base image `{}` has no FAT partition labelled system-boot (partitions: {}); is it a Raspberry Pi preinstalled image? (seed = \"system-boot\" in {})",
                    inp.base.name,
                    labels(out, &table),
                    inp.base.file.display()
                );
            };
            fat::write_files(out, p.offset(), p.len(), &inp.seed)?;
            Ok(SeedRef {
                method,
                partition: p.number,
                partition_added: false,
                grew_from: None,
                files,
            })
        }
        SeedMethod::Cidata => {
            if let Some(p) = find_fat(out, &table, "cidata") {
                fat::write_files(out, p.offset(), p.len(), &inp.seed)?;
                return Ok(SeedRef {
                    method,
                    partition: p.number,
                    partition_added: false,
                    grew_from: None,
                    files,
                });
            }
            if table.scheme != part::Scheme::Gpt {
                bail!(
                    "base image `{}` has an MBR partition table without a FAT partition labelled CIDATA (partitions: {}): labforge adds a CIDATA partition only to GPT images. Use a GPT base, or add a small FAT partition labelled CIDATA to the base",
                    inp.base.name,
                    labels(out, &table)
                );
            }
            let payload: u64 = inp.seed.iter().map(|(_, b)| b.len() as u64).sum();
            let size = (payload * 2 + (1 << 20)).max(4 << 20).div_ceil(1 << 20) * (1 << 20);
            let id =
                Sha256::digest(format!("labforge cidata\0{}\0{base_sha}", inp.host).as_bytes());
            let mut unique = [0u8; 16];
            unique.copy_from_slice(&id[..16]);
            unique[7] = (unique[7] & 0x0f) | 0x40; // version 4 (mixed-endian field 3)
            unique[8] = (unique[8] & 0x3f) | 0x80; // RFC 4122 variant
            let added =
                part::add_gpt_partition(out, &table, size, "CIDATA", unique).map_err(|e| {
                    anyhow::anyhow!(
                        "base image `{}` has no CIDATA partition and one cannot be added: {e}",
                        inp.base.name
                    )
                })?;
            let p = &added.part;
            let vol = u32::from_le_bytes([id[16], id[17], id[18], id[19]]);
            fat::format(out, p.offset(), p.len(), "CIDATA", vol, p.start_lba as u32)?;
            fat::write_files(out, p.offset(), p.len(), &inp.seed)?;
            Ok(SeedRef {
                method,
                partition: p.number,
                partition_added: true,
                grew_from: added.grew.map(|(a, _)| a),
                files,
            })
        }
    }
}

/// One streaming pass over the finished image: its SHA-256 and the block map (mapped = data extents,
/// rounded out to 4 KiB blocks, each range with its SHA-256).
pub fn finalize(f: &File, progress: bool) -> Result<(String, u64, bmap::Bmap)> {
    let size = f.metadata()?.len();
    // Two threads: the whole image's SHA-256 (holes fed as zeros) on one, the block map's per-range
    // SHA-256 on this one; both read the same file (from the page cache).
    std::thread::scope(|sc| {
        let full = sc.spawn(|| hash_file(f, false, "hash"));
        let map = block_map(f, size, progress)?;
        let full = full
            .join()
            .map_err(|_| anyhow::anyhow!("internal error: the hashing thread panicked"))??;
        Ok((full, size, map))
    })
}

/// The block map of a complete image file: its data extents rounded out to 4 KiB blocks, merged, each
/// range with the SHA-256 of its bytes.
fn block_map(f: &File, size: u64, progress: bool) -> Result<bmap::Bmap> {
    let bs = bmap::BLOCK;
    let mut blocks: Vec<(u64, u64)> = Vec::new();
    for (a, b) in lio::data_extents(f)? {
        let (first, last) = (a / bs, (b - 1) / bs);
        match blocks.last_mut() {
            Some(prev) if first <= prev.1 + 1 => prev.1 = prev.1.max(last),
            _ => blocks.push((first, last)),
        }
    }
    let pb = lio::progress_bar(size, "hash", progress);
    let mut buf = vec![0u8; lio::CHUNK];
    let mut ranges = Vec::with_capacity(blocks.len());
    for (first, last) in blocks {
        let (s, e) = (first * bs, ((last + 1) * bs).min(size));
        let mut rh = Sha256::new();
        let mut o = s;
        while o < e {
            let n = ((e - o) as usize).min(buf.len());
            let got = lio::read_full_at(f, &mut buf[..n], o)?;
            if got < n {
                bail!("the image shrank while it was hashed");
            }
            rh.update(&buf[..n]);
            o += n as u64;
            pb.set_position(o);
        }
        ranges.push(bmap::Range {
            first,
            last,
            sha256: hex::encode(rh.finalize()),
        });
    }
    pb.finish_and_clear();
    Ok(bmap::Bmap {
        image_size: size,
        block_size: bs,
        ranges,
    })
}

/// Where the seed goes when it goes into an existing FAT partition of an MBR base (`system-boot`, or an
/// existing `CIDATA`): the end of everything [`inject`] reads or writes — the MBR, the FAT boot sectors of
/// the partitions before it, and that partition — rounded up to 4 KiB. `None` when the seed needs a new
/// partition, the base is GPT, or it is no disk image: then the image is copied whole first.
fn edit_extent(src: &File, method: SeedMethod, size: u64) -> Option<u64> {
    let mut magic = [0u8; 4];
    lio::read_full_at(src, &mut magic, 0).ok()?;
    if &magic == b"QFI\xfb" {
        return None;
    }
    let table = part::read(src).ok()?;
    let label = match method {
        SeedMethod::SystemBoot => "system-boot",
        SeedMethod::Cidata => "cidata",
    };
    let p = find_fat(src, &table, label)?;
    // MBR only: a GPT's entry array may lie anywhere its header says (and a backup sits at the end).
    if table.scheme != part::Scheme::Mbr {
        return None;
    }
    let end = p.offset().checked_add(p.len())?.max(1024);
    let end = end.div_ceil(bmap::BLOCK) * bmap::BLOCK;
    (end < size).then_some(end)
}

/// Copy the base, put the seed in and hash the result, with the copy and the hash overlapped: for a seed
/// that goes into an existing partition ending at `edit_end` ([`edit_extent`]), everything the seed
/// changes lies before `edit_end`. So that part is copied and edited first; then
///
/// * a copier thread copies the rest (`copy_file_range`, in the kernel; read + write where that is not
///   supported), announcing how far it got; then fsyncs the output and computes the block map from its
///   data extents, hashing each range (beside the tail of the image hash);
/// * a reader thread reads the output in file order — the edited part whole (holes read as zeros), the
///   rest span by span once the copier has written it — and hands the bytes to
/// * this thread, which computes the image's SHA-256; holes of the base (which stay holes in the output)
///   are fed as zeros from a static buffer instead of being read.
///
/// The SHA-256 is still of the output file as written, in one pass over it; only its start no longer
/// waits for the end of the copy, and no thread both reads and hashes. The floor is one SHA-256 pass over
/// the whole image on one core.
fn copy_edit_hash(
    src: &File,
    out: &File,
    edit_end: u64,
    progress: bool,
    edit: impl FnOnce(&File) -> Result<SeedRef>,
) -> Result<(SeedRef, (String, u64, bmap::Bmap))> {
    use std::sync::mpsc;
    let size = src.metadata()?.len();
    let extents = lio::data_extents(src)?;
    out.set_len(size)?;
    let clip = |lo: u64, hi: u64| -> Vec<(u64, u64)> {
        extents
            .iter()
            .map(|&(a, b)| (a.max(lo), b.min(hi)))
            .filter(|(a, b)| a < b)
            .collect()
    };
    let (head, tail) = (clip(0, edit_end), clip(edit_end, size));
    let mut buf = vec![0u8; lio::CHUNK];
    for &(a, b) in &head {
        let mut o = a;
        while o < b {
            let n = ((b - o) as usize).min(buf.len());
            let got = lio::read_full_at(src, &mut buf[..n], o)?;
            if got < n {
                bail!("the base image shrank while it was copied");
            }
            lio::write_nonzero_at(out, &buf[..n], o)?;
            o += n as u64;
        }
    }
    drop(buf);
    let seed = edit(out)?;

    /// What the reader hands to the hasher, in file order.
    enum Piece {
        Data(Vec<u8>, usize),
        Zeros(u64),
    }
    const BUFS: usize = 4;
    std::thread::scope(|sc| {
        let (wm_tx, wm_rx) = mpsc::channel::<u64>();
        let tail = &tail;
        let copier = sc.spawn(move || -> Result<bmap::Bmap> {
            copy_spans(src, out, tail, |o| wm_tx.send(o).is_ok())?;
            drop(wm_tx);
            out.sync_all()?;
            block_map(out, size, false)
        });
        let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
        for _ in 0..BUFS {
            let _ = free_tx.send(vec![0u8; lio::CHUNK]);
        }
        let (piece_tx, piece_rx) = mpsc::sync_channel::<Piece>(BUFS);
        let reader = sc.spawn(move || -> Result<()> {
            let send_span = |a: u64, b: u64| -> Result<()> {
                let mut o = a;
                while o < b {
                    let Ok(mut buf) = free_rx.recv() else {
                        bail!("internal error: the image hashing stopped");
                    };
                    let n = ((b - o) as usize).min(buf.len());
                    let got = lio::read_full_at(out, &mut buf[..n], o)?;
                    if got < n {
                        bail!("the image shrank while it was hashed");
                    }
                    if piece_tx.send(Piece::Data(buf, n)).is_err() {
                        bail!("internal error: the image hashing stopped");
                    }
                    o += n as u64;
                }
                Ok(())
            };
            let zeros = |n: u64| -> Result<()> {
                if n > 0 && piece_tx.send(Piece::Zeros(n)).is_err() {
                    bail!("internal error: the image hashing stopped");
                }
                Ok(())
            };
            // The edited part: read whole (holes read as zeros; the seed may have filled some).
            send_span(0, edit_end)?;
            let mut pos = edit_end;
            let mut copied = edit_end;
            for &(a, b) in tail {
                zeros(a - pos)?;
                let mut o = a;
                while o < b {
                    while copied <= o {
                        match wm_rx.recv() {
                            Ok(c) => copied = c,
                            // The copier stopped early: it reports why.
                            Err(_) => bail!("internal error: the copy stopped"),
                        }
                    }
                    let e = copied.min(b);
                    send_span(o, e)?;
                    o = e;
                }
                pos = b;
            }
            zeros(size - pos)
        });
        let pb = lio::progress_bar(size, "copy + hash", progress);
        let mut h = Sha256::new();
        let mut hashed = 0u64;
        for p in piece_rx.iter() {
            match p {
                Piece::Data(buf, n) => {
                    h.update(&buf[..n]);
                    hashed += n as u64;
                    let _ = free_tx.send(buf);
                }
                Piece::Zeros(n) => {
                    lio::hash_zeros(&mut h, n);
                    hashed += n;
                }
            }
            pb.set_position(hashed);
        }
        pb.finish_and_clear();
        let panicked = |what: &str| anyhow::anyhow!("internal error: the {what} thread panicked");
        let c = copier.join().map_err(|_| panicked("copying"))?;
        let r = reader.join().map_err(|_| panicked("reading"))?;
        // A thread that stopped because the other one did says so; report the cause.
        let map = match (c, r) {
            (Ok(map), Ok(())) => map,
            (Err(e), Err(_)) if e.to_string() != STOPPED => return Err(e),
            (_, Err(e)) => return Err(e),
            (Err(e), Ok(())) => return Err(e),
        };
        if hashed != size {
            bail!("internal error: hashed {hashed} of {size} bytes");
        }
        Ok((seed, (hex::encode(h.finalize()), size, map)))
    })
}

/// Copy the spans `[a, b)` of `src` to the same offsets in `dst`, in order, calling `done` with the end
/// of what is copied so far (it returns false to stop). In the kernel with `copy_file_range` where the
/// file systems allow it, else by reading and writing (leaving all-zero 4 KiB blocks as holes).
fn copy_spans(
    src: &File,
    dst: &File,
    spans: &[(u64, u64)],
    mut done: impl FnMut(u64) -> bool,
) -> Result<()> {
    const STEP: usize = 4 << 20;
    let mut kernel = true;
    let mut buf: Vec<u8> = Vec::new();
    for &(a, b) in spans {
        let mut o = a;
        while o < b {
            let n = ((b - o) as usize).min(STEP);
            let mut k = 0;
            if kernel {
                match lio::copy_range(src, dst, o, n) {
                    Ok(c) => k = c,
                    Err(e)
                        if matches!(
                            e.raw_os_error(),
                            Some(libc::EXDEV)
                                | Some(libc::EINVAL)
                                | Some(libc::ENOSYS)
                                | Some(libc::EOPNOTSUPP)
                        ) =>
                    {
                        kernel = false
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            if !kernel {
                buf.resize(n, 0);
                k = lio::read_full_at(src, &mut buf[..n], o)?;
                lio::write_nonzero_at(dst, &buf[..k], o)?;
            }
            if k == 0 {
                bail!("the base image shrank while it was copied");
            }
            o += k as u64;
            if !done(o) {
                bail!(STOPPED);
            }
        }
    }
    Ok(())
}

const STOPPED: &str = "internal error: the image hashing stopped";

/// The host's cloud-init seed, rendered fresh from the spec by the cloud-init backend into a private
/// temporary directory (never from `out/`, which may be stale), keyed by file name.
pub fn host_seed(
    spec: &crate::spec::Spec,
    root: &Path,
    host: &str,
) -> Result<Vec<(String, Vec<u8>)>> {
    let h = spec
        .hosts
        .get(host)
        .with_context(|| format!("no host named `{host}` in the spec"))?;
    let plan = crate::plan::plan(spec, &[h]);
    let artifacts: Vec<crate::render::Artifact> = plan
        .hosts
        .iter()
        .flat_map(|hp| hp.artifacts.iter())
        .filter(|a| a.backend == "cloud-init")
        .cloned()
        .collect();
    if artifacts.is_empty() {
        bail!("the cloud-init backend plans no seed for host `{host}` (user-data, meta-data, network-config): nothing to put into the image");
    }
    let store = crate::secrets::Store::open(root, spec)?;
    let tmp = tempfile::Builder::new()
        .prefix(".labforge-seed-")
        .tempdir()
        .context("creating a private directory for the seed")?;
    crate::render::run(spec, Some(&store), &artifacts, tmp.path(), false)?;
    let mut seed = Vec::new();
    for a in &artifacts {
        let name = Path::new(&a.path)
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let bytes = std::fs::read(tmp.path().join(&a.path))
            .with_context(|| format!("reading the rendered {}", a.path))?;
        seed.push((name, bytes));
    }
    seed.sort();
    Ok(seed)
}

/// Seed files from a directory (e.g. `out/cloud-init/<host>/` after `labforge render`): every regular file
/// directly in it, by name.
pub fn seed_from_dir(dir: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let mut seed = Vec::new();
    for e in std::fs::read_dir(dir)
        .with_context(|| format!("reading seed directory {}", dir.display()))?
    {
        let e = e?;
        if e.file_type()?.is_file() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            seed.push((name, std::fs::read(e.path())?));
        }
    }
    seed.sort();
    check_seed(&seed).with_context(|| format!("seed directory {}", dir.display()))?;
    Ok(seed)
}
