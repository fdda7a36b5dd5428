//! Steps 4 and 5 of `flash` (write the mapped ranges, read everything after the first MiB back) as a
//! pipeline of four threads, so that the disk writes and reads at the same time while a core hashes:
//!
//! * **source** (spawned): reads the image's mapped ranges into a fixed pool of aligned buffers, keeps the
//!   first MiB in memory, hands the rest to the writer (no hashing, see "One hash per byte");
//! * **writer** (spawned): writes the buffers (`O_DIRECT` where possible) and gives them back to the pool;
//!   on a regular-file target it announces after every completed `O_DIRECT` write how far the target is
//!   written (a watermark; with buffered writes only after an fsync, every [`SYNC_EVERY`] bytes); on a
//!   block device it announces only the end, after the last fsync;
//! * **read-back** (spawned): reads back with `O_DIRECT` what is below the watermark and hands it over;
//!   checks that unmapped ranges read as zeros;
//! * **verify** (the calling thread): hashes the read-back, range by range, against the block map.
//!
//! Memory stays flat: [`BUFS`] write buffers of [`WCHUNK`] and [`VBUFS`] read-back buffers of [`RCHUNK`],
//! whatever the image.
//!
//! **One hash per byte.** The image is not hashed as it is read: the read-back of every mapped range is
//! checked against the block map's SHA-256 for that range, and the block map is bound to the image by the
//! manifest (its own checksum and the manifest's record of it are checked before anything is written). A
//! target that reads back every range's digest holds exactly the bytes the block map describes, whatever
//! was read from the image; hashing the image as well would prove nothing more, it would only fail
//! earlier when the image was changed after its build. That case still fails, before the first MiB is
//! written (the target stays unbootable), and the message says which side is wrong: on a mismatch the
//! image's range is hashed then ([`mismatch`]). Ranges that lie wholly inside the first MiB are never read
//! back before it is written, so the caller checks them against the block map from the in-memory copy
//! before writing it.
//!
//! **Read-back before the final fsync (regular files).** A span is read back as soon as its `O_DIRECT`
//! write has completed, not after an fsync. That is still a read from the device: an `O_DIRECT` write
//! returns only once the device has acknowledged the data (nothing of it waits in the page cache), and an
//! `O_DIRECT` read fetches it from the device again. What an fsync adds is durability — the device's
//! volatile write cache flushed and the file's block allocation committed — not a different read: a
//! device may answer a read from its cache before or after a flush alike. Durability is still required
//! before success: the writer fsyncs after its last write, the first MiB is written only after that and
//! after every byte verified, and it is fsynced itself; a write-back error surfaces at those fsyncs and
//! fails the flash. A buffered tail (an image whose size is not a multiple of 4 KiB) is written back by
//! the kernel before the `O_DIRECT` read of its range. Where `O_DIRECT` writes are refused, writes are
//! buffered and a span is read back only after an fsync, as before.
//!
//! **Why overlap only on regular files.** Verifying a range while later ranges are still being written is
//! sound only if a later write cannot change an earlier, already verified range. On a file the file system
//! guarantees that distinct offsets are distinct storage. A block device gives no such guarantee: the
//! classic failure of cheap SD cards and USB sticks is a fake capacity, where writes beyond the real size
//! wrap around onto earlier blocks. Only a read-back after *all* writes catches that, so block devices are
//! verified strictly after the last write and fsync (the read-back itself is still overlapped with hashing).
//!
//! **Zeros on a file target.** After the final fsync, an unmapped range of a regular file is proven zero
//! from the file's extent map: `SEEK_DATA`/`SEEK_HOLE` list the data in it, which is read back and must be
//! zero; the rest is holes, which read as zeros by definition. (A bit flipped there afterwards would be data,
//! so `SEEK_DATA` finds it.) A file system that cannot report holes reports all data: everything is read.
//! On a block device every unmapped byte is read back: `BLKZEROOUT` is the device firmware's promise
//! (write-zeroes), and the read-back exists precisely not to take the device's word for it.

