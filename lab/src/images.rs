//! The virtio scenarios' disk images, built on the host with `mkfs.ext4 -d`
//! (e2fsprogs) from a staging directory, and put in L1's initramfs.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::{have_tool, scripts, LabError};

/// Size of each ext4 image. Mostly empty, so it compresses to little more
/// than its files in L1's gzip'd initramfs.
pub const IMAGE_MIB: u32 = 16;

fn failed(what: impl std::fmt::Display) -> LabError {
    LabError::Failed(what.to_string())
}

/// Whether `mkfs.ext4` is on PATH or in /sbin, /usr/sbin (not always on a
/// user's PATH).
pub fn mkfs_ext4() -> Option<String> {
    ["mkfs.ext4", "/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"]
        .into_iter()
        .find(|t| have_tool(t))
        .map(String::from)
}

/// Writes an ext4 image of [`IMAGE_MIB`] MiB holding `staging`'s tree.
fn ext4_from_dir(staging: &Path, image: &Path, label: &str) -> Result<Vec<u8>, LabError> {
    let mkfs = mkfs_ext4().ok_or_else(|| {
        LabError::Unavailable("mkfs.ext4 (apt-get install e2fsprogs) for the disk images".into())
    })?;
    let _ = fs::remove_file(image);
    let out = Command::new(&mkfs)
        .args(["-q", "-F", "-L", label, "-E", "root_owner=0:0", "-d"])
        .arg(staging)
        .arg(image)
        .arg(format!("{IMAGE_MIB}M"))
        .output()
        .map_err(|e| failed(format!("running {mkfs}: {e}")))?;
    if !out.status.success() {
        return Err(failed(format!(
            "{mkfs} -d {} {} failed ({}): {}",
            staging.display(),
            image.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    fs::read(image).map_err(|e| failed(format!("{}: {e}", image.display())))
}

fn fresh_dir(dir: &Path) -> Result<(), LabError> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir).map_err(|e| failed(format!("{}: {e}", dir.display())))
}

fn write(path: &Path, data: &[u8], mode: u32) -> Result<(), LabError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| failed(format!("{}: {e}", parent.display())))?;
    }
    fs::write(path, data)
        .and_then(|_| fs::set_permissions(path, fs::Permissions::from_mode(mode)))
        .map_err(|e| failed(format!("{}: {e}", path.display())))
}

/// The block scenarios' image: `/known.bin` ([`scripts::KNOWN_FILE`]).
pub fn block_image(work: &Path) -> Result<Vec<u8>, LabError> {
    let staging = work.join("block-root");
    fresh_dir(&staging)?;
    write(
        &staging.join("known.bin"),
        &scripts::KNOWN_FILE.data(),
        0o644,
    )?;
    ext4_from_dir(&staging, &work.join("block.img"), "szblock")
}

/// The rootfs scenario's image: busybox, [`scripts::ROOTFS_INIT`] as
/// `/sbin/init`, and `/etc/sz-rootfs-marker` holding `marker` (which only
/// the disk has).
pub fn rootfs_image(work: &Path, busybox: &[u8], marker: &str) -> Result<Vec<u8>, LabError> {
    let staging = work.join("rootfs-root");
    fresh_dir(&staging)?;
    for d in [
        "proc", "sys", "dev", "tmp", "etc", "sbin", "usr/bin", "usr/sbin",
    ] {
        fs::create_dir_all(staging.join(d)).map_err(|e| failed(format!("{d}: {e}")))?;
    }
    write(&staging.join("bin/busybox"), busybox, 0o755)?;
    std::os::unix::fs::symlink("busybox", staging.join("bin/sh"))
        .map_err(|e| failed(format!("bin/sh: {e}")))?;
    write(
        &staging.join("sbin/init"),
        scripts::ROOTFS_INIT.as_bytes(),
        0o755,
    )?;
    write(
        &staging.join("etc/sz-rootfs-marker"),
        format!("{marker}\n").as_bytes(),
        0o644,
    )?;
    ext4_from_dir(&staging, &work.join("rootfs.img"), "szroot")
}
