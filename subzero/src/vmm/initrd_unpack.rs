//! Compressed initramfs archives unpacked on the host
//! ([`crate::arch::x86_64::initramfs`]), and kept in the unpack cache beside
//! the kernels ([`super::kernel_cache`], in its `initramfs/`), keyed the same
//! way: by the initrd file's identity and stamps and its first and last
//! 64 KiB. A hit is handed to the loader as the cache's file, which it reads
//! straight into guest memory.
//!
//! The guest then copies files out of a plain cpio archive instead of
//! decompressing it first. Anything that goes wrong costs only this: the
//! initrd boots as given.

use std::fs::File;
use std::path::Path;

use super::kernel_cache::Entry;
use crate::arch::x86_64::initramfs::{self, Skip};
use crate::arch::x86_64::unpack::Compression;

/// The cache's subdirectory for unpacked initramfs archives.
pub const INITRAMFS_DIR: &str = "initramfs";

/// The most an initramfs is unpacked to on the host (in Subzero's memory,
/// before it goes to the guest); a larger one boots as given.
pub const MAX_UNPACKED: u64 = 1 << 30;

/// Where an unpacked initramfs is.
pub enum Cpio {
    /// Unpacked now, in memory.
    Memory(Vec<u8>),
    /// The cache's entry, open (checked: ours, private, a cpio archive).
    Cached(File),
    /// Not compressed: the initrd itself, already read, to load as given.
    Plain(Vec<u8>),
}

/// An initramfs, unpacked.
pub struct Unpacked {
    /// The plain cpio archive(s).
    pub cpio: Cpio,
    /// The compressed streams it held (empty for a cache hit).
    pub formats: Vec<Compression>,
}

/// The unpacked form of the initrd open as `file` (`len` bytes), if it is
/// a compressed initramfs that unpacks to at most `max` bytes (and
/// [`MAX_UNPACKED`]); from the cache under `cache` when it holds it; the
/// initrd's own bytes ([`Cpio::Plain`]) if it is not compressed. `Err`
/// says why it boots as given.
pub fn unpacked(file: File, len: u64, max: u64, cache: Option<&Path>) -> Result<Unpacked, Skip> {
    let max = max.min(MAX_UNPACKED);
    let entry = Entry::new(
        cache,
        INITRAMFS_DIR,
        &file,
        "initramfs-v1",
        "cpio",
        "initramfs",
    );
    if let Some(hit) = entry.as_ref().and_then(|e| e.read(max, b"07070")) {
        return Ok(Unpacked {
            cpio: Cpio::Cached(hit),
            formats: Vec::new(),
        });
    }
    if len > max {
        return Err(Skip::Other(format!(
            "it is {len} bytes, more than the {max} it may unpack to"
        )));
    }
    let bytes = crate::files::read_opened(file, len, max)
        .map_err(|e| Skip::Other(format!("reading it: {e}")))?;
    let out = match initramfs::unpack(&bytes, max) {
        Ok(out) => out,
        Err(Skip::Plain) => {
            return Ok(Unpacked {
                cpio: Cpio::Plain(bytes),
                formats: Vec::new(),
            })
        }
        Err(e) => return Err(e),
    };
    drop(bytes);
    if let Some(entry) = &entry {
        entry.keep(&out.cpio);
    }
    Ok(Unpacked {
        cpio: Cpio::Memory(out.cpio),
        formats: out.formats,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::x86_64::initramfs::tests::{archive, gzip};
    use std::io::Read;

    fn scratch(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("subzero-icache-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn run(path: &Path, max: u64, cache: Option<&Path>) -> Result<(Vec<u8>, bool), Skip> {
        let f = File::open(path).unwrap();
        let len = f.metadata().unwrap().len();
        let u = unpacked(f, len, max, cache)?;
        Ok(match u.cpio {
            Cpio::Memory(v) => (v, false),
            Cpio::Plain(_) => return Err(Skip::Plain),
            Cpio::Cached(mut f) => {
                let mut v = Vec::new();
                f.read_to_end(&mut v).unwrap();
                (v, true)
            }
        })
    }

    #[test]
    fn the_second_boot_reads_the_unpacked_archive_from_the_cache() {
        let top = scratch("hit");
        let cache = top.join("cache");
        let cpio = archive(&[("init", b"#!/bin/sh\n".as_slice())]);
        let path = top.join("initrd.gz");
        std::fs::write(&path, gzip(&cpio)).unwrap();
        assert_eq!(
            run(&path, 1 << 20, Some(&cache)).unwrap(),
            (cpio.clone(), false)
        );
        assert_eq!(
            run(&path, 1 << 20, Some(&cache)).unwrap(),
            (cpio.clone(), true)
        );
        // An entry larger than the room now is not used, and neither is
        // the unpacked form.
        assert!(matches!(run(&path, 16, Some(&cache)), Err(Skip::Other(_))));
        // A rewritten initrd misses.
        let other = archive(&[("init", b"#!/bin/sh\necho 2\n".as_slice())]);
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&path, gzip(&other)).unwrap();
        assert_eq!(run(&path, 1 << 20, Some(&cache)).unwrap(), (other, false));
        // A plain archive is left as it is, and nothing is cached for it.
        let plain = top.join("initrd.cpio");
        std::fs::write(&plain, &cpio).unwrap();
        assert_eq!(run(&plain, 1 << 20, Some(&cache)), Err(Skip::Plain));
        let entries = std::fs::read_dir(cache.join(INITRAMFS_DIR))
            .unwrap()
            .count();
        assert_eq!(entries, 2);
        let _ = std::fs::remove_dir_all(&top);
    }
}
