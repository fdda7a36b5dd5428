//! `labforge flash`: write an image to a disk through its block map, safely, and prove it by reading back.
//!
//! Order of operations (so an interrupted or failed flash leaves a disk that does not boot, never one that
//! boots half-written):
//! 1. check the block map (its own checksum, the manifest's record of it, the image size) and the target;
//! 2. zero the target's first MiB (partition table, boot code) and fsync: the old system is gone;
//! 3. make every unmapped range of the image read as zeros on the target (hole punch on files,
//!    `BLKZEROOUT` on block devices), and on a larger device zero its last MiB (a stale backup GPT);
//! 4. write the mapped ranges (except the first MiB, kept in memory);
//! 5. read back everything after the first MiB with `O_DIRECT` (not the page cache): mapped ranges
//!    against the block map's SHA-256, unmapped ranges must be all zeros; fsync after the last write;
//! 6. only then check the ranges inside the first MiB against the block map, write the first MiB, fsync,
//!    and read it back the same way.
//!
//! Steps 4 and 5 run as a thread pipeline ([`pipeline`]); on a regular-file target each span is read back
//! as soon as its `O_DIRECT` write has completed, while later ones are written, and holes are proven zero
//! from the extent map after the final fsync; on a block device the read-back starts after the last write
//! and its fsync (see the module docs there for why, for why the image itself is not hashed — the
//! read-back is checked against the block map — and for why a read-back before the final fsync is still
//! a read from the device).
//!
//! Why zero the unmapped ranges (unlike `bmaptool copy`, which skips them): the image says those bytes are
//! zero, and on a reused disk they hold the previous contents — old file-system superblocks and their
//! backups (btrfs at 64 MiB, ext4 backup groups), md/LVM metadata at partition ends, a backup GPT. blkid
//! and udev find those and mis-detect or auto-assemble them. Zeroing is cheap (hole punch / the device's
//! write-zeroes) and lets the read-back prove the target equals the image byte for byte.

mod pipeline;
pub mod target;

use crate::image::bmap::Bmap;
use crate::io::{self as lio, AlignedBuf};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
pub use target::Target;

/// The first MiB: written last.
pub const HEAD: u64 = 1 << 20;

#[derive(Debug)]
pub enum Error {
    /// The target or the inputs were refused before anything was written.
    Refused(String),
    /// Ctrl-C / SIGTERM: stopped, the target does not boot.
    Interrupted,
    /// Writing or verification failed (the target does not boot, its first MiB is zeros).
    Failed(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Refused(m) => write!(f, "refusing to flash: {m}"),
            Error::Interrupted => write!(
                f,
                "interrupted: the target's first MiB (partition table, boot code) is zeroed, so it will not boot half-written; run flash again"
            ),
            Error::Failed(m) => write!(
                f,
                "{m}\nthe target's first MiB (partition table, boot code) is zeroed: it will not boot half-written"
            ),
        }
    }
}
impl std::error::Error for Error {}

/// Test hook: called with the target path and a byte span `[start, end)` that has been written (on a file
/// target: its `O_DIRECT` writes completed, or fsynced where writes are buffered; on a block device: after
/// the final fsync) and is about to be read back (every byte after the first MiB is in some span; spans
/// may repeat).
pub type Hook<'a> = Box<dyn FnMut(&Path, u64, u64) + Send + 'a>;

pub struct Options<'a> {
    pub image: PathBuf,
    /// Default: `<image>.bmap`.
    pub bmap: Option<PathBuf>,
    pub target: PathBuf,
    /// Skip the interactive confirmation for block devices.
    pub yes: bool,
    /// Allow a regular file as the target.
    pub allow_file: bool,
    pub progress: bool,
    /// Test hook, run after a span is written, before it is read back ([`Hook`]).
    pub after_write: Option<Hook<'a>>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub target: String,
    pub image_size: u64,
    pub written: u64,
    pub zeroed: u64,
    pub verified: u64,
    /// Of `verified`: unmapped bytes of a regular-file target proven zero by its extent map after the
    /// final fsync (holes, `SEEK_DATA`/`SEEK_HOLE`) instead of being read; 0 on block devices.
    pub holes_proven: u64,
    /// Read-back bypassed the page cache.
    pub direct: bool,
}

fn failed(what: impl std::fmt::Display) -> Error {
    Error::Failed(what.to_string())
}