use super::{failed, read_back, Error, Hook, Target};
use crate::image::bmap::Bmap;
use crate::io::{self as lio, AlignedBuf};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

/// Write chunk: large O_DIRECT requests keep the device busy (the block layer splits them into
/// concurrently queued requests).
const WCHUNK: usize = 4 << 20;
/// Write buffers in flight between the source and the writer.
const BUFS: usize = 4;
/// Read-back chunk.
const RCHUNK: usize = 4 << 20;
/// On a file target written without `O_DIRECT`, fsync and hand over to the read-back every this many bytes.
const SYNC_EVERY: u64 = 128 << 20;
/// Read-back buffers in flight between the read-back and the verifying thread.
const VBUFS: usize = 3;

pub(super) struct Job<'j, 'h> {
    pub map: &'j Bmap,
    pub src: &'j File,
    pub image: &'j Path,
    pub dst: &'j File,
    pub target: &'j Target,
    pub head: u64,
    /// Verify while writing (regular-file targets only, see the module docs).
    pub overlap: bool,
    pub stop: &'j AtomicBool,
    pub progress: bool,
    pub hook: &'j mut Option<Hook<'h>>,
}

pub(super) struct Done {
    /// The image's first MiB, as read (and range-checked) from the image: written last by the caller.
    pub head_buf: Vec<u8>,
    pub written: u64,
    /// Bytes after the first MiB proven equal to the image.
    pub verified: u64,
    pub holes_proven: u64,
    pub direct: bool,
    /// The read-back descriptor (O_DIRECT where possible), for the first MiB.
    pub rb: File,
}

/// A thread stops with `Err(None)` when it stops because another one failed (that one reports why).
type Step<T> = Result<T, Option<Error>>;

struct Chunk {
    buf: AlignedBuf,
    /// Target offset of `buf[from]`.
    at: u64,
    from: usize,
    n: usize,
}

fn check(stop: &AtomicBool, abort: &AtomicBool) -> Step<()> {
    if stop.load(Ordering::SeqCst) {
        Err(Some(Error::Interrupted))
    } else if abort.load(Ordering::SeqCst) {
        Err(None)
    } else {
        Ok(())
    }
}

fn bars(
    progress: bool,
    written: u64,
    total: u64,
) -> (indicatif::ProgressBar, indicatif::ProgressBar) {
    use std::io::IsTerminal;
    if !progress || !std::io::stderr().is_terminal() {
        return (
            indicatif::ProgressBar::hidden(),
            indicatif::ProgressBar::hidden(),
        );
    }
    let mp = indicatif::MultiProgress::new();
    (
        mp.add(lio::progress_bar(written, "write", true)),
        mp.add(lio::progress_bar(total, "verify", true)),
    )
}

