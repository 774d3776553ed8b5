//! What can go wrong while building the jail, each with what to do.

use std::io;
use std::path::PathBuf;

/// Why `subzero jail` could not start the jailed VMM.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    /// The jail mounts, makes device nodes and changes uid: it needs root.
    #[error(
        "subzero jail must run as root (uid 0; this is uid {0}): it mounts, makes device \
         nodes and then drops to --uid/--gid. Run it with sudo"
    )]
    NotRoot(u32),
    /// `--chroot-base` is missing or not a directory.
    #[error("--chroot-base {0}: {1}")]
    Base(PathBuf, String),
    /// `--id` is not a short name of letters, digits and hyphens.
    #[error("--id {0:?}: {1}")]
    Id(String, &'static str),
    /// The jail directory for this id exists already.
    #[error(
        "the jail {0} exists already (an earlier run with this --id): remove it \
         (rm -r {0}) or choose another --id"
    )]
    Exists(PathBuf),
    /// The subzero arguments after `--` cannot be jailed as given.
    #[error("{0}")]
    Args(String),
    /// A file an argument names cannot go into the jail.
    #[error("{flag} {path}: {why}")]
    File {
        /// The flag that names it.
        flag: String,
        /// The host path.
        path: PathBuf,
        /// What is wrong and what to do.
        why: String,
    },
    /// The binary to run would not start in a jail without libraries.
    #[error(
        "--exec-file {0} is dynamically linked, and the jail holds no libraries: use a \
         static build (RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --release \
         --target x86_64-unknown-linux-gnu)"
    )]
    Dynamic(PathBuf),
    /// A `--cgroup` setting could not be applied.
    #[error("--cgroup: {0}")]
    Cgroup(String),
    /// A `--rlimit` setting is malformed or was refused.
    #[error("--rlimit: {0}")]
    Rlimit(String),
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done, with the path.
        what: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The jailed child failed before it could exec subzero.
    #[error("in the jail, before exec: {0}")]
    Child(String),
}

/// `map_err` helper: a failed system call, described.
pub(crate) fn sys(what: impl Into<String>) -> impl FnOnce(io::Error) -> JailError {
    let what = what.into();
    move |source| JailError::Sys { what, source }
}

/// The last OS error as a [`JailError::Sys`].
pub(crate) fn last(what: impl Into<String>) -> JailError {
    sys(what)(io::Error::last_os_error())
}

/// `Ok(())` when a libc call returned 0, else the OS error.
pub(crate) fn check(rc: libc::c_int, what: impl Into<String>) -> Result<(), JailError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(last(what))
    }
}
