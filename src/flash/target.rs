//! What a flash target is, and whether it is safe to overwrite: a whole block device that is not mounted,
//! not in use (holders, swap), not holding the running system, and large enough — or a regular file when
//! the operator asked for one explicitly.

use super::Error;
use crate::io::human;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub enum Target {
    File {
        path: PathBuf,
    },
    Block {
        path: PathBuf,
        /// Kernel name (`sdb`, `mmcblk0`, `loop3`).
        name: String,
        model: String,
        size: u64,
    },
}

impl Target {
    pub fn path(&self) -> &Path {
        match self {
            Target::File { path } | Target::Block { path, .. } => path,
        }
    }
    pub fn describe(&self) -> String {
        match self {
            Target::File { path } => format!("file {}", path.display()),
            Target::Block {
                path, model, size, ..
            } => format!("{} ({model}, {})", path.display(), human(*size)),
        }
    }
    pub fn is_block(&self) -> bool {
        matches!(self, Target::Block { .. })
    }
}

fn dev_of(m: &fs::Metadata) -> (u32, u32) {
    let r = m.rdev();
    (libc::major(r), libc::minor(r))
}

fn read_trim(p: impl AsRef<Path>) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

fn parse_dev(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.trim().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// The sysfs directory of a block device number (`/sys/devices/…/block/sdb[/sdb1]`).
fn sysfs(dev: (u32, u32)) -> Option<PathBuf> {
    fs::canonicalize(format!("/sys/dev/block/{}:{}", dev.0, dev.1)).ok()
}

/// The whole disks under a block device: itself (or its parent, for a partition), and through
/// device-mapper / md `slaves`, the disks those sit on.
fn whole_disks(dev: (u32, u32), out: &mut Vec<String>, depth: u32) {
    let Some(dir) = sysfs(dev) else { return };
    let disk = if dir.join("partition").exists() {
        dir.parent().map(|p| p.to_path_buf()).unwrap_or(dir.clone())
    } else {
        dir.clone()
    };
    if let Some(n) = disk.file_name() {
        out.push(n.to_string_lossy().into_owned());
    }
    if depth > 8 {
        return;
    }
    for d in [&dir, &disk] {
        if let Ok(rd) = fs::read_dir(d.join("slaves")) {
            for e in rd.flatten() {
                if let Some(sd) = read_trim(e.path().join("dev")).and_then(|s| parse_dev(&s)) {
                    whole_disks(sd, out, depth + 1);
                }
            }
        }
    }
}

struct Mount {
    dev: (u32, u32),
    source: String,
    at: String,
}

fn mounts() -> Vec<Mount> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let dev = parse_dev(f.get(2)?)?;
            let at = unescape(f.get(4)?);
            let sep = f.iter().position(|x| *x == "-")?;
            let source = unescape(f.get(sep + 2)?);
            Some(Mount { dev, source, at })
        })
        .collect()
}

