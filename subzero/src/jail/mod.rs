//! `subzero jail`: runs subzero with the least privilege that works, in the
//! manner of Firecracker's jailer (our own code).
//!
//! In order, as root:
//! 1. [`args`]: find the files the subzero arguments name, and rewrite
//!    them to in-jail paths;
//! 2. [`layout`]: build `<chroot-base>/subzero/<id>/root` on the host
//!    (files hard-linked or marked for a bind mount, the binary copied,
//!    `/run` for sockets);
//! 3. [`cgroup`]: make the cgroup v2 group, if `--cgroup` is given;
//! 4. unshare a PID namespace and fork: the child is PID 1 there. It
//!    joins the cgroup, joins `--netns`, makes new mount and IPC
//!    namespaces, bind-mounts, fills a tmpfs `/dev`, `pivot_root`s into
//!    the jail ([`ns`]), sets the rlimits, drops to `--uid`/`--gid` with
//!    every capability cleared and no_new_privs ([`privs`]), and execs
//!    `/subzero` with the rewritten arguments;
//! 5. the parent forwards SIGINT, SIGTERM, SIGHUP and SIGQUIT to the child
//!    (and SIGKILL for one the VMM has no handler for: as PID 1 of its
//!    namespace it would ignore it), waits for it, removes the cgroup and
//!    exits with its status.
//!
//! The child tells the parent why it failed before the exec through a
//! close-on-exec pipe, so every error reaches the user as one line. A jail
//! that fails before the exec is removed; one that ran stays (its `/run`
//! holds the sockets and outputs), as Firecracker's jails do: remove it
//! before you use its `--id` again.

pub mod args;
pub mod cgroup;
mod error;
pub mod layout;
pub mod ns;
pub mod privs;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};

pub use error::JailError;
use error::{check, last};
use layout::{Layout, Placed};

/// Everything `subzero jail` was asked for.
#[derive(Debug, Clone)]
pub struct JailConfig {
    /// The jail's name: `<chroot_base>/subzero/<id>`.
    pub id: String,
    /// The uid the VMM runs as.
    pub uid: u32,
    /// The gid the VMM runs as.
    pub gid: u32,
    /// Where jails are made.
    pub chroot_base: PathBuf,
    /// cgroup v2 settings.
    pub cgroups: Vec<cgroup::Setting>,
    /// A network namespace to join (`/var/run/netns/NAME`).
    pub netns: Option<PathBuf>,
    /// The subzero binary to copy in and run.
    pub exec_file: PathBuf,
    /// Resource limits.
    pub rlimits: privs::Rlimits,
    /// The subzero arguments (after `--`).
    pub args: Vec<String>,
}

/// A jail built on the host, ready to start.
#[derive(Debug)]
pub struct Prepared {
    /// Its paths.
    pub layout: Layout,
    /// Its files.
    pub placed: Vec<Placed>,
    /// The arguments to exec.
    pub args: args::Rewritten,
    /// The cgroup, if made.
    pub cgroup: Option<PathBuf>,
    netns: Option<(File, PathBuf)>,
    uid: u32,
    gid: u32,
    rlimits: privs::Rlimits,
}

/// Steps 1 to 3: checks, plans and builds the jail on the host.
pub fn prepare(cfg: &JailConfig) -> Result<Prepared, JailError> {
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err(JailError::NotRoot(euid));
    }
    let layout = Layout::new(&cfg.chroot_base, &cfg.id)?;
    let args = args::rewrite(&cfg.args)?;
    let netns = match &cfg.netns {
        None => None,
        Some(p) => Some((
            File::open(p).map_err(|e| JailError::File {
                flag: "--netns".into(),
                path: p.clone(),
                why: format!("{e} (make one with `ip netns add NAME`: /var/run/netns/NAME)"),
            })?,
            p.clone(),
        )),
    };
    let placed = layout::build(&layout, &args.files, &cfg.exec_file, cfg.uid, cfg.gid)?;
    let cgroup = if cfg.cgroups.is_empty() {
        None
    } else {
        let root = std::path::Path::new(cgroup::CGROUP_ROOT);
        match cgroup::create(root, &cfg.id, &cfg.cgroups) {
            Ok(dir) => Some(dir),
            Err(e) => {
                remove_jail(&layout);
                return Err(e);
            }
        }
    };
    Ok(Prepared {
        layout,
        placed,
        args,
        cgroup,
        netns,
        uid: cfg.uid,
        gid: cfg.gid,
        rlimits: cfg.rlimits,
    })
}