pub(super) fn run(job: Job) -> Result<Done, Error> {
    let Job {
        map,
        src,
        image,
        dst,
        target,
        head,
        overlap,
        stop,
        progress,
        hook,
    } = job;
    let io =
        |what: &str, e: std::io::Error| failed(format!("{what} on {}: {e}", target.describe()));
    // Written with O_DIRECT where the target allows it (no copy into the page cache, and nothing cached to
    // fool the read-back); a tail that is not 4 KiB aligned goes through the ordinary descriptor.
    let direct_w = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(target.path())
        .ok();
    let (rb, direct) =
        super::open_readback(target.path()).map_err(|e| io("opening for read-back", e))?;
    let abort = AtomicBool::new(false);
    let (free_tx, free_rx) = mpsc::channel::<AlignedBuf>();
    for _ in 0..BUFS {
        let _ = free_tx.send(AlignedBuf::new(WCHUNK));
    }
    let (data_tx, data_rx) = mpsc::sync_channel::<Chunk>(BUFS);
    let (head_tx, head_rx) = mpsc::channel::<Vec<u8>>();
    let (wm_tx, wm_rx) = mpsc::channel::<u64>();
    let (wpb, vpb) = bars(progress, map.mapped_bytes(), map.image_size);

    let (r, w, v) = std::thread::scope(|sc| {
        let abort = &abort;
        let wpb2 = wpb.clone();
        let r = sc.spawn(move || {
            let res = read_source(
                map, src, image, head, stop, abort, free_rx, &data_tx, head_tx,
            );
            if res.is_err() {
                abort.store(true, Ordering::SeqCst);
            }
            drop(data_tx);
            res
        });
        let direct_w = direct_w.as_ref();
        let w = sc.spawn(move || {
            let res = write_target(
                dst, direct_w, target, overlap, stop, abort, data_rx, free_tx, wm_tx, &wpb2,
            );
            if res.is_err() {
                abort.store(true, Ordering::SeqCst);
            }
            res
        });
        let (vfree_tx, vfree_rx) = mpsc::channel::<AlignedBuf>();
        for _ in 0..VBUFS {
            let _ = vfree_tx.send(AlignedBuf::new(RCHUNK));
        }
        let (back_tx, back_rx) = mpsc::sync_channel::<Back>(VBUFS);
        let rb = &rb;
        let mut marks = Marks {
            rx: wm_rx,
            synced: head,
            done: false,
            size: map.image_size,
            hook,
            path: target.path(),
        };
        let b = sc.spawn(move || {
            let res = read_target(
                map, rb, target, head, overlap, stop, abort, &mut marks, vfree_rx, &back_tx,
            );
            if res.is_err() {
                abort.store(true, Ordering::SeqCst);
            }
            drop(back_tx);
            res
        });
        let v = verify(
            map, src, image, target, head, back_rx, vfree_tx, &head_rx, &vpb,
        );
        if v.is_err() {
            abort.store(true, Ordering::SeqCst);
        }
        let b = b
            .join()
            .unwrap_or_else(|_| Err(Some(failed("internal error: a flash thread panicked"))));
        let v = match (v, b) {
            (Ok(_), Err(e)) | (Err(e), Err(_)) => Err(e),
            (Err(e), Ok(_)) => Err(e),
            (Ok((verified, hb)), Ok(holes)) => {
                // Every unmapped byte after the first MiB was read as zero or proven a hole.
                let zeros: u64 = map
                    .unmapped()
                    .iter()
                    .map(|&(a, b)| b.saturating_sub(a.max(head)))
                    .sum();
                Ok((verified + zeros, holes, hb))
            }
        };
        let panicked = || Some(failed("internal error: a flash thread panicked"));
        (
            r.join().unwrap_or_else(|_| Err(panicked())),
            w.join().unwrap_or_else(|_| Err(panicked())),
            v,
        )
    });
    wpb.finish_and_clear();
    vpb.finish_and_clear();
    // The first failure to report: the image (source), then the write, then the read-back.
    let (written, (verified, holes_proven, hb)) = match (r, w, v) {
        (Err(Some(e)), _, _) | (_, Err(Some(e)), _) | (_, _, Err(Some(e))) => return Err(e),
        (Err(None), _, _) | (_, Err(None), _) | (_, _, Err(None)) => {
            return Err(failed(
                "internal error: the flash pipeline stopped without a reason",
            ))
        }
        (Ok(written), Ok(()), Ok(v)) => (written, v),
    };
    let head_buf = match hb {
        Some(b) => b,
        None => head_rx
            .try_recv()
            .map_err(|_| failed("internal error: the first MiB was not handed over"))?,
    };
    Ok(Done {
        head_buf,
        written,
        verified,
        holes_proven,
        direct,
        rb,
    })
}