fn unescape(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Inspect `path` for flashing an image of `image_size` bytes.
pub fn inspect(path: &Path, image_size: u64, allow_file: bool) -> Result<Target, Error> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if allow_file {
                return Ok(Target::File {
                    path: path.to_path_buf(),
                });
            }
            return Err(Error::Refused(format!(
                "{} does not exist: give a whole-disk block device such as /dev/sdX or /dev/mmcblkN (or --allow-file to write an image file)",
                path.display()
            )));
        }
        Err(e) => {
            return Err(Error::Refused(format!(
                "cannot inspect {}: {e}",
                path.display()
            )))
        }
    };
    let ft = meta.file_type();
    if ft.is_file() {
        if !allow_file {
            return Err(Error::Refused(format!(
                "{} is a regular file, not a block device: pass --allow-file to write the image into a file",
                path.display()
            )));
        }
        return Ok(Target::File {
            path: path.to_path_buf(),
        });
    }
    if !ft.is_block_device() {
        return Err(Error::Refused(format!(
            "{} is not a block device (give the whole disk, e.g. /dev/sdX or /dev/mmcblkN)",
            path.display()
        )));
    }
    let dev = dev_of(&meta);
    let Some(dir) = sysfs(dev) else {
        return Err(Error::Refused(format!(
            "{}: block device {}:{} has no sysfs entry; cannot check that it is safe to overwrite",
            path.display(),
            dev.0,
            dev.1
        )));
    };
    let name = dir
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let size = read_trim(dir.join("size"))
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0)
        * 512;
    let model = {
        let vendor = read_trim(dir.join("device/vendor")).unwrap_or_default();
        let model = read_trim(dir.join("device/model")).unwrap_or_default();
        let both = format!("{vendor} {model}").trim().to_string();
        if !both.is_empty() {
            both
        } else if let Some(b) = read_trim(dir.join("loop/backing_file")) {
            format!("loop device backed by {b}")
        } else if let Some(n) = read_trim(dir.join("device/name")) {
            n
        } else {
            "unknown model".into()
        }
    };
    let t = Target::Block {
        path: path.to_path_buf(),
        name: name.clone(),
        model,
        size,
    };
    let what = t.describe();
    if dir.join("partition").exists() {
        let parent = dir
            .parent()
            .and_then(|p| p.file_name())
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Err(Error::Refused(format!(
            "{what} is a partition, not a whole disk: flash the disk itself (/dev/{parent})"
        )));
    }
    // The disk and its partitions.
    let mut devs: Vec<(String, (u32, u32))> = vec![(name.clone(), dev)];
    if let Ok(rd) = fs::read_dir(&dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.join("partition").exists() {
                if let Some(d) = read_trim(p.join("dev")).and_then(|s| parse_dev(&s)) {
                    devs.push((e.file_name().to_string_lossy().into_owned(), d));
                }
            }
        }
    }
    devs.sort();
    // The running system.
    let ms = mounts();
    let mut root_disks = Vec::new();
    for m in ms.iter().filter(|m| m.at == "/") {
        whole_disks(m.dev, &mut root_disks, 0);
        if let Ok(sm) = fs::metadata(&m.source) {
            if sm.file_type().is_block_device() {
                whole_disks(dev_of(&sm), &mut root_disks, 0);
            }
        }
    }
    if root_disks.contains(&name) {
        return Err(Error::Refused(format!(
            "{what} holds the running system (/ is mounted from it): refusing to overwrite it"
        )));
    }
    // Mounted (by device number, or by source path for file systems that report anonymous numbers).
    for m in &ms {
        let src_dev = fs::metadata(&m.source)
            .ok()
            .filter(|sm| sm.file_type().is_block_device())
            .map(|sm| dev_of(&sm));
        if let Some((n, _)) = devs
            .iter()
            .find(|(_, d)| *d == m.dev || Some(*d) == src_dev)
        {
            return Err(Error::Refused(format!(
                "{what} is mounted: /dev/{n} on {}; unmount it first (umount {})",
                m.at, m.at
            )));
        }
    }
    // Swap.
    for l in fs::read_to_string("/proc/swaps")
        .unwrap_or_default()
        .lines()
        .skip(1)
    {
        let src = l.split_whitespace().next().unwrap_or("");
        if let Ok(sm) = fs::metadata(src) {
            if sm.file_type().is_block_device() && devs.iter().any(|(_, d)| *d == dev_of(&sm)) {
                return Err(Error::Refused(format!(
                    "{what} is in use as swap ({src}); swapoff it first"
                )));
            }
        }
    }
    // Holders: device-mapper, LVM, dm-crypt, md RAID on the disk or a partition.
    for (n, _) in &devs {
        let hd = if *n == name {
            dir.join("holders")
        } else {
            dir.join(n).join("holders")
        };
        if let Ok(rd) = fs::read_dir(hd) {
            let hs: Vec<String> = rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            if !hs.is_empty() {
                return Err(Error::Refused(format!(
                    "{what} is in use: /dev/{n} is held by {} (LVM, dm-crypt or RAID); deactivate it first",
                    hs.join(", ")
                )));
            }
        }
    }
    if size < image_size {
        return Err(Error::Refused(format!(
            "{what} is too small for the image ({} = {image_size} bytes, the device has {size} bytes)",
            human(image_size)
        )));
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape("/media/a\\040b"), "/media/a b");
        assert_eq!(unescape("/x\\\\y"), "/x\\\\y");
    }
}
