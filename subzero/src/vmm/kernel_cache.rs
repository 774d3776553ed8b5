//! bzImages unpacked on the host ([`crate::arch::x86_64::unpack`]), and a
//! cache of the results, so that a second boot of the same kernel reads its
//! vmlinux instead of unpacking it.
//!
//! An entry is keyed by the bzImage file's identity and stamps (device,
//! inode, size, modification and change times) and its first and last
//! 64 KiB, hashed with SHA-256, not by all of its contents: a hit then reads
//! 128 KiB of the bzImage, and the entry file
//! itself is handed to the ELF loader, which reads its segments straight
//! into guest memory. Any write to the bzImage, or a new file in its place,
//! changes the change time or the inode and so the key.
//!
//! The cache is a directory only this user can write (created 0700; a
//! directory or file that others could write, or that another user owns,
//! is never trusted). Entries are written to a temporary name and renamed,
//! so a reader never sees half of one. Anything that goes wrong with the
//! cache costs only the cache: the kernel is unpacked in memory.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::arch::x86_64::unpack::{self, Compression, MAX_VMLINUX};

/// Where a bzImage's vmlinux is.
pub enum Vmlinux {
    /// Unpacked now, in memory.
    Memory(Vec<u8>),
    /// The cache's entry, open (checked: ours, private, an ELF file).
    Cached(File),
}

/// A bzImage's vmlinux, ready to load.
pub struct Unpacked {
    /// The ELF vmlinux.
    pub vmlinux: Vmlinux,
    /// How the payload was compressed (not known for a cache hit).
    pub format: Option<Compression>,
}

/// Why a bzImage is not unpacked on the host.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Skip {
    /// It has no payload the setup header locates (an old or hand-made
    /// image): nothing to unpack.
    #[error("{0}")]
    NoPayload(String),
    /// Its payload could not be unpacked.
    #[error("{0}")]
    Failed(String),
}

