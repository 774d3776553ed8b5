//! The jail's directory, `<chroot-base>/subzero/<id>/root`, and what goes
//! into it on the host side before any namespace exists: the files the
//! arguments name (hard-linked, or an empty placeholder that a bind mount
//! covers in the jail's mount namespace when the file is on another file
//! system), the subzero binary (copied), `/run` for sockets and created
//! files (owned by the jailed uid, mode 0700), and `/dev` (a mount point:
//! the device nodes go on a tmpfs in the jail's mount namespace).
//!
//! Nothing here changes a host file: a file the jailed uid cannot read (or
//! write, for a read-write disk) is refused with what to do, as the owner's
//! choice, since a hard link shares the file's owner and mode.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::args::{JailFile, Role};
use super::error::sys;
use super::JailError;

/// Where a file ended up in the jail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// A hard link (same file system).
    Linked,
    /// An empty placeholder; the child bind-mounts the host file over it.
    Bind,
    /// Nothing yet: subzero creates it under `/run`.
    Created,
}

/// A file and where it went.
#[derive(Debug, Clone)]
pub struct Placed {
    /// The file.
    pub file: JailFile,
    /// How.
    pub how: Placement,
}

/// The jail's paths.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `<base>/subzero/<id>`.
    pub dir: PathBuf,
    /// `<dir>/root`, the VMM's `/`.
    pub root: PathBuf,
}

/// The binary's name inside the jail.
pub const EXE: &str = "/subzero";

impl Layout {
    /// The layout for `id` under `base` (both checked).
    pub fn new(base: &Path, id: &str) -> Result<Layout, JailError> {
        check_id(id)?;
        match fs::metadata(base) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(JailError::Base(base.into(), "not a directory".into())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(JailError::Base(
                    base.into(),
                    format!("does not exist: create it (mkdir -p {})", base.display()),
                ))
            }
            Err(e) => return Err(JailError::Base(base.into(), e.to_string())),
        }
        if !base.is_absolute() {
            return Err(JailError::Base(base.into(), "give an absolute path".into()));
        }
        let dir = base.join("subzero").join(id);
        Ok(Layout {
            root: dir.join("root"),
            dir,
        })
    }

    /// The host path of an in-jail path.
    pub fn host_path(&self, inside: &str) -> PathBuf {
        self.root.join(inside.trim_start_matches('/'))
    }
}

/// Letters, digits and hyphens, 1 to 64 of them (Firecracker's rule).
pub fn check_id(id: &str) -> Result<(), JailError> {
    if id.is_empty() || id.len() > 64 {
        return Err(JailError::Id(id.into(), "give 1 to 64 characters"));
    }
    if !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(JailError::Id(id.into(), "use only letters, digits and '-'"));
    }
    Ok(())
}

/// Whether `uid`/`gid` (and no supplementary groups) may access a file of
/// this owner and mode with the permission bits in `want` (4 read, 2 write).
pub fn allowed(meta_uid: u32, meta_gid: u32, mode: u32, uid: u32, gid: u32, want: u32) -> bool {
    let bits = if meta_uid == uid {
        (mode >> 6) & 7
    } else if meta_gid == gid {
        (mode >> 3) & 7
    } else {
        mode & 7
    };
    bits & want == want
}

/// Whether an ELF image asks for a program interpreter (is dynamically
/// linked). `None` when it is not a 64-bit little-endian ELF.
pub fn is_dynamic(elf: &[u8]) -> Option<bool> {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        return None;
    }
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().ok()?) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    (0..count).try_fold(false, |dynamic, i| {
        let at = phoff.checked_add(i.checked_mul(size)?)?;
        let p_type = elf.get(at..at + 4)?;
        Some(dynamic || p_type == 3u32.to_le_bytes())
    })
}

/// Creates the jail on the host: directories, files, the binary.
pub fn build(
    layout: &Layout,
    files: &[JailFile],
    exe: &Path,
    uid: u32,
    gid: u32,
) -> Result<Vec<Placed>, JailError> {
    // Check every file before creating anything.
    for f in files.iter().filter(|f| f.role != Role::Created) {
        check_file(f, uid, gid)?;
    }
    let image = fs::read(exe).map_err(sys(format!("--exec-file {}", exe.display())))?;
    if is_dynamic(&image) != Some(false) {
        return Err(JailError::Dynamic(exe.into()));
    }
    let parent = layout.dir.parent().expect("dir is <base>/subzero/<id>");
    mkdir(parent, 0o755, true)?;
    if layout.dir.exists() {
        return Err(JailError::Exists(layout.dir.clone()));
    }
    mkdir(&layout.dir, 0o755, false)?;
    fill(layout, files, &image, exe, uid, gid).inspect_err(|_| {
        let _ = fs::remove_dir_all(&layout.dir);
    })
}

/// The jail's contents, in a directory [`build`] just made.
fn fill(
    layout: &Layout,
    files: &[JailFile],
    image: &[u8],
    exe: &Path,
    uid: u32,
    gid: u32,
) -> Result<Vec<Placed>, JailError> {
    mkdir(&layout.root, 0o755, false)?;
    mkdir(&layout.root.join("dev"), 0o755, false)?;
    let run = layout.root.join("run");
    mkdir(&run, 0o700, false)?;
    std::os::unix::fs::chown(&run, Some(uid), Some(gid))
        .map_err(sys(format!("chown {}", run.display())))?;
    let exe_path = layout.host_path(EXE);
    fs::write(&exe_path, image).map_err(sys(format!("copying {}", exe.display())))?;
    fs::set_permissions(&exe_path, fs::Permissions::from_mode(0o755))
        .map_err(sys(format!("chmod {}", exe_path.display())))?;

    let mut placed = Vec::new();
    for f in files {
        let how = if f.role == Role::Created {
            Placement::Created
        } else {
            place(layout, f)?
        };
        log::debug!(
            "jail: {} {} -> {} ({how:?})",
            f.flag,
            f.host.display(),
            f.inside
        );
        placed.push(Placed {
            file: f.clone(),
            how,
        });
    }
    Ok(placed)
}

