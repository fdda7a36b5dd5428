//! Stacked `Read`/`Write` adapters (coreos-installer style) and the low-level file primitives the image
//! and flash code share: hashing while streaming, byte limits, progress, sparse output, aligned buffers,
//! `SEEK_DATA`/`SEEK_HOLE` extents, reflink, hole punching.
//!
//! Everything streams through fixed-size buffers: memory stays flat whatever the image size.

use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

/// The chunk size every streaming loop uses (1 MiB).
pub const CHUNK: usize = 1 << 20;

/// A reader that hashes (SHA-256) everything read through it.
pub struct HashReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashReader<R> {
    pub fn new(inner: R) -> Self {
        HashReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }
    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.count
    }
    /// Read the rest of the stream (so the digest covers all of it), then return (hex digest, total bytes).
    pub fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((hex::encode(self.hasher.finalize()), self.count))
    }
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// A reader that fails once more than `limit` bytes come through (a decompression-bomb guard).
pub struct LimitReader<R> {
    inner: R,
    left: u64,
    what: String,
}

impl<R: Read> LimitReader<R> {
    pub fn new(inner: R, limit: u64, what: impl Into<String>) -> Self {
        LimitReader {
            inner,
            left: limit,
            what: what.into(),
        }
    }
}

impl<R: Read> Read for LimitReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            return Err(io::Error::other(format!(
                "{} is larger than the limit it was given",
                self.what
            )));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// A writer that fails once more than `limit` bytes go through (a decompression-bomb guard).
pub struct LimitWriter<W> {
    inner: W,
    left: u64,
    what: String,
}

impl<W: Write> LimitWriter<W> {
    pub fn new(inner: W, limit: u64, what: impl Into<String>) -> Self {
        LimitWriter {
            inner,
            left: limit,
            what: what.into(),
        }
    }
    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for LimitWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() as u64 > self.left {
            return Err(io::Error::other(format!(
                "{} is larger than the limit it was given",
                self.what
            )));
        }
        let n = self.inner.write(buf)?;
        self.left -= n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Write the non-zero 4 KiB blocks of `buf` at `off` (zero blocks are left as holes / untouched).
pub fn write_nonzero_at(f: &File, buf: &[u8], off: u64) -> io::Result<()> {
    const B: usize = 4096;
    let mut i = 0;
    while i < buf.len() {
        let e = (i + B).min(buf.len());
        if is_zero(&buf[i..e]) {
            i = e;
            continue;
        }
        let mut j = e;
        while j < buf.len() {
            let k = (j + B).min(buf.len());
            if is_zero(&buf[j..k]) {
                break;
            }
            j = k;
        }
        f.write_all_at(&buf[i..j], off + i as u64)?;
        i = j;
    }
    Ok(())
}

/// A progress bar on stderr when it is a terminal (bytes, throughput, ETA); hidden otherwise.
pub fn progress_bar(total: u64, msg: &str, enabled: bool) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !enabled || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg:>10} [{bar:32}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(msg.to_string());
    pb
}

/// A reader that reports progress (bytes) to a callback.
pub struct ProgressReader<R, F: FnMut(u64)> {
    inner: R,
    report: F,
}

impl<R: Read, F: FnMut(u64)> ProgressReader<R, F> {
    pub fn new(inner: R, report: F) -> Self {
        ProgressReader { inner, report }
    }
}

impl<R: Read, F: FnMut(u64)> Read for ProgressReader<R, F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.report)(n as u64);
        Ok(n)
    }
}

/// A writer into a file that leaves holes where whole blocks are zero (like `cp --sparse=always`).
/// Call [`SparseWriter::finish`] to set the final length (a trailing hole has no block to carry it).
pub struct SparseWriter<'a> {
    file: &'a File,
    pos: u64,
    block: usize,
    pending: Vec<u8>,
}

