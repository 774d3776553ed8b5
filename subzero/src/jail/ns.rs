//! The jailed child's namespaces and root: a network namespace to join,
//! new mount and IPC namespaces (the PID namespace is made by the parent,
//! before the fork), the bind mounts, a tmpfs `/dev` with only the device
//! nodes the VMM needs, and `pivot_root` into the jail with the old root
//! detached.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::error::{check, last, sys};
use super::layout::{Layout, Placed, Placement};
use super::JailError;
use crate::jail::args::Role;

fn cstr(path: &Path) -> Result<CString, JailError> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| JailError::Args(format!("{} contains a NUL byte", path.display())))
}

fn mount(
    src: Option<&Path>,
    dst: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> Result<(), JailError> {
    let src_c = src.map(cstr).transpose()?;
    let dst_c = cstr(dst)?;
    let fs_c = fstype.map(|t| CString::new(t).expect("no NUL"));
    let data_c = data.map(|d| CString::new(d).expect("no NUL"));
    let p = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is a NUL-terminated string that outlives the
    // call, or null where mount(2) allows it.
    let rc = unsafe {
        libc::mount(
            p(&src_c),
            dst_c.as_ptr(),
            p(&fs_c),
            flags,
            p(&data_c).cast(),
        )
    };
    let what = match src {
        Some(s) => format!("mount {} on {}", s.display(), dst.display()),
        None => format!("mount {} ({})", dst.display(), fstype.unwrap_or("flags")),
    };
    check(rc, what)
}

/// Joins the network namespace at `netns` (an open `/var/run/netns/NAME`).
pub fn join_netns(netns: &File, path: &Path) -> Result<(), JailError> {
    // SAFETY: setns on a descriptor we own; no memory is passed.
    let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
    check(rc, format!("--netns {}: setns", path.display()))
}

/// New mount and IPC namespaces, with every mount private so nothing the
/// jail mounts propagates back to the host.
pub fn unshare_mount_ipc() -> Result<(), JailError> {
    // SAFETY: unshare takes flags only.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWIPC) };
    check(rc, "unshare(CLONE_NEWNS | CLONE_NEWIPC)")?;
    mount(
        None,
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
        None,
    )
}

/// Makes the root a mount point of its own, bind-mounts the files that
/// could not be linked (read-only ones remounted read-only), and puts a
/// tmpfs on `/dev` holding `kvm` (and `net/tun` when `tun`), owned by the
/// jailed uid, mode 0660.
pub fn populate(
    layout: &Layout,
    placed: &[Placed],
    tun: bool,
    uid: u32,
    gid: u32,
) -> Result<(), JailError> {
    let root = &layout.root;
    mount(Some(root), root, None, libc::MS_BIND | libc::MS_REC, None)?;
    for p in placed.iter().filter(|p| p.how == Placement::Bind) {
        let dst = layout.host_path(&p.file.inside);
        mount(Some(&p.file.host), &dst, None, libc::MS_BIND, None)?;
        if p.file.role == Role::Read {
            let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY;
            mount(None, &dst, None, flags, None)?;
        }
    }
    let dev = root.join("dev");
    let flags = libc::MS_NOSUID | libc::MS_NOEXEC;
    mount(
        Some(Path::new("tmpfs")),
        &dev,
        Some("tmpfs"),
        flags,
        Some("mode=755,size=64k"),
    )?;
    device(Path::new("/dev/kvm"), &dev.join("kvm"), uid, gid)?;
    if tun {
        std::fs::create_dir(dev.join("net")).map_err(sys("mkdir dev/net in the jail"))?;
        device(Path::new("/dev/net/tun"), &dev.join("net/tun"), uid, gid)?;
    }
    Ok(())
}

/// Makes a character device like the host's `host` at `dst`.
fn device(host: &Path, dst: &Path, uid: u32, gid: u32) -> Result<(), JailError> {
    let meta = std::fs::metadata(host).map_err(|e| JailError::File {
        flag: "the jail's /dev".into(),
        path: host.into(),
        why: format!("{e}: the VMM needs it (load its module: kvm_intel/kvm_amd, tun)"),
    })?;
    if !meta.file_type().is_char_device() {
        return Err(JailError::File {
            flag: "the jail's /dev".into(),
            path: host.into(),
            why: "not a character device".into(),
        });
    }
    let c = cstr(dst)?;
    // SAFETY: a NUL-terminated path; mknod reads nothing else.
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o660, meta.rdev()) };
    check(rc, format!("mknod {}", dst.display()))?;
    // SAFETY: as above; chown takes ids only.
    let rc = unsafe { libc::chown(c.as_ptr(), uid, gid) };
    check(rc, format!("chown {}", dst.display()))
}

/// How the jail's root became `/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pivot {
    /// `pivot_root`, the old root unmounted (detached).
    PivotRoot,
    /// The current root is the initramfs (rootfs), which `pivot_root`
    /// refuses: the jail was moved over `/` and chrooted into, as
    /// `switch_root` and `runc --no-pivot` do. The old root stays mounted
    /// underneath, out of reach without CAP_SYS_ADMIN and CAP_SYS_CHROOT.
    MoveChroot,
}

/// Switches the root to the jail's root.
pub fn pivot(layout: &Layout) -> Result<Pivot, JailError> {
    let root = cstr(&layout.root)?;
    let dot = CString::new(".").expect("no NUL");
    // SAFETY: a NUL-terminated path.
    let rc = unsafe { libc::chdir(root.as_ptr()) };
    check(rc, format!("chdir {}", layout.root.display()))?;
    // SAFETY: pivot_root with two NUL-terminated paths: "." on "." stacks
    // the old root over the new one, where the umount below detaches it.
    let rc = unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) };
    let how = if rc == 0 {
        // SAFETY: a NUL-terminated path.
        let rc = unsafe { libc::umount2(dot.as_ptr(), libc::MNT_DETACH) };
        check(rc, "detaching the old root")?;
        Pivot::PivotRoot
    } else if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        mount(
            Some(Path::new(".")),
            Path::new("/"),
            None,
            libc::MS_MOVE,
            None,
        )?;
        // SAFETY: a NUL-terminated path.
        let rc = unsafe { libc::chroot(dot.as_ptr()) };
        check(rc, "chroot into the jail")?;
        Pivot::MoveChroot
    } else {
        return Err(last(format!("pivot_root into {}", layout.root.display())));
    };
    let slash = CString::new("/").expect("no NUL");
    // SAFETY: a NUL-terminated path.
    let rc = unsafe { libc::chdir(slash.as_ptr()) };
    check(rc, "chdir / in the jail")?;
    Ok(how)
}
