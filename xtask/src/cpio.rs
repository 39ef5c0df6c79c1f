//! A directory tree as a `newc` cpio archive: the format the kernel
//! unpacks into its initramfs (Documentation/driver-api/early-userspace/
//! buffer-format.rst). Regular files, directories and symbolic links, owned
//! by root, directories before what they hold; no hard links.

use std::{io::Write, os::unix::fs::PermissionsExt as _, path::Path};

use anyhow::{Context as _, Result};

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;

/// Writes every entry under `top` (not `top` itself), then the trailer.
pub fn write_tree(top: &Path, w: &mut impl Write) -> Result<()> {
    let mut ino = 1;
    walk(top, "", w, &mut ino)?;
    entry(w, "TRAILER!!!", 0, 0, &[], 0)
}

fn walk(dir: &Path, prefix: &str, w: &mut impl Write, ino: &mut u32) -> Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<std::io::Result<_>>()?;
    names.sort_by_key(|e| e.file_name());
    for e in names {
        let path = e.path();
        let name = format!("{prefix}{}", e.file_name().to_string_lossy());
        let md = std::fs::symlink_metadata(&path)?;
        let perm = md.permissions().mode() & 0o7777;
        *ino += 1;
        if md.file_type().is_symlink() {
            let target = std::fs::read_link(&path)?;
            let t = target.to_string_lossy();
            entry(w, &name, S_IFLNK | 0o777, *ino, t.as_bytes(), 1)?;
        } else if md.is_dir() {
            entry(w, &name, S_IFDIR | perm, *ino, &[], 2)?;
            walk(&path, &format!("{name}/"), w, ino)?;
        } else {
            let data =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            entry(w, &name, S_IFREG | perm, *ino, &data, 1)?;
        }
    }
    Ok(())
}

fn entry(
    w: &mut impl Write,
    name: &str,
    mode: u32,
    ino: u32,
    data: &[u8],
    nlink: u32,
) -> Result<()> {
    let namesize = name.len() + 1;
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        u32::try_from(data.len()).context("file over 4 GiB")?,
        0,
        0,
        0,
        0,
        namesize as u32,
        0, // check
    ];
    let mut h = String::with_capacity(110);
    h.push_str("070701");
    for f in fields {
        h.push_str(&format!("{f:08X}"));
    }
    w.write_all(h.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    pad(w, 110 + namesize)?;
    w.write_all(data)?;
    pad(w, data.len())?;
    Ok(())
}

fn pad(w: &mut impl Write, n: usize) -> Result<()> {
    let zeros = [0u8; 3];
    w.write_all(&zeros[..(4 - n % 4) % 4])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The archive parsed back: names, modes and contents, parents first.
    #[test]
    fn tree_round_trips_through_cpio() {
        let top = std::env::temp_dir().join(format!("xtask-cpio-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&top);
        std::fs::create_dir_all(top.join("bin")).unwrap();
        std::fs::write(top.join("bin/tool"), b"abcde").unwrap();
        std::fs::set_permissions(top.join("bin/tool"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::os::unix::fs::symlink("bin/tool", top.join("link")).unwrap();
        std::fs::write(top.join("init"), b"#!/bin/sh\n").unwrap();
        let mut out = Vec::new();
        write_tree(&top, &mut out).unwrap();
        std::fs::remove_dir_all(&top).unwrap();
        assert_eq!(out.len() % 4, 0);
        // Parse it back.
        let mut at = 0;
        let mut seen = Vec::new();
        loop {
            let h = std::str::from_utf8(&out[at..at + 110]).unwrap();
            assert_eq!(&h[..6], "070701");
            let f = |i: usize| u32::from_str_radix(&h[6 + 8 * i..14 + 8 * i], 16).unwrap();
            let (mode, size, namesize) = (f(1), f(6) as usize, f(11) as usize);
            let name = std::str::from_utf8(&out[at + 110..at + 110 + namesize - 1]).unwrap();
            at += (110 + namesize).div_ceil(4) * 4;
            let data = out[at..at + size].to_vec();
            at += size.div_ceil(4) * 4;
            if name == "TRAILER!!!" {
                break;
            }
            seen.push((name.to_string(), mode, data));
        }
        assert_eq!(at, out.len());
        let names: Vec<&str> = seen.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(names, ["bin", "bin/tool", "init", "link"]);
        assert_eq!(seen[0].1 & 0o170000, S_IFDIR);
        assert_eq!(
            (seen[1].1, seen[1].2.as_slice()),
            (S_IFREG | 0o755, &b"abcde"[..])
        );
        assert_eq!(
            (seen[3].1, seen[3].2.as_slice()),
            (S_IFLNK | 0o777, &b"bin/tool"[..])
        );
    }
}