impl<'a> SparseWriter<'a> {
    pub fn new(file: &'a File) -> Self {
        SparseWriter {
            file,
            pos: 0,
            block: 4096,
            pending: Vec::with_capacity(CHUNK),
        }
    }
    fn flush_blocks(&mut self, all: bool) -> io::Result<()> {
        let mut off = 0;
        let len = self.pending.len();
        while off < len {
            let end = (off + self.block).min(len);
            if end - off < self.block && !all {
                break;
            }
            // Coalesce runs of non-zero blocks into one write.
            if is_zero(&self.pending[off..end]) {
                off = end;
                continue;
            }
            let mut run_end = end;
            while run_end < len {
                let e = (run_end + self.block).min(len);
                if (e - run_end < self.block && !all) || is_zero(&self.pending[run_end..e]) {
                    break;
                }
                run_end = e;
            }
            self.file
                .write_all_at(&self.pending[off..run_end], self.pos + off as u64)?;
            off = run_end;
        }
        self.pending.drain(..off);
        self.pos += off as u64;
        Ok(())
    }
    /// Flush and set the file length to everything written. Returns the length.
    pub fn finish(mut self) -> io::Result<u64> {
        self.flush_blocks(true)?;
        self.file.set_len(self.pos)?;
        Ok(self.pos)
    }
}

impl Write for SparseWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        if self.pending.len() >= CHUNK {
            self.flush_blocks(false)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Whether a buffer is all zero bytes (fast path on machine words).
pub fn is_zero(b: &[u8]) -> bool {
    // Compare 4 KiB at a time against a zero page: memcmp is vectorised by libc.
    static ZERO: [u8; 4096] = [0; 4096];
    b.chunks(4096).all(|c| c == &ZERO[..c.len()])
}

/// A heap buffer aligned for `O_DIRECT` (4096 bytes covers every logical block size in use).
pub struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
}

const ALIGN: usize = 4096;

impl AlignedBuf {
    pub fn new(len: usize) -> Self {
        let len = len.div_ceil(ALIGN) * ALIGN;
        let layout = std::alloc::Layout::from_size_align(len, ALIGN).expect("valid layout");
        // SAFETY: len > 0 (rounded up to ALIGN, callers pass > 0) and the layout is valid.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        AlignedBuf { ptr, len }
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is a live allocation of len bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}
impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self guarantees exclusivity.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}
impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.len, ALIGN).expect("valid layout");
        // SAFETY: allocated in new() with this layout.
        unsafe { std::alloc::dealloc(self.ptr, layout) }
    }
}
// SAFETY: AlignedBuf owns its allocation exclusively, like Vec<u8>.
unsafe impl Send for AlignedBuf {}

/// The data extents of a file as `(start, end)` byte ranges, via `SEEK_DATA`/`SEEK_HOLE`. A file system
/// without hole support reports one extent covering the whole file, which is correct, only less sparse.
pub fn data_extents(f: &File) -> io::Result<Vec<(u64, u64)>> {
    let size = f.metadata()?.len();
    let fd = f.as_raw_fd();
    let mut out = Vec::new();
    let mut pos: u64 = 0;
    while pos < size {
        // SAFETY: plain lseek on a valid fd.
        let d = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if d < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENXIO) => break, // no data after pos
                Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => {
                    return Ok(vec![(0, size)]);
                }
                _ => return Err(e),
            }
        }
        let d = d as u64;
        // SAFETY: as above.
        let h = unsafe { libc::lseek(fd, d as libc::off_t, libc::SEEK_HOLE) };
        if h < 0 {
            return Err(io::Error::last_os_error());
        }
        let h = (h as u64).min(size);
        if h > d {
            out.push((d, h));
        }
        pos = h;
    }
    Ok(out)
}

/// `FICLONE`: make `dst` share all of `src`'s blocks (btrfs, XFS, bcachefs…). Err if unsupported.
pub fn reflink(src: &File, dst: &File) -> io::Result<()> {
    // FICLONE = _IOW(0x94, 9, int)
    const FICLONE: libc::c_ulong = 0x4004_9409;
    // SAFETY: ioctl with two valid fds.
    let r = unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE as _, src.as_raw_fd()) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Make `[off, off+len)` of a regular file read as zeros without writing data (punch a hole); falls back to
