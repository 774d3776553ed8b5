//! The jailed child's last steps: resource limits, the drop to the jail's
//! uid and gid with every capability set cleared and no_new_privs set, and
//! the exec.

use std::ffi::CString;

use super::error::{check, last};
use super::JailError;

/// `--rlimit` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimits {
    /// RLIMIT_FSIZE in bytes; `None` is unlimited (the default: the VMM
    /// writes disk images and snapshot memory files in place, whose size
    /// the user chose, and a cap below them would kill it with SIGXFSZ).
    pub fsize: Option<u64>,
    /// RLIMIT_NOFILE (default 2048, as Firecracker's jailer).
    pub no_file: u64,
}

impl Default for Rlimits {
    fn default() -> Self {
        Rlimits {
            fsize: None,
            no_file: 2048,
        }
    }
}

impl Rlimits {
    /// Applies one `--rlimit` value: `fsize=N|unlimited` (N bytes, or with K,
    /// M, G or T), `no-file=N`, comma-separated.
    pub fn set(&mut self, spec: &str) -> Result<(), JailError> {
        for kv in spec.split(',').filter(|kv| !kv.is_empty()) {
            let bad = |why: &str| JailError::Rlimit(format!("{kv:?}: {why}"));
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| bad("give KEY=VALUE (fsize=1G, no-file=1024)"))?;
            match k {
                "fsize" if v == "unlimited" => self.fsize = None,
                "fsize" => {
                    self.fsize = Some(size(v).ok_or_else(|| bad("a size like 4096, 512M or 2G"))?)
                }
                "no-file" => {
                    let n: u64 = v.parse().map_err(|_| bad("a number of descriptors"))?;
                    if n < 64 {
                        return Err(bad("the VMM needs at least 64 descriptors"));
                    }
                    self.no_file = n;
                }
                _ => return Err(bad("the keys are fsize and no-file")),
            }
        }
        Ok(())
    }

    /// setrlimit for both, soft and hard.
    pub fn apply(&self) -> Result<(), JailError> {
        let fsize = self.fsize.unwrap_or(libc::RLIM_INFINITY);
        for (res, v, name) in [
            (libc::RLIMIT_FSIZE, fsize, "RLIMIT_FSIZE"),
            (libc::RLIMIT_NOFILE, self.no_file, "RLIMIT_NOFILE"),
        ] {
            let lim = libc::rlimit {
                rlim_cur: v,
                rlim_max: v,
            };
            // SAFETY: a valid rlimit struct, read by the kernel.
            let rc = unsafe { libc::setrlimit(res, &lim) };
            check(rc, format!("setrlimit({name}, {v})"))?;
        }
        Ok(())
    }
}

/// `512`, `4K`, `512M`, `2G`, `1T` in bytes.
fn size(v: &str) -> Option<u64> {
    let (num, shift) = match v.as_bytes().last()? {
        b'K' | b'k' => (&v[..v.len() - 1], 10),
        b'M' | b'm' => (&v[..v.len() - 1], 20),
        b'G' | b'g' => (&v[..v.len() - 1], 30),
        b'T' | b't' => (&v[..v.len() - 1], 40),
        _ => (v, 0),
    };
    num.parse::<u64>().ok()?.checked_mul(1 << shift)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

/// Drops to `uid`/`gid` with no supplementary groups and no capabilities
/// in any set (ambient, bounding, inheritable, permitted, effective), then
/// sets no_new_privs; checks the result.
pub fn drop_privileges(uid: u32, gid: u32) -> Result<(), JailError> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    check(rc, "clearing the ambient capabilities")?;
    // The bounding set needs CAP_SETPCAP, so it goes while we are root.
    // Capabilities past the kernel's last one give EINVAL.
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) && cap > 0 {
                break;
            }
            return Err(last(format!(
                "dropping capability {cap} from the bounding set"
            )));
        }
    }
    // SAFETY: setgroups with a zero length reads no list.
    let rc = unsafe { libc::setgroups(0, std::ptr::null()) };
    check(rc, "setgroups(none)")?;
    // SAFETY: id-only calls.
    let rc = unsafe { libc::setresgid(gid, gid, gid) };
    check(rc, format!("setresgid({gid})"))?;
    // SAFETY: id-only calls.
    let rc = unsafe { libc::setresuid(uid, uid, uid) };
    check(rc, format!("setresuid({uid})"))?;
    let mut hdr = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capset reads a v3 header and two data structs, both valid.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &hdr, data.as_ptr()) };
    check(rc as libc::c_int, "capset(all sets empty)")?;
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    check(rc, "prctl(PR_SET_NO_NEW_PRIVS)")?;
    // Check: capget gives empty sets, the ids stuck, and root is unreachable.
    // SAFETY: capget writes a v3 header and two data structs, both valid.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut hdr, data.as_mut_ptr()) };
    check(rc as libc::c_int, "capget")?;
    let any_cap = data
        .iter()
        .any(|d| d.effective | d.permitted | d.inheritable != 0);
    // SAFETY: id-only calls; the last one must fail.
    let (ru, rg, back) = unsafe { (libc::getuid(), libc::getgid(), libc::setuid(0)) };
    if any_cap || ru != uid || rg != gid || back == 0 {
        return Err(JailError::Child(format!(
            "the privilege drop did not hold (uid {ru}, gid {rg}, capabilities left: {any_cap})"
        )));
    }
    Ok(())
}

/// Execs `path` with `args` (argv\[0\] is `path`) and only `RUST_LOG` and
/// `TERM` from the environment. Returns only on failure.
pub fn exec(path: &str, args: &[String]) -> JailError {
    let c = |s: &str| CString::new(s).map_err(|_| JailError::Args(format!("{s:?} has a NUL")));
    let argv: Result<Vec<CString>, _> = std::iter::once(path)
        .chain(args.iter().map(|a| a.as_str()))
        .map(c)
        .collect();
    let env: Result<Vec<CString>, _> = ["RUST_LOG", "TERM"]
        .iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| format!("{k}={v}")))
        .map(|s| c(&s))
        .collect();
    let (argv, env) = match (argv, env) {
        (Ok(a), Ok(e)) => (a, e),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    let mut argv_p: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut env_p: Vec<*const libc::c_char> = env.iter().map(|a| a.as_ptr()).collect();
    env_p.push(std::ptr::null());
    // SAFETY: NUL-terminated strings in null-terminated arrays, all alive
    // for the call.
    unsafe { libc::execve(argv[0].as_ptr(), argv_p.as_ptr(), env_p.as_ptr()) };
    last(format!("exec {path} in the jail"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rlimit_flags_parse_with_defaults_and_say_what_is_wrong() {
        let mut r = Rlimits::default();
        assert_eq!(r.fsize, None);
        assert_eq!(r.no_file, 2048);
        r.set("fsize=2G,no-file=1024").unwrap();
        assert_eq!((r.fsize, r.no_file), (Some(2 << 30), 1024));
        r.set("fsize=unlimited").unwrap();
        assert_eq!(r.fsize, None);
        r.set("fsize=4096").unwrap();
        assert_eq!(r.fsize, Some(4096));
        let e = |s: &str| Rlimits::default().set(s).unwrap_err().to_string();
        assert_eq!(
            e("fsize"),
            "--rlimit: \"fsize\": give KEY=VALUE (fsize=1G, no-file=1024)"
        );
        assert!(e("fsize=lots").contains("a size like"));
        assert!(e("no-file=8").contains("at least 64"));
        assert!(e("cpu=1").contains("the keys are fsize and no-file"));
    }
}