/// The cache directory: `$SUBZERO_CACHE_DIR`, else `$XDG_CACHE_HOME/subzero`,
/// else `~/.cache/subzero`. Kernels go in its `vmlinux/` ([`VMLINUX_DIR`]),
/// initramfs archives in its `initramfs/` ([`crate::vmm::initrd_unpack`]).
pub fn default_dir() -> Option<PathBuf> {
    let base = std::env::var_os("SUBZERO_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| Path::new(&d).join("subzero")))
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/subzero")))?;
    base.is_absolute().then_some(base)
}

/// The cache's subdirectory for unpacked kernels.
pub const VMLINUX_DIR: &str = "vmlinux";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `meta` is ours and no one else may write it.
fn private(meta: &std::fs::Metadata) -> bool {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    meta.uid() == me && meta.mode() & 0o022 == 0
}

/// Bytes read from each end of the bzImage into its key: the setup header
/// at the start, the payload's appended size near the end.
const SAMPLE: u64 = 64 << 10;

/// The cache key of the file open as `file` (a bzImage, or an initramfs
/// with another `kind`): its stamps, and its first and last [`SAMPLE`]
/// bytes (so that even a rewrite within the clock's granularity that
/// changes the header or the payload's end misses).
fn stamp_key(file: &File, kind: &str) -> Option<String> {
    let meta = file.metadata().ok()?;
    let stamps = format!(
        "{kind}:{}:{}:{}:{}.{}:{}.{}",
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec()
    );
    let mut h = Sha256::new();
    h.update(stamps.as_bytes());
    let len = meta.size();
    for at in [0, len.saturating_sub(SAMPLE)] {
        let mut buf = vec![0u8; SAMPLE.min(len) as usize];
        file.read_exact_at(&mut buf, at).ok()?;
        h.update(&buf);
    }
    Some(hex(&h.finalize()))
}

/// A file's entry in the unpack cache: the directory and key it would
/// have there.
pub(super) struct Entry {
    dir: PathBuf,
    key: String,
    ext: &'static str,
    /// What it holds, for messages ("kernel", "initramfs").
    what: &'static str,
}

impl Entry {
    /// The entry, in `cache`'s subdirectory `sub`, of the file open as
    /// `file`, keyed as a `kind`; none without a cache or a key.
    pub(super) fn new(
        cache: Option<&Path>,
        sub: &str,
        file: &File,
        kind: &str,
        ext: &'static str,
        what: &'static str,
    ) -> Option<Entry> {
        Some(Entry {
            dir: cache?.join(sub),
            key: stamp_key(file, kind)?,
            ext,
            what,
        })
    }

    /// The cached file, if the cache holds a sound one of at most `max`
    /// bytes that starts with `magic`.
    pub(super) fn read(&self, max: u64, magic: &[u8]) -> Option<File> {
        read_entry(&self.dir, &self.key, self.ext, max, magic)
    }

    /// Keeps `bytes` as the entry. A failure costs only the cache, and
    /// says so.
    pub(super) fn keep(&self, bytes: &[u8]) {
        if let Err(e) = write_entry(&self.dir, &self.key, self.ext, bytes) {
            log::info!(
                "{} cache {}: not kept ({e}); the next boot unpacks again",
                self.what,
                self.dir.display()
            );
        }
    }
}

/// The unpacked vmlinux of the bzImage open as `image` (at most `max`
/// bytes), from the cache under `cache` ([`default_dir`]) when it holds it.
/// `Err` says why the image must boot the ordinary way.
pub fn unpacked(image: File, max: u64, cache: Option<&Path>) -> Result<Unpacked, Skip> {
    let entry = Entry::new(cache, VMLINUX_DIR, &image, "bzimage-v2", "elf", "kernel");
    if let Some(hit) = entry.as_ref().and_then(|e| e.read(MAX_VMLINUX, b"\x7fELF")) {
        return Ok(Unpacked {
            vmlinux: Vmlinux::Cached(hit),
            format: None,
        });
    }
    let len = image.metadata().map(|m| m.len()).unwrap_or(0);
    let bytes = crate::files::read_opened(image, len, max)
        .map_err(|e| Skip::Failed(format!("reading it: {e}")))?;
    let payload = unpack::payload(&bytes).map_err(|e| Skip::NoPayload(e.to_string()))?;
    let format = Compression::detect(payload);
    let vmlinux = unpack::unpack(payload).map_err(|e| Skip::Failed(e.to_string()))?;
    if let Some(entry) = &entry {
        entry.keep(&vmlinux);
    }
    Ok(Unpacked {
        vmlinux: Vmlinux::Memory(vmlinux),
        format,
    })
}

/// A cached entry `key.ext` in `dir`, if the cache holds a sound one: a
/// private regular file of ours, at most `max` bytes, that starts with
/// `magic`.
fn read_entry(dir: &Path, key: &str, ext: &str, max: u64, magic: &[u8]) -> Option<File> {
    let dir_meta = std::fs::symlink_metadata(dir).ok()?;
    if !dir_meta.is_dir() || !private(&dir_meta) {
        log::info!(
            "unpack cache {}: ignored (not a directory of ours that only we can write)",
            dir.display()
        );
        return None;
    }
    let path = dir.join(format!("{key}.{ext}"));
    let (file, _len) = crate::files::open_regular(&path, max).ok()?;
    if !private(&file.metadata().ok()?) {
        return None;
    }
    let mut head = vec![0u8; magic.len()];
    file.read_exact_at(&mut head, 0).ok()?;
    (head == magic).then_some(file)
}

/// Keeps `bytes` as the entry `key.ext` in `dir` (created private), written
/// to a temporary name and renamed.
fn write_entry(dir: &Path, key: &str, ext: &str, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() || !private(&meta) {
        return Err(std::io::Error::other(
            "not a directory of ours that only we can write",
        ));
    }
    let tmp = dir.join(format!(".{key}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        // On disk before it has its name: a crash never leaves a named
        // entry cut short.
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(format!("{key}.{ext}")))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;

    /// `img` as a file in `dir`, open for `unpacked`.
    fn file(dir: &Path, img: &[u8]) -> File {
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("bzImage");
        std::fs::write(&path, img).unwrap();
        File::open(path).unwrap()
    }

    fn bytes(u: Unpacked) -> Vec<u8> {
        match u.vmlinux {
            Vmlinux::Memory(v) => v,
            Vmlinux::Cached(mut f) => {
                let mut v = Vec::new();
                f.read_to_end(&mut v).unwrap();
                v
            }
        }
    }

    fn cached(u: &Unpacked) -> bool {
        matches!(u.vmlinux, Vmlinux::Cached(_))
    }

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("subzero-kcache-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    /// A bzImage whose payload is a gzip of a fake vmlinux.
    fn image(vmlinux: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(vmlinux).unwrap();
        let payload = gz.finish().unwrap();
        let mut img = vec![0u8; 1024];
        img[0x1f1] = 1;
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        img[0x248..0x24c].copy_from_slice(&0u32.to_le_bytes());
        img[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        img.extend(payload);
        img
    }

    #[test]
    fn the_second_boot_reads_the_cache_and_gets_the_same_vmlinux() {
        let top = scratch("hit");
        let base = top.join("cache");
        let dir = base.join(VMLINUX_DIR);
        let elf = [b"\x7fELF".as_slice(), &[9u8; 5000]].concat();
        let img = image(&elf);
        let first = unpacked(file(&top, &img), 1 << 20, Some(&base)).unwrap();
        assert!(!cached(&first));
        assert_eq!(first.format, Some(Compression::Gzip));
        let second = unpacked(file(&top.join("same"), &img), 1 << 20, Some(&base)).unwrap();
        assert!(!cached(&second), "another file is another key");
        let f = File::open(top.join("bzImage")).unwrap();
        let third = unpacked(f, 1 << 20, Some(&base)).unwrap();
        assert!(cached(&third), "the same file, untouched, hits");
        assert_eq!(bytes(third), elf);
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "the cache directory is private");
        // Rewriting the bzImage (same path) changes its stamps: a miss.
        let other = [b"\x7fELF".as_slice(), &[3u8; 100]].concat();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let again = unpacked(file(&top, &image(&other)), 1 << 20, Some(&base)).unwrap();
        assert!(!cached(&again));
        assert_eq!(bytes(again), other);
        let _ = std::fs::remove_dir_all(&top);
    }

    #[test]
    fn a_cache_others_can_write_is_not_trusted() {
        let top = scratch("open");
        let base = top.join("cache");
        let dir = base.join(VMLINUX_DIR);
        let elf = [b"\x7fELF".as_slice(), &[1u8; 300]].concat();
        let img = image(&elf);
        unpacked(file(&top, &img), 1 << 20, Some(&base)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let again = unpacked(
            File::open(top.join("bzImage")).unwrap(),
            1 << 20,
            Some(&base),
        )
        .unwrap();
        assert!(!cached(&again), "a world-writable cache is ignored");
        assert_eq!(bytes(again), elf);
        let _ = std::fs::remove_dir_all(&top);
    }

    #[test]
    fn a_corrupt_entry_is_not_used() {
        let top = scratch("corrupt");
        let base = top.join("cache");
        let dir = base.join(VMLINUX_DIR);
        let elf = [b"\x7fELF".as_slice(), &[2u8; 300]].concat();
        let img = image(&elf);
        unpacked(file(&top, &img), 1 << 20, Some(&base)).unwrap();
        let entry = std::fs::read_dir(&dir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        std::fs::write(&entry, b"not an elf").unwrap();
        let again = unpacked(
            File::open(top.join("bzImage")).unwrap(),
            1 << 20,
            Some(&base),
        )
        .unwrap();
        assert!(!cached(&again));
        assert_eq!(bytes(again), elf);
        // An unwritable place costs only the cache.
        let none = unpacked(
            File::open(top.join("bzImage")).unwrap(),
            1 << 20,
            Some(Path::new("/proc/no-such-dir/vmlinux")),
        )
        .unwrap();
        assert_eq!(bytes(none), elf);
        // An image larger than allowed is refused, not unpacked.
        let big = unpacked(File::open(top.join("bzImage")).unwrap(), 10, None);
        assert!(matches!(big, Err(Skip::Failed(_))));
        let _ = std::fs::remove_dir_all(&top);
    }
}