#[allow(clippy::too_many_arguments)]
fn read_source(
    map: &Bmap,
    src: &File,
    image: &Path,
    head: u64,
    stop: &AtomicBool,
    abort: &AtomicBool,
    free: mpsc::Receiver<AlignedBuf>,
    data: &mpsc::SyncSender<Chunk>,
    head_tx: mpsc::Sender<Vec<u8>>,
) -> Step<u64> {
    // No hashing here: the read-back is checked against the block map's range digests, which covers
    // what this thread read (see the module docs, "One hash per byte").
    let size = map.image_size;
    let mut head_buf = Some(vec![0u8; head as usize]);
    let mut held: Option<AlignedBuf> = None;
    let mut written = 0;
    for r in &map.ranges {
        let (s, e) = r.bytes(map.block_size, size);
        let mut o = s;
        while o < e {
            check(stop, abort)?;
            if o >= head {
                if let Some(hb) = head_buf.take() {
                    let _ = head_tx.send(hb);
                }
            }
            let mut buf = match held.take() {
                Some(b) => b,
                None => free.recv().map_err(|_| None)?,
            };
            let n = ((e - o) as usize).min(buf.len());
            let got = lio::read_full_at(src, &mut buf[..n], o)
                .map_err(|e| Some(failed(format!("reading image {}: {e}", image.display()))))?;
            if got < n {
                return Err(Some(failed(format!(
                    "image {} ended early at byte {}",
                    image.display(),
                    o + got as u64
                ))));
            }
            let mut from = 0usize;
            if o < head {
                let k = ((head - o) as usize).min(n);
                if let Some(hb) = head_buf.as_mut() {
                    hb[o as usize..o as usize + k].copy_from_slice(&buf[..k]);
                }
                from = k;
            }
            if from < n {
                let at = o + from as u64;
                data.send(Chunk { buf, at, from, n }).map_err(|_| None)?;
            } else {
                held = Some(buf);
            }
            o += n as u64;
            written += n as u64;
        }
    }
    if let Some(hb) = head_buf.take() {
        let _ = head_tx.send(hb);
    }
    Ok(written)
}

#[allow(clippy::too_many_arguments)]
fn write_target(
    dst: &File,
    direct_w: Option<&File>,
    t: &Target,
    overlap: bool,
    stop: &AtomicBool,
    abort: &AtomicBool,
    data: mpsc::Receiver<Chunk>,
    free: mpsc::Sender<AlignedBuf>,
    wm: mpsc::Sender<u64>,
    pb: &indicatif::ProgressBar,
) -> Step<()> {
    let io =
        |what: &str, e: std::io::Error| Some(failed(format!("{what} on {}: {e}", t.describe())));
    let sync = |all: bool| -> std::io::Result<()> {
        if let Some(dw) = direct_w {
            if all {
                dw.sync_all()?
            } else {
                dw.sync_data()?
            }
        }
        if all {
            dst.sync_all()
        } else {
            dst.sync_data()
        }
    };
    let mut since_sync = 0u64;
    let mut end;
    for c in data.iter() {
        check(stop, abort)?;
        let (from, n) = (c.from, c.n);
        let aligned = if direct_w.is_some() && c.at % 4096 == 0 {
            (n - from) / 4096 * 4096
        } else {
            0
        };
        if let (Some(dw), true) = (direct_w, aligned > 0) {
            dw.write_all_at(&c.buf[from..from + aligned], c.at)
                .map_err(|e| io("writing", e))?;
        }
        if from + aligned < n {
            dst.write_all_at(&c.buf[from + aligned..n], c.at + aligned as u64)
                .map_err(|e| io("writing", e))?;
        }
        let len = (n - from) as u64;
        end = c.at + len;
        since_sync += len;
        pb.inc(len);
        let _ = free.send(c.buf);
        if overlap && direct_w.is_some() {
            // The O_DIRECT write has completed: the bytes are on the device (see the module docs,
            // "Read-back before the final fsync"). A buffered tail is flushed by the O_DIRECT read of
            // its range, which writes back dirty cached pages first.
            wm.send(end).map_err(|_| None)?;
        } else if overlap && since_sync >= SYNC_EVERY {
            // Buffered writes (no O_DIRECT on this file system): only an fsync puts them on the device.
            sync(false).map_err(|e| io("fsync", e))?;
            wm.send(end).map_err(|_| None)?;
            since_sync = 0;
        }
    }
    // The source is done (or failed: then `abort` is already set).
    check(stop, abort)?;
    sync(true).map_err(|e| io("fsync", e))?;
    wm.send(u64::MAX).map_err(|_| None)?;
    Ok(())
}