/// Removes a jail that never ran, so the same --id can be tried again. In
/// the host's mount namespace the jail holds only hard links, empty
/// placeholders and our copy of the binary: removing them harms no file.
fn remove_jail(layout: &Layout) {
    if let Err(e) = std::fs::remove_dir_all(&layout.dir) {
        log::warn!("jail: could not remove {}: {e}", layout.dir.display());
    }
}

/// The child's pid, for the parent's signal handler.
static CHILD: AtomicI32 = AtomicI32::new(0);
/// The last signal the parent forwarded, for its wait loop.
static PENDING: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
    PENDING.store(sig, Ordering::Relaxed);
}

/// The signals the parent passes on to the VMM.
const FORWARDED: [libc::c_int; 4] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

/// Steps 4 and 5: starts the jailed VMM and waits for it; returns its exit
/// status (128 + the signal if a signal ended it).
pub fn launch(p: Prepared) -> Result<u8, JailError> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    check(rc, "pipe2")?;
    // SAFETY: pipe2 just returned these descriptors; nothing else owns them.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: unshare takes flags only; it affects the children forked next.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWPID) };
    check(rc, "unshare(CLONE_NEWPID)")?;
    // SAFETY: this process is single-threaded here (the jail starts no
    // threads), so the child may allocate.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(last("fork"));
    }
    if pid == 0 {
        drop(rd);
        let err = child(&p);
        let mut w = File::from(wr);
        let _ = w.write_all(err.to_string().as_bytes());
        // SAFETY: _exit ends the child without running the parent's
        // destructors or atexit handlers.
        unsafe { libc::_exit(1) };
    }
    drop(wr);
    CHILD.store(pid, Ordering::Relaxed);
    for sig in FORWARDED {
        // SAFETY: a zeroed sigaction with our async-signal-safe handler.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = forward as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    let mut msg = String::new();
    let _ = File::from(rd).read_to_string(&mut msg);
    let status = wait(pid)?;
    if let Some(dir) = &p.cgroup {
        cgroup::remove(dir);
    }
    if !msg.is_empty() {
        remove_jail(&p.layout);
        return Err(JailError::Child(msg));
    }
    Ok(status)
}

/// Whether `pid` has a handler for `sig` (its `SigCgt` in /proc).
fn catches(pid: libc::pid_t, sig: libc::c_int) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .is_some_and(|m| m & (1 << (sig - 1)) != 0)
}

/// Waits for the VMM. It is PID 1 of its namespace, where a signal it has
/// no handler for is ignored instead of ending it; so a forwarded signal
/// the VMM does not catch is followed by SIGKILL, and reported as that
/// signal, as if its default action had ended the VMM.
fn wait(pid: libc::pid_t) -> Result<u8, JailError> {
    let mut status = 0;
    let mut killed_for = 0;
    // Polled, so that a signal that lands just before a blocking waitpid
    // is not left unhandled.
    loop {
        let sig = PENDING.swap(0, Ordering::Relaxed);
        if sig != 0 && !catches(pid, sig) {
            log::info!("jail: the VMM has no handler for signal {sig}: killing it");
            killed_for = sig;
            // SAFETY: kill takes a pid and a signal number.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        // SAFETY: waitpid writes the status into our integer.
        match unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } {
            0 => std::thread::sleep(std::time::Duration::from_millis(100)),
            r if r == pid => break,
            _ if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => {}
            _ => return Err(last("waitpid")),
        }
    }
    Ok(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status) as u8
    } else if libc::WTERMSIG(status) == libc::SIGKILL && killed_for != 0 {
        128 + killed_for as u8
    } else {
        128u8.saturating_add(libc::WTERMSIG(status) as u8)
    })
}

/// The child: everything up to the exec (returns only on failure).
fn child(p: &Prepared) -> JailError {
    let run = || -> Result<ns::Pivot, JailError> {
        if let Some(dir) = &p.cgroup {
            cgroup::join(dir)?;
        }
        if let Some((f, path)) = &p.netns {
            ns::join_netns(f, path)?;
        }
        ns::unshare_mount_ipc()?;
        ns::populate(&p.layout, &p.placed, p.args.needs_tun, p.uid, p.gid)?;
        let how = ns::pivot(&p.layout)?;
        p.rlimits.apply()?;
        privs::drop_privileges(p.uid, p.gid)?;
        Ok(how)
    };
    match run() {
        Ok(how) => {
            log::info!("jail: root switched by {how:?}; exec {}", layout::EXE);
            privs::exec(layout::EXE, &p.args.args)
        }
        Err(e) => e,
    }
}