/// Load the block map for `image` and check it against the manifest beside it (when present) and the file.
pub fn load_bmap(image: &Path, bmap: Option<&Path>) -> Result<Bmap, Error> {
    let bp = bmap
        .map(Path::to_path_buf)
        .unwrap_or_else(|| crate::image::bmap_path(image));
    let text = std::fs::read_to_string(&bp).map_err(|e| {
        Error::Refused(format!(
            "cannot read the block map {}: {e} (it is written by `labforge image build` beside the image; or pass --bmap)",
            bp.display()
        ))
    })?;
    let map = Bmap::parse(&text, &bp.display().to_string())
        .map_err(|e| Error::Refused(format!("{e:#}")))?;
    let mp = crate::image::manifest_path(image);
    if let Ok(mt) = std::fs::read(&mp) {
        let m: crate::image::Manifest = serde_json::from_slice(&mt).map_err(|e| {
            Error::Refused(format!("{}: not a labforge manifest: {e}", mp.display()))
        })?;
        let got = lio::sha256_hex(text.as_bytes());
        if m.bmap.sha256 != got {
            return Err(Error::Refused(format!(
                "{} does not belong to this image: the manifest {} records block map sha256 {}, the file has {got}",
                bp.display(),
                mp.display(),
                m.bmap.sha256
            )));
        }
        if m.image.size != map.image_size {
            return Err(Error::Refused(format!(
                "the manifest {} says the image is {} bytes, the block map says {}",
                mp.display(),
                m.image.size,
                map.image_size
            )));
        }
    }
    let len = std::fs::metadata(image)
        .map_err(|e| Error::Refused(format!("cannot read image {}: {e}", image.display())))?
        .len();
    if len != map.image_size {
        return Err(Error::Refused(format!(
            "image {} is {len} bytes but its block map says {}: they do not belong together",
            image.display(),
            map.image_size
        )));
    }
    Ok(map)
}

/// Flash, with Ctrl-C / SIGTERM caught for the duration.
pub fn flash(opts: Options) -> Result<Report, Error> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut ids = Vec::new();
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Ok(id) = signal_hook::flag::register(sig, Arc::clone(&stop)) {
            ids.push(id);
        }
    }
    let r = flash_with(opts, &stop);
    for id in ids {
        signal_hook::low_level::unregister(id);
    }
    r
}

/// Flash, stopping when `stop` becomes true.
pub fn flash_with(mut opts: Options, stop: &AtomicBool) -> Result<Report, Error> {
    let map = load_bmap(&opts.image, opts.bmap.as_deref())?;
    let size = map.image_size;
    let t = target::inspect(&opts.target, size, opts.allow_file)?;
    let src = File::open(&opts.image)
        .map_err(|e| Error::Refused(format!("cannot open image {}: {e}", opts.image.display())))?;
    if t.is_block() && !opts.yes {
        confirm(&t)?;
    }
    let mut oo = OpenOptions::new();
    oo.read(true).write(true);
    if t.is_block() {
        oo.custom_flags(libc::O_EXCL);
    } else {
        oo.create(true);
    }
    let dst = oo.open(t.path()).map_err(|e| {
        if e.raw_os_error() == Some(libc::EBUSY) {
            Error::Refused(format!(
                "{} is busy (in use by the kernel or another program)",
                t.describe()
            ))
        } else {
            Error::Refused(format!("cannot open {} for writing: {e}", t.describe()))
        }
    })?;
    let dev_size = match &t {
        Target::Block { size, .. } => *size,
        Target::File { .. } => {
            dst.set_len(size)
                .map_err(|e| failed(format!("sizing {}: {e}", t.describe())))?;
            size
        }
    };
    let head = HEAD.min(size);
    let io = |what: &str, e: std::io::Error| failed(format!("{what} on {}: {e}", t.describe()));
    let check = || {
        if stop.load(Ordering::SeqCst) {
            Err(Error::Interrupted)
        } else {
            Ok(())
        }
    };

    // 2. The old boot sector and partition table go first.
    lio::write_zeros(&dst, 0, head).map_err(|e| io("zeroing the first MiB", e))?;
    dst.sync_all().map_err(|e| io("fsync", e))?;

    // 3. Unmapped ranges read as zeros.
    let mut zeroed = 0;
    for (a, b) in map.unmapped() {
        let a = a.max(head);
        if a >= b {
            continue;
        }
        check()?;
        zero_range(&dst, &t, a, b - a).map_err(|e| io("zeroing unmapped blocks", e))?;
        zeroed += b - a;
    }
    if t.is_block() && dev_size > size {
        let a = size.max(dev_size.saturating_sub(HEAD));
        zero_range(&dst, &t, a, dev_size - a)
            .map_err(|e| io("zeroing the end of the device", e))?;
    }

    // 4 + 5. Write the mapped ranges and read them back, pipelined (see [`pipeline`]).
    let overlap = !t.is_block();
    let mut hook = opts.after_write.take();
    let p = pipeline::run(pipeline::Job {
        map: &map,
        src: &src,
        image: &opts.image,
        dst: &dst,
        target: &t,
        head,
        overlap,
        stop,
        progress: opts.progress,
        hook: &mut hook,
    })?;
    let head_buf = p.head_buf;
    let written = p.written;
    let mut verified = p.verified;
    let holes_proven = p.holes_proven;
    let direct = p.direct;
    let rb = p.rb;
    let mut abuf = AlignedBuf::new(lio::CHUNK);

    // The image's first MiB was not hashed as it was read (the read-back decides, see [`pipeline`]); the
    // ranges that lie wholly inside it are never read back before it is written, so they are checked
    // against the block map here, before they reach the target. (A range that crosses the 1 MiB mark was
    // hashed by the read-back from this buffer and the target's bytes after it.)
    for r in &map.ranges {
        let (s, e) = r.bytes(map.block_size, size);
        if e > head {
            break;
        }
        let got = lio::sha256_hex(&head_buf[s as usize..e as usize]);
        if got != r.sha256 {
            return Err(failed(format!(
                "image {} does not match its block map at blocks {}-{} (bytes {s}..{e}): expected sha256 {}, the image holds sha256 {got}; was it changed after it was built?",
                opts.image.display(),
                r.first,
                r.last,
                r.sha256
            )));
        }
    }

    // 6. The first MiB, last.
    check()?;
    dst.write_all_at(&head_buf, 0)
        .map_err(|e| io("writing the first MiB", e))?;
    dst.sync_all().map_err(|e| io("fsync", e))?;
    let mut back = Vec::with_capacity(head as usize);
    read_back(&rb, &mut abuf, 0, head, |d| {
        back.extend_from_slice(d);
        Ok(())
    })
    .map_err(|e| io("reading back the first MiB", e))?;
    if back != head_buf {
        let i = back
            .iter()
            .zip(&head_buf)
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        let _ = lio::write_zeros(&dst, 0, head).and_then(|_| dst.sync_all());
        return Err(failed(format!(
            "read-back mismatch on {} in the first MiB at byte {i}",
            t.describe()
        )));
    }
    verified += head;
    Ok(Report {
        target: t.describe(),
        image_size: size,
        written,
        zeroed,
        verified,
        holes_proven,
        direct,
    })
}