/// How far the target is written and synced, from the writer's watermarks; runs the test hook on each
/// newly synced span before anything in it is read back.
struct Marks<'a, 'h> {
    rx: mpsc::Receiver<u64>,
    synced: u64,
    size: u64,
    hook: &'a mut Option<Hook<'h>>,
    path: &'a Path,
    /// The writer's last message (`u64::MAX`) arrived: all written, final fsync done.
    done: bool,
}

impl Marks<'_, '_> {
    /// Take the writer's next watermark (`u64::MAX`: everything written and the final fsync done).
    fn next(&mut self) -> Step<()> {
        let w = self.rx.recv().map_err(|_| None)?;
        if w == u64::MAX {
            self.done = true;
        }
        let w = w.min(self.size);
        if let Some(h) = self.hook.as_mut() {
            h(self.path, self.synced, w);
        }
        self.synced = self.synced.max(w);
        Ok(())
    }

    /// Until the target is written up to `need`.
    fn wait(&mut self, need: u64) -> Step<()> {
        while self.synced < need && !self.done {
            self.next()?;
        }
        Ok(())
    }

    /// Until the writer has written everything AND finished its final fsync. A watermark at the image's
    /// end is not enough (regression: the read-back thread took the last chunk's watermark for the end,
    /// stopped listening, and the writer's final message then failed — "the flash pipeline stopped without
    /// a reason" — besides proving zeros before the final fsync).
    fn wait_final(&mut self) -> Step<()> {
        while !self.done {
            self.next()?;
        }
        Ok(())
    }
}

/// What the read-back thread hands to the verifying (hashing) thread.
enum Back {
    /// Mapped range number `i` of the block map starts; its bytes after the first MiB follow.
    Range(usize),
    Data(AlignedBuf, usize),
    /// The current range is complete.
    End,
}

/// The read-back thread: walks the image after the first MiB in order, waiting for the writer's
/// watermarks, reads mapped ranges into the pool and hands them over for hashing; checks unmapped ranges
/// itself (read as zeros on block devices; extent map + data read on files, after the final fsync).
/// Returns the bytes proven zero by being holes.
#[allow(clippy::too_many_arguments)]
fn read_target(
    map: &Bmap,
    rb: &File,
    t: &Target,
    head: u64,
    overlap: bool,
    stop: &AtomicBool,
    abort: &AtomicBool,
    marks: &mut Marks,
    free: mpsc::Receiver<AlignedBuf>,
    out: &mpsc::SyncSender<Back>,
) -> Step<u64> {
    let size = map.image_size;
    let io =
        |what: &str, e: std::io::Error| Some(failed(format!("{what} on {}: {e}", t.describe())));
    let mut zbuf = AlignedBuf::new(lio::CHUNK);
    let mut zero_spans: Vec<(u64, u64)> = Vec::new();
    let mut pos = head;
    let mut zero_span = |a: u64, b: u64, marks: &mut Marks, zbuf: &mut AlignedBuf| -> Step<()> {
        if a >= b {
            return Ok(());
        }
        if overlap {
            zero_spans.push((a, b));
            return Ok(());
        }
        marks.wait_final()?;
        check(stop, abort)?;
        read_zeros(rb, zbuf, a, b, t)
    };
    for (i, r) in map.ranges.iter().enumerate() {
        let (s, e) = r.bytes(map.block_size, size);
        if e <= head {
            continue;
        }
        zero_span(pos, s.max(pos), marks, &mut zbuf)?;
        pos = pos.max(s);
        out.send(Back::Range(i)).map_err(|_| None)?;
        while pos < e {
            check(stop, abort)?;
            let mut buf = free.recv().map_err(|_| None)?;
            let want = (pos + buf.len() as u64).min(e);
            marks.wait(want)?;
            check(stop, abort)?;
            let upto = want.min(marks.synced);
            if upto <= pos {
                // The writer ended below this range: it failed, and says why.
                return Err(None);
            }
            let n = (upto - pos) as usize;
            // pos is 4 KiB aligned (ranges and chunks are); only the image's last block may be partial.
            let len = (n.div_ceil(4096) * 4096).min(buf.len());
            let got =
                super::read_aligned(rb, &mut buf[..len], pos).map_err(|e| io("reading back", e))?;
            if got < n {
                return Err(io(
                    "reading back",
                    std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("the target ends at byte {}", pos + got as u64),
                    ),
                ));
            }
            out.send(Back::Data(buf, n)).map_err(|_| None)?;
            pos = upto;
        }
        out.send(Back::End).map_err(|_| None)?;
    }
    zero_span(pos, size, marks, &mut zbuf)?;
    // Everything is written and synced before the zeros of a file target are checked.
    marks.wait_final()?;
    check(stop, abort)?;
    let mut holes = 0;
    for (a, b) in std::mem::take(&mut zero_spans) {
        check(stop, abort)?;
        holes += prove_zero_file(rb, &mut zbuf, a, b, t)?;
    }
    Ok(holes)
}