/// Refuses a file that is missing, not regular, or that the jailed uid
/// could not use.
fn check_file(f: &JailFile, uid: u32, gid: u32) -> Result<(), JailError> {
    let err = |why: String| JailError::File {
        flag: f.flag.clone(),
        path: f.host.clone(),
        why,
    };
    let meta = fs::metadata(&f.host).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => err("does not exist".into()),
        _ => err(e.to_string()),
    })?;
    if !meta.is_file() {
        return Err(err(format!(
            "it is {}; the jail takes only regular files",
            crate::files::kind_name(meta.file_type())
        )));
    }
    let (want, what) = match f.role {
        Role::ReadWrite => (6, "read and write"),
        _ => (4, "read"),
    };
    if !allowed(meta.uid(), meta.gid(), meta.mode(), uid, gid, want) {
        return Err(err(format!(
            "uid {uid} gid {gid} could not {what} it in the jail (owner {}:{}, mode {:o}): \
             chown {uid}:{gid} it or change its mode",
            meta.uid(),
            meta.gid(),
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

/// Hard-links `f` into the jail, or makes the bind mount's placeholder when
/// the link crosses file systems (EXDEV) or is refused (EPERM).
fn place(layout: &Layout, f: &JailFile) -> Result<Placement, JailError> {
    let target = layout.host_path(&f.inside);
    match fs::hard_link(&f.host, &target) {
        Ok(()) => Ok(Placement::Linked),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EXDEV) | Some(libc::EPERM)) => {
            log::info!(
                "jail: {} is on another file system than the jail ({e}): bind-mounting it",
                f.host.display()
            );
            fs::File::create(&target).map_err(sys(format!("creating {}", target.display())))?;
            Ok(Placement::Bind)
        }
        Err(e) => Err(JailError::File {
            flag: f.flag.clone(),
            path: f.host.clone(),
            why: format!("cannot link it to {}: {e}", target.display()),
        }),
    }
}

fn mkdir(path: &Path, mode: u32, parents: bool) -> Result<(), JailError> {
    fs::DirBuilder::new()
        .mode(mode)
        .recursive(parents)
        .create(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => JailError::Exists(path.into()),
            _ => sys(format!("mkdir {}", path.display()))(e),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_firecrackers_rule() {
        assert!(check_id("vm-0").is_ok());
        assert!(check_id(&"a".repeat(64)).is_ok());
        for bad in ["", "../x", "a/b", "vm_0", &"a".repeat(65)] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_layout_is_base_subzero_id_root() {
        let base = std::env::temp_dir();
        let l = Layout::new(&base, "vm0").unwrap();
        assert_eq!(l.root, base.join("subzero/vm0/root"));
        assert_eq!(
            l.host_path("/run/a.sock"),
            base.join("subzero/vm0/root/run/a.sock")
        );
        let e = Layout::new(Path::new("/no/such/base"), "vm0").unwrap_err();
        assert_eq!(
            e.to_string(),
            "--chroot-base /no/such/base: does not exist: create it (mkdir -p /no/such/base)"
        );
        let e = Layout::new(&base, "a/b").unwrap_err().to_string();
        assert!(e.starts_with("--id \"a/b\""), "{e}");
    }

    #[test]
    fn access_uses_owner_then_group_then_other() {
        assert!(allowed(1000, 0, 0o600, 1000, 1000, 6));
        assert!(!allowed(0, 0, 0o644, 1000, 1000, 6));
        assert!(allowed(0, 0, 0o644, 1000, 1000, 4));
        assert!(allowed(0, 1000, 0o660, 1000, 1000, 6));
        // The owner's bits apply to the owner even when "other" has more.
        assert!(!allowed(1000, 0, 0o047, 1000, 1000, 4));
    }

    #[test]
    fn the_running_test_binary_is_recognised_as_elf() {
        let me = fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(is_dynamic(&me).is_some());
        assert_eq!(is_dynamic(b"#!/bin/sh\n"), None);
    }

    #[test]
    fn files_the_jailed_uid_cannot_use_are_refused_with_what_to_do() {
        let dir = std::env::temp_dir().join(format!("sz-jail-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let file = dir.join("disk.img");
        fs::write(&file, b"x").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
        let me = fs::metadata(&file).unwrap();
        let f = |role, host: &Path| JailFile {
            flag: "--disk".into(),
            host: host.into(),
            inside: "/disk.img".into(),
            role,
        };
        let other = me.uid() + 1;
        let e = check_file(&f(Role::ReadWrite, &file), other, other).unwrap_err();
        let want = format!(
            "--disk {}: uid {other} gid {other} could not read and write it in the jail \
             (owner {}:{}, mode 600): chown {other}:{other} it or change its mode",
            file.display(),
            me.uid(),
            me.gid()
        );
        assert_eq!(e.to_string(), want);
        assert!(check_file(&f(Role::ReadWrite, &file), me.uid(), me.gid()).is_ok());
        let e = check_file(&f(Role::Read, &dir.join("none")), 0, 0).unwrap_err();
        assert!(e.to_string().ends_with("none: does not exist"), "{e}");
        let e = check_file(&f(Role::Read, &dir), 0, 0).unwrap_err();
        assert!(e.to_string().contains("it is a directory"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
