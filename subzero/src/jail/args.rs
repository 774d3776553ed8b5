//! Which of the jailed subzero's arguments name host files, and the
//! arguments rewritten to the paths those files have inside the jail.
//!
//! The jail knows the file flags by name (a table here, not the VMM's clap
//! definitions: the jail must not depend on the VMM):
//! - `run`: `--kernel`, `--initrd`, `--symbols` (read), `--disk path=`
//!   (read, and written unless `readonly=on`), `--vsock uds=` and
//!   `--stats-socket` (sockets subzero creates), `--stats-out` (a file
//!   subzero creates); `--net` means `/dev/net/tun` is needed.
//! - the API mode (arguments that start with a flag): `--config-file` (read),
//!   `--api-sock` (a socket), `--log-path` (created). Files named later over
//!   the API or inside the config file are not rewritten: as with
//!   Firecracker's jailer, they must be given as paths inside the jail.
//! - `demo`: no files.
//!
//! Files that are read go to the jail's root as `/<file name>`; sockets and
//! created files go to `/run/<file name>`, the one directory the jailed
//! uid may write. A second file with the same name gets `2-<name>`, and so on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::JailError;

/// What the jailed subzero does with a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Read only (kernel, initrd, symbols, config file, read-only disk).
    Read,
    /// Read and written in place (a disk without `readonly=on`).
    ReadWrite,
    /// Created by subzero: a Unix socket or an output file, under `/run`.
    Created,
}

/// One host file an argument names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailFile {
    /// The flag that names it, for messages.
    pub flag: String,
    /// The path on the host, as given.
    pub host: PathBuf,
    /// Its absolute path inside the jail.
    pub inside: String,
    /// What subzero does with it.
    pub role: Role,
}

/// The arguments to exec inside the jail and the files they need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    /// The subzero arguments with in-jail paths (without argv\[0\]).
    pub args: Vec<String>,
    /// The files, in argument order (one entry per distinct host path).
    pub files: Vec<JailFile>,
    /// Whether the VMM may open `/dev/net/tun`.
    pub needs_tun: bool,
}

/// How a flag's value names a file.
#[derive(Clone, Copy)]
enum Kind {
    /// The whole value is a path.
    Path(Role),
    /// `key=value,...` with the path under `key`.
    Keyed(&'static str, Role),
    /// Not a file, but the flag needs `/dev/net/tun`.
    Tun,
}

const RUN_FLAGS: &[(&str, Kind)] = &[
    ("--kernel", Kind::Path(Role::Read)),
    ("--initrd", Kind::Path(Role::Read)),
    ("--symbols", Kind::Path(Role::Read)),
    ("--disk", Kind::Keyed("path", Role::ReadWrite)),
    ("--vsock", Kind::Keyed("uds", Role::Created)),
    ("--stats-socket", Kind::Path(Role::Created)),
    ("--stats-out", Kind::Path(Role::Created)),
    ("--net", Kind::Tun),
];

const API_FLAGS: &[(&str, Kind)] = &[
    ("--config-file", Kind::Path(Role::Read)),
    ("--api-sock", Kind::Path(Role::Created)),
    ("--log-path", Kind::Path(Role::Created)),
];

/// Rewrites `args` (what follows `--`) for the jail.
pub fn rewrite(args: &[String]) -> Result<Rewritten, JailError> {
    let Some(first) = args.first() else {
        return Err(JailError::Args(
            "give the subzero arguments after `--`, e.g. `-- run --kernel vmlinuz`".into(),
        ));
    };
    let (table, needs_tun) = match first.as_str() {
        "run" => (RUN_FLAGS, false),
        "demo" => (&[][..], false),
        // The API mode: network interfaces may come over the API later.
        f if f.starts_with("--") => (API_FLAGS, true),
        other => {
            return Err(JailError::Args(format!(
                "subzero jail runs `run`, `demo` or the API mode (--api-sock, \
                 --config-file), not `{other}`"
            )))
        }
    };
    let mut out = Rewritten {
        args: Vec::with_capacity(args.len()),
        files: Vec::new(),
        needs_tun,
    };
    let mut names = Names::default();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let Some(&(name, kind)) = table.iter().find(|(n, _)| *n == flag) else {
            out.args.push(arg.clone());
            i += 1;
            continue;
        };
        let value = match inline {
            Some(v) => v,
            None => {
                i += 1;
                args.get(i)
                    .cloned()
                    .ok_or_else(|| JailError::Args(format!("{name} needs a value")))?
            }
        };
        let new = match kind {
            Kind::Tun => {
                out.needs_tun = true;
                value
            }
            Kind::Path(role) => names.place(name, &value, role, &mut out.files),
            Kind::Keyed(key, role) => rewrite_keyed(name, &value, key, role, &mut names, &mut out)?,
        };
        out.args.push(name.to_string());
        out.args.push(new);
        i += 1;
    }
    Ok(out)
}

