//! FAT file systems inside an image file, edited in place through a byte-range window (no loop mounts).

use anyhow::{Context, Result};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

/// A `Read + Write + Seek` window `[start, start+len)` of a file: one partition.
pub struct Slice<'a> {
    file: &'a File,
    start: u64,
    len: u64,
    pos: u64,
}

impl<'a> Slice<'a> {
    pub fn new(file: &'a File, start: u64, len: u64) -> Self {
        Slice {
            file,
            start,
            len,
            pos: 0,
        }
    }
}

impl Read for Slice<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (self.len.saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        let got = crate::io::read_full_at(self.file, &mut buf[..n], self.start + self.pos)?;
        // Past the end of a sparse/short file reads as zeros (the image is sized to cover the partition).
        buf[got..n].fill(0);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for Slice<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = (self.len.saturating_sub(self.pos)).min(buf.len() as u64) as usize;
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write past the end of the partition",
            ));
        }
        self.file.write_all_at(&buf[..n], self.start + self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Slice<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let p = match to {
            SeekFrom::Start(p) => p as i128,
            SeekFrom::End(d) => self.len as i128 + d as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if p < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the partition start",
            ));
        }
        self.pos = p as u64;
        Ok(self.pos)
    }
}

/// The volume label of the FAT file system in a partition (root-directory label first, like blkid, then the
/// boot sector's), or None when the partition holds no FAT file system fatfs can open.
pub fn label(file: &File, start: u64, len: u64) -> Option<String> {
    // Cheap sniff before handing it to fatfs: a FAT boot sector ends in 55 AA and has a sane sector size.
    let mut bs = [0u8; 512];
    if crate::io::read_full_at(file, &mut bs, start).ok()? < 512
        || bs[510] != 0x55
        || bs[511] != 0xaa
    {
        return None;
    }
    let bps = u16::from_le_bytes([bs[11], bs[12]]);
    if !matches!(bps, 512 | 1024 | 2048 | 4096) {
        return None;
    }
    let fs = fatfs::FileSystem::new(Slice::new(file, start, len), fatfs::FsOptions::new()).ok()?;
    let root = fs.read_volume_label_from_root_dir().ok().flatten();
    let l = root.unwrap_or_else(|| fs.volume_label());
    Some(l.trim_end().to_string())
}

/// Write `files` into the root directory of the FAT file system at `[start, start+len)`, replacing files of
/// the same name (FAT names compare case-insensitively).
pub fn write_files(file: &File, start: u64, len: u64, files: &[(String, Vec<u8>)]) -> Result<()> {
    let fs = fatfs::FileSystem::new(Slice::new(file, start, len), fatfs::FsOptions::new())
        .context("opening the FAT file system")?;
    {
        let root = fs.root_dir();
        for (name, bytes) in files {
            let mut f = root
                .create_file(name)
                .with_context(|| format!("creating {name} in the FAT file system"))?;
            f.truncate()?;
            f.write_all(bytes).with_context(|| {
                format!(
                    "writing {name} ({} bytes): is the FAT file system full?",
                    bytes.len()
                )
            })?;
            f.flush()?;
        }
    }
    fs.unmount().context("closing the FAT file system")?;
    Ok(())
}

/// Format a fresh FAT file system labelled `label` over `[start, start+len)`; `hidden` is the partition's
/// first LBA (recorded in the boot sector as DOS does), `volume_id` its serial number.
pub fn format(
    file: &File,
    start: u64,
    len: u64,
    label: &str,
    volume_id: u32,
    hidden: u32,
) -> Result<()> {
    // Start from zeros: fatfs only writes the metadata it needs.
    crate::io::write_zeros(file, start, len.min(1 << 20))?;
    let mut l = [b' '; 11];
    for (i, b) in label.bytes().take(11).enumerate() {
        l[i] = b;
    }
    fatfs::format_volume(
        Slice::new(file, start, len),
        fatfs::FormatVolumeOptions::new()
            .volume_label(l)
            .volume_id(volume_id),
    )
    .context("formatting the FAT file system")?;
    file.write_all_at(&hidden.to_le_bytes(), start + 28)?;
    // fatfs puts the label only in the boot sector; blkid and mtools read the root directory's volume-label
    // entry first, so add it (FAT12/16: fixed root directory right after the FATs; the first entry is free).
    let mut bs = [0u8; 512];
    crate::io::read_full_at(file, &mut bs, start)?;
    let bps = u16::from_le_bytes([bs[11], bs[12]]) as u64;
    let reserved = u16::from_le_bytes([bs[14], bs[15]]) as u64;
    let fats = bs[16] as u64;
    let spf16 = u16::from_le_bytes([bs[22], bs[23]]) as u64;
    if spf16 != 0 {
        let root = start + (reserved + fats * spf16) * bps;
        let mut e = [0u8; 32];
        e[..11].copy_from_slice(&l);
        e[11] = 0x08;
        file.write_all_at(&e, root)?;
    }
    Ok(())
}