/// The verifying thread: hashes what the read-back thread hands over, range by range, against the block
/// map. Returns the mapped bytes verified after the first MiB and the first MiB if it was needed here.
#[allow(clippy::too_many_arguments)]
fn verify(
    map: &Bmap,
    src: &File,
    image: &Path,
    t: &Target,
    head: u64,
    back: mpsc::Receiver<Back>,
    free: mpsc::Sender<AlignedBuf>,
    head_rx: &mpsc::Receiver<Vec<u8>>,
    pb: &indicatif::ProgressBar,
) -> Step<(u64, Option<Vec<u8>>)> {
    let size = map.image_size;
    let mut head_buf: Option<Vec<u8>> = None;
    let mut cur: Option<(usize, Sha256, u64)> = None;
    let mut verified = 0;
    for m in back.iter() {
        match m {
            Back::Range(i) => {
                let (s, _) = map.ranges[i].bytes(map.block_size, size);
                let mut h = Sha256::new();
                if s < head {
                    if head_buf.is_none() {
                        head_buf = Some(head_rx.recv().map_err(|_| None)?);
                    }
                    if let Some(hb) = &head_buf {
                        h.update(&hb[s as usize..head as usize]);
                    }
                }
                cur = Some((i, h, s.max(head)));
            }
            Back::Data(buf, n) => {
                if let Some((_, h, _)) = cur.as_mut() {
                    h.update(&buf[..n]);
                }
                pb.inc(n as u64);
                let _ = free.send(buf);
            }
            Back::End => {
                let Some((i, h, start)) = cur.take() else {
                    return Err(None);
                };
                let r = &map.ranges[i];
                let (_, e) = r.bytes(map.block_size, size);
                let got = hex::encode(h.finalize());
                if got != r.sha256 {
                    return Err(Some(mismatch(map, i, src, image, t, start, &got)));
                }
                verified += e - start;
            }
        }
    }
    Ok((verified, head_buf))
}