/// Rewrites the `key=` entry of a `k=v,k=v` value (`--disk`, `--vsock`).
fn rewrite_keyed(
    flag: &str,
    value: &str,
    key: &str,
    role: Role,
    names: &mut Names,
    out: &mut Rewritten,
) -> Result<String, JailError> {
    let readonly = value.split(',').any(|kv| kv == "readonly=on");
    let role = if role == Role::ReadWrite && readonly {
        Role::Read
    } else {
        role
    };
    let mut found = false;
    let parts: Vec<String> = value
        .split(',')
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if k == key => {
                found = true;
                format!("{k}={}", names.place(flag, v, role, &mut out.files))
            }
            _ => kv.to_string(),
        })
        .collect();
    if !found {
        return Err(JailError::Args(format!("{flag} {value}: no {key}= given")));
    }
    Ok(parts.join(","))
}

/// In-jail names handed out so far.
#[derive(Default)]
struct Names {
    /// In-jail path -> host path.
    taken: BTreeMap<String, PathBuf>,
}

impl Names {
    /// The in-jail path for `host`, recording the file.
    fn place(&mut self, flag: &str, host: &str, role: Role, files: &mut Vec<JailFile>) -> String {
        let host = PathBuf::from(host);
        let dir = if role == Role::Created { "/run/" } else { "/" };
        let base = file_name(&host);
        for n in 1.. {
            let inside = if n == 1 {
                format!("{dir}{base}")
            } else {
                format!("{dir}{n}-{base}")
            };
            match self.taken.get(&inside) {
                Some(h) if *h == host => return inside,
                Some(_) => continue,
                None => {
                    self.taken.insert(inside.clone(), host.clone());
                    files.push(JailFile {
                        flag: flag.to_string(),
                        host,
                        inside: inside.clone(),
                        role,
                    });
                    return inside;
                }
            }
        }
        unreachable!("some suffix is free")
    }
}

/// The last component of `path`, or `file` for paths that have none (`/`,
/// `..`).
fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "file".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn run_files_go_to_the_root_and_sockets_to_run() {
        let r = rewrite(&v(
            "run --kernel /boot/vmlinuz --initrd=/x/initrd.img --memory 512M \
             --disk path=/data/root.ext4,id=root --disk path=/other/root.ext4,readonly=on \
             --vsock cid=3,uds=/tmp/vm.vsock --net tap=tap0 --stats --stats-out out.json",
        ))
        .unwrap();
        assert_eq!(
            r.args,
            v("run --kernel /vmlinuz --initrd /initrd.img --memory 512M \
               --disk path=/root.ext4,id=root --disk path=/2-root.ext4,readonly=on \
               --vsock cid=3,uds=/run/vm.vsock --net tap=tap0 --stats --stats-out /run/out.json")
        );
        assert!(r.needs_tun);
        let roles: Vec<(&str, Role)> = r
            .files
            .iter()
            .map(|f| (f.inside.as_str(), f.role))
            .collect();
        assert_eq!(
            roles,
            [
                ("/vmlinuz", Role::Read),
                ("/initrd.img", Role::Read),
                ("/root.ext4", Role::ReadWrite),
                ("/2-root.ext4", Role::Read),
                ("/run/vm.vsock", Role::Created),
                ("/run/out.json", Role::Created),
            ]
        );
        assert_eq!(r.files[1].host, PathBuf::from("/x/initrd.img"));
        assert_eq!(r.files[5].host, PathBuf::from("out.json"));
    }

    #[test]
    fn the_same_host_file_twice_is_one_jail_file() {
        let r = rewrite(&v("run --kernel /a/k --symbols /a/k")).unwrap();
        assert_eq!(r.args, v("run --kernel /k --symbols /k"));
        assert_eq!(r.files.len(), 1);
        assert!(!r.needs_tun);
    }

    #[test]
    fn api_mode_rewrites_its_socket_config_and_log_and_may_need_tun() {
        let r = rewrite(&v(
            "--api-sock /tmp/fc.sock --id vm0 --config-file=/etc/vm.json --log-path /var/log/vm.log",
        ))
        .unwrap();
        assert_eq!(
            r.args,
            v("--api-sock /run/fc.sock --id vm0 --config-file /vm.json --log-path /run/vm.log")
        );
        assert!(r.needs_tun);
        assert_eq!(rewrite(&v("demo")).unwrap().args, v("demo"));
    }

    #[test]
    fn bad_arguments_say_what_to_give() {
        let e = rewrite(&[]).unwrap_err().to_string();
        assert!(e.contains("after `--`"), "{e}");
        let e = rewrite(&v("bench exits")).unwrap_err().to_string();
        assert!(e.contains("not `bench`"), "{e}");
        let e = rewrite(&v("run --kernel")).unwrap_err().to_string();
        assert_eq!(e, "--kernel needs a value");
        let e = rewrite(&v("run --kernel k --disk readonly=on")).unwrap_err();
        assert_eq!(e.to_string(), "--disk readonly=on: no path= given");
    }
}
