//! bzImages unpacked on the host ([`crate::arch::x86_64::unpack`]), and a
//! cache of the results keyed by the bzImage's SHA-256, so that a second
//! boot of the same kernel reads its vmlinux instead of unpacking it.
//!
//! The cache is a directory only this user can write (created 0700; a
//! directory or file that others could write, or that another user owns,
//! is never trusted). Entries are written to a temporary name and renamed,
//! so a reader never sees half of one. Anything that goes wrong with the
//! cache costs only the cache: the kernel is unpacked in memory.

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::arch::x86_64::unpack::{self, Compression, MAX_VMLINUX};

/// A bzImage's vmlinux, ready to load.
pub struct Unpacked {
    /// The ELF vmlinux.
    pub vmlinux: Vec<u8>,
    /// How the payload was compressed.
    pub format: Compression,
    /// Read from the cache (else unpacked now).
    pub cached: bool,
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
/// else `~/.cache/subzero`, each with `vmlinux/` under it.
pub fn default_dir() -> Option<PathBuf> {
    let base = std::env::var_os("SUBZERO_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| Path::new(&d).join("subzero")))
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/subzero")))?;
    base.is_absolute().then(|| base.join("vmlinux"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `meta` is ours and no one else may write it.
fn private(meta: &std::fs::Metadata) -> bool {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    meta.uid() == me && meta.mode() & 0o022 == 0
}

/// The unpacked vmlinux of the bzImage `image`, from the cache in `dir`
/// when it holds it. `Err` says why the image must boot the ordinary way.
pub fn unpacked(image: &[u8], dir: Option<&Path>) -> Result<Unpacked, Skip> {
    let payload = unpack::payload(image).map_err(|e| Skip::NoPayload(e.to_string()))?;
    let format = Compression::detect(payload);
    let key = hex(&Sha256::digest(image));
    // A cached entry must have the size the build appended.
    let size = unpack::unpacked_size(payload);
    if let (Some(dir), Some(format)) = (dir, format) {
        if let Some(vmlinux) = read_entry(dir, &key).filter(|v| v.len() as u64 == size) {
            return Ok(Unpacked {
                vmlinux,
                format,
                cached: true,
            });
        }
    }
    let vmlinux = unpack::unpack(payload).map_err(|e| Skip::Failed(e.to_string()))?;
    let format = format.expect("unpack succeeded, so the format is known");
    if let Some(dir) = dir {
        if let Err(e) = write_entry(dir, &key, &vmlinux) {
            log::info!(
                "kernel cache {}: not kept ({e}); the next boot unpacks again",
                dir.display()
            );
        }
    }
    Ok(Unpacked {
        vmlinux,
        format,
        cached: false,
    })
}

/// A cached vmlinux, if the cache holds a sound one for `key`.
fn read_entry(dir: &Path, key: &str) -> Option<Vec<u8>> {
    let dir_meta = std::fs::symlink_metadata(dir).ok()?;
    if !dir_meta.is_dir() || !private(&dir_meta) {
        log::info!(
            "kernel cache {}: ignored (not a directory of ours that only we can write)",
            dir.display()
        );
        return None;
    }
    let path = dir.join(format!("{key}.elf"));
    let (file, len) = crate::files::open_regular(&path, MAX_VMLINUX).ok()?;
    if !private(&file.metadata().ok()?) {
        return None;
    }
    // Read the file just checked, not the path again.
    let mut data = Vec::with_capacity(len as usize);
    file.take(MAX_VMLINUX + 1).read_to_end(&mut data).ok()?;
    (data.len() as u64 <= MAX_VMLINUX && data.starts_with(b"\x7fELF")).then_some(data)
}

fn write_entry(dir: &Path, key: &str, vmlinux: &[u8]) -> std::io::Result<()> {
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
        f.write_all(vmlinux)?;
        std::fs::rename(&tmp, dir.join(format!("{key}.elf")))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

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
        let dir = scratch("hit").join("vmlinux");
        let elf = [b"\x7fELF".as_slice(), &[9u8; 5000]].concat();
        let img = image(&elf);
        let first = unpacked(&img, Some(&dir)).unwrap();
        assert!(!first.cached);
        assert_eq!(first.format, Compression::Gzip);
        let second = unpacked(&img, Some(&dir)).unwrap();
        assert!(second.cached);
        assert_eq!(second.vmlinux, elf);
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "the cache directory is private");
        // Another kernel is another entry.
        let other = [b"\x7fELF".as_slice(), &[3u8; 100]].concat();
        assert_eq!(unpacked(&image(&other), Some(&dir)).unwrap().vmlinux, other);
        let _ = std::fs::remove_dir_all(dir.parent().unwrap());
    }

    #[test]
    fn a_cache_others_can_write_is_not_trusted() {
        let dir = scratch("open").join("vmlinux");
        let elf = [b"\x7fELF".as_slice(), &[1u8; 300]].concat();
        let img = image(&elf);
        unpacked(&img, Some(&dir)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let again = unpacked(&img, Some(&dir)).unwrap();
        assert!(!again.cached, "a world-writable cache is ignored");
        assert_eq!(again.vmlinux, elf);
        let _ = std::fs::remove_dir_all(dir.parent().unwrap());
    }

    #[test]
    fn a_corrupt_entry_is_not_used() {
        let dir = scratch("corrupt").join("vmlinux");
        let elf = [b"\x7fELF".as_slice(), &[2u8; 300]].concat();
        let img = image(&elf);
        unpacked(&img, Some(&dir)).unwrap();
        let entry = std::fs::read_dir(&dir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        std::fs::write(&entry, b"not an elf").unwrap();
        let again = unpacked(&img, Some(&dir)).unwrap();
        assert!(!again.cached);
        assert_eq!(again.vmlinux, elf);
        // An unwritable place costs only the cache.
        let none = unpacked(&img, Some(Path::new("/proc/no-such-dir/vmlinux"))).unwrap();
        assert_eq!(none.vmlinux, elf);
        let _ = std::fs::remove_dir_all(dir.parent().unwrap());
    }
}