fn confirm(t: &Target) -> Result<(), Error> {
    use std::io::IsTerminal;
    let name = match t {
        Target::Block { name, .. } => name.clone(),
        Target::File { .. } => return Ok(()),
    };
    if !std::io::stdin().is_terminal() {
        return Err(Error::Refused(format!(
            "{} would be erased: pass --yes (no terminal to ask on)",
            t.describe()
        )));
    }
    eprint!(
        "This ERASES {}. Type the device name ({name}) to continue: ",
        t.describe()
    );
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| Error::Refused(format!("reading the confirmation: {e}")))?;
    if line.trim() != name {
        return Err(Error::Refused("not confirmed".into()));
    }
    Ok(())
}

fn zero_range(f: &File, t: &Target, off: u64, len: u64) -> std::io::Result<()> {
    if !t.is_block() {
        return lio::zero_file_range(f, off, len);
    }
    // BLKZEROOUT = _IO(0x12, 127): the device's write-zeroes (or the kernel writing zeros). 512-aligned.
    const BLKZEROOUT: libc::c_ulong = 0x127f;
    let a = off.div_ceil(512) * 512;
    let b = ((off + len) / 512) * 512;
    if b > a {
        let range: [u64; 2] = [a, b - a];
        // SAFETY: ioctl with a pointer to a live [u64; 2].
        let r = unsafe { libc::ioctl(f.as_raw_fd(), BLKZEROOUT as _, range.as_ptr()) };
        if r != 0 {
            lio::write_zeros(f, a, b - a)?;
        }
    }
    if a > off {
        lio::write_zeros(f, off, (a - off).min(len))?;
    }
    if b < off + len && b >= a {
        lio::write_zeros(f, b, off + len - b)?;
    }
    Ok(())
}

/// Open for read-back with `O_DIRECT`; where the file system refuses it (tmpfs), fall back to a buffered
/// read after dropping the file's cached pages.
fn open_readback(p: &Path) -> std::io::Result<(File, bool)> {
    match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(p)
    {
        Ok(f) => Ok((f, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            let f = File::open(p)?;
            // SAFETY: fadvise on a valid fd.
            unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            Ok((f, false))
        }
        Err(e) => Err(e),
    }
}

/// Read `[start, end)` with aligned offsets and lengths (as `O_DIRECT` needs), handing the requested bytes
/// to `f` in order.
fn read_back(
    rb: &File,
    buf: &mut AlignedBuf,
    start: u64,
    end: u64,
    mut f: impl FnMut(&[u8]) -> std::io::Result<()>,
) -> std::io::Result<()> {
    const A: u64 = 4096;
    let mut pos = start;
    while pos < end {
        let astart = pos / A * A;
        let want = ((end - astart).div_ceil(A) * A).min(buf.len() as u64) as usize;
        let got = read_aligned(rb, &mut buf[..want], astart)?;
        let skip = (pos - astart) as usize;
        let avail = got.saturating_sub(skip);
        let n = avail.min((end - pos) as usize);
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the target ends at byte {}", astart + got as u64),
            ));
        }
        f(&buf[skip..skip + n])?;
        pos += n as u64;
    }
    Ok(())
}

fn read_aligned(f: &File, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => {
                done += n;
                // A short O_DIRECT read means end of file; the next offset would be unaligned anyway.
                if n % 512 != 0 {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}