/// The error for mapped range `i` read back with digest `got` instead of the block map's. The image is
/// not hashed while it is written (the read-back decides), so on a mismatch its range is hashed now to
/// say which side is wrong: an image changed after its build, or a target that did not keep the bytes.
fn mismatch(
    map: &Bmap,
    i: usize,
    src: &File,
    image: &Path,
    t: &Target,
    start: u64,
    got: &str,
) -> Error {
    let r = &map.ranges[i];
    let (s, e) = r.bytes(map.block_size, map.image_size);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; lio::CHUNK];
    let mut o = s;
    let mut src_err = None;
    while o < e {
        let n = ((e - o) as usize).min(buf.len());
        match lio::read_full_at(src, &mut buf[..n], o) {
            Ok(k) if k == n => h.update(&buf[..n]),
            Ok(k) => {
                src_err = Some(format!("it ends at byte {}", o + k as u64));
                break;
            }
            Err(e) => {
                src_err = Some(e.to_string());
                break;
            }
        }
        o += n as u64;
    }
    let img = match src_err {
        Some(why) => Some(format!("cannot be read ({why})")),
        None => {
            let d = hex::encode(h.finalize());
            (d != r.sha256).then(|| format!("holds sha256 {d}"))
        }
    };
    match img {
        Some(what) => failed(format!(
            "image {} does not match its block map at blocks {}-{} (bytes {s}..{e}): expected sha256 {}, the image {what}; was it changed after it was built? (found by the read-back of {})",
            image.display(),
            r.first,
            r.last,
            r.sha256,
            t.describe()
        )),
        None => failed(format!(
            "read-back mismatch on {} in bytes {start}..{e}: expected sha256 {}, the device returned {got} (bad medium or a write that did not stick)",
            t.describe(),
            r.sha256
        )),
    }
}

/// Read `[a, b)` back: it must be all zeros.
fn read_zeros(rb: &File, abuf: &mut AlignedBuf, a: u64, b: u64, t: &Target) -> Step<()> {
    let mut off = a;
    read_back(rb, abuf, a, b, |d| {
        if lio::is_zero(d) {
            off += d.len() as u64;
            return Ok(());
        }
        if let Some(i) = d.iter().position(|&b| b != 0) {
            return Err(std::io::Error::other(format!(
                "byte {} should be zero but reads 0x{:02x}",
                off + i as u64,
                d[i]
            )));
        }
        off += d.len() as u64;
        Ok(())
    })
    .map_err(|e| {
        Some(failed(format!(
            "read-back mismatch on {}: {e}",
            t.describe()
        )))
    })
}

/// A regular file's `[a, b)` reads as zeros: the data extents in it (after the final fsync) are read and
/// must be zero, the holes read as zeros by definition. Returns the bytes proven by being holes.
fn prove_zero_file(rb: &File, abuf: &mut AlignedBuf, a: u64, b: u64, t: &Target) -> Step<u64> {
    let io = |e: std::io::Error| {
        Some(failed(format!(
            "reading the extent map of {}: {e}",
            t.describe()
        )))
    };
    let mut read = 0;
    let mut p = a;
    while p < b {
        let d = match seek(rb, p, libc::SEEK_DATA) {
            Ok(d) => d,
            // No data at or after p: the rest of the file is a hole.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => break,
            // The file system cannot tell: read it all.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINVAL) | Some(libc::EOPNOTSUPP)
                ) =>
            {
                read_zeros(rb, abuf, p, b, t)?;
                read += b - p;
                break;
            }
            Err(e) => return Err(io(e)),
        };
        if d >= b {
            break;
        }
        let h = seek(rb, d, libc::SEEK_HOLE).map_err(io)?.min(b);
        if h <= d {
            return Err(io(std::io::Error::other(format!(
                "SEEK_HOLE from {d} returned {h}"
            ))));
        }
        read_zeros(rb, abuf, d, h, t)?;
        read += h - d;
        p = h;
    }
    Ok((b - a) - read)
}

fn seek(f: &File, off: u64, whence: libc::c_int) -> std::io::Result<u64> {
    // SAFETY: plain lseek on a valid fd (reads use pread, so the file offset is unused).
    let r = unsafe { libc::lseek(f.as_raw_fd(), off as libc::off_t, whence) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as u64)
    }
}