/// writing zeros where the file system cannot punch.
pub fn zero_file_range(f: &File, off: u64, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    // SAFETY: fallocate on a valid fd with in-range arguments.
    let r = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off as libc::off_t,
            len as libc::off_t,
        )
    };
    if r == 0 {
        return Ok(());
    }
    write_zeros(f, off, len)
}

/// Write zeros over `[off, off+len)`.
pub fn write_zeros(f: &File, off: u64, len: u64) -> io::Result<()> {
    let z = vec![0u8; CHUNK.min(len as usize)];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(z.len() as u64) as usize;
        f.write_all_at(&z[..n], off + done)?;
        done += n as u64;
    }
    Ok(())
}

/// Feed `len` zero bytes into a hasher (what a hole reads as).
pub fn hash_zeros(h: &mut Sha256, len: u64) {
    static Z: [u8; 65536] = [0; 65536];
    let mut left = len;
    while left > 0 {
        let n = left.min(Z.len() as u64) as usize;
        h.update(&Z[..n]);
        left -= n as u64;
    }
}

/// SHA-256 of bytes, hex.
pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Read exactly `buf.len()` bytes at `off`, or fewer at end of file; returns the count.
pub fn read_full_at(f: &File, buf: &mut [u8], off: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Human size, binary units (e.g. `3.7 GiB`).
pub fn human(n: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < units.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[i])
    }
}

/// `copy_file_range(2)`: copy up to `len` bytes at `off` from `src` to the same offset in `dst` inside the
/// kernel (no copy through user memory; a reflink where the file system offers one). Returns the bytes
/// copied (0 at the end of `src`).
pub fn copy_range(src: &File, dst: &File, off: u64, len: usize) -> io::Result<usize> {
    let mut a = off as libc::loff_t;
    let mut b = off as libc::loff_t;
    loop {
        // SAFETY: valid fds and pointers to live offsets.
        let r = unsafe {
            libc::copy_file_range(src.as_raw_fd(), &mut a, dst.as_raw_fd(), &mut b, len, 0)
        };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_writer_leaves_holes_and_keeps_bytes() {
        let t = tempfile::tempfile().unwrap();
        let mut data = vec![0u8; 3 * 1024 * 1024 + 100];
        data[5000] = 7;
        data[2 * 1024 * 1024 + 1] = 9;
        data[3 * 1024 * 1024 + 99] = 1;
        let mut w = SparseWriter::new(&t);
        for c in data.chunks(77_777) {
            w.write_all(c).unwrap();
        }
        assert_eq!(w.finish().unwrap(), data.len() as u64);
        let mut back = vec![0u8; data.len()];
        assert_eq!(read_full_at(&t, &mut back, 0).unwrap(), data.len());
        assert_eq!(back, data);
        let ext = data_extents(&t).unwrap();
        let mapped: u64 = ext.iter().map(|(a, b)| b - a).sum();
        assert!(
            mapped < data.len() as u64 / 2,
            "holes expected, extents {ext:?}"
        );
    }

    #[test]
    fn hash_reader_hashes_everything_and_limit_trips() {
        let data = b"hello world".repeat(1000);
        let mut r = HashReader::new(&data[..]);
        let mut first = [0u8; 10];
        r.read_exact(&mut first).unwrap();
        let (h, n) = r.finish().unwrap();
        assert_eq!(n, data.len() as u64);
        assert_eq!(h, sha256_hex(&data));
        let mut l = LimitReader::new(&data[..], 100, "test stream");
        assert!(io::copy(&mut l, &mut io::sink()).is_err());
    }

    #[test]
    fn aligned_buf_is_aligned() {
        let b = AlignedBuf::new(5000);
        assert_eq!(b.as_ptr() as usize % 4096, 0);
        assert_eq!(b.len(), 8192);
    }
}
