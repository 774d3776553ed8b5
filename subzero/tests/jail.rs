//! `subzero jail` from the outside: its errors say what to do, a jail that
//! fails is not left behind, and, where this runs as root with a static
//! subzero at hand (the lab's build), `-- demo` runs in a real jail.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn subzero(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_subzero"))
        .args(args)
        .output()
        .expect("run subzero")
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_missing_chroot_base_or_no_root_is_explained() {
    let out = subzero(&[
        "jail",
        "--uid",
        "1000",
        "--gid",
        "1000",
        "--chroot-base",
        "/no/such/base",
        "--",
        "demo",
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let want = if is_root() {
        "--chroot-base /no/such/base: does not exist: create it (mkdir -p /no/such/base)"
    } else {
        "subzero jail must run as root"
    };
    assert!(err.contains(want), "stderr lacks {want:?}: {err}");
}

#[test]
fn a_dynamic_binary_is_refused_and_leaves_no_jail() {
    if !is_root() {
        eprintln!("skipping: not root");
        return;
    }
    let base = common::scratch("jail-dynamic");
    let base_s = base.to_str().unwrap();
    let out = subzero(&[
        "jail",
        "--id",
        "dyn",
        "--uid",
        "1000",
        "--gid",
        "1000",
        "--chroot-base",
        base_s,
        "--",
        "demo",
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("is dynamically linked"), "{err}");
    assert!(
        !base.join("subzero/dyn").exists(),
        "a failed jail was left behind"
    );
}

/// A static subzero: `SUBZERO_LAB_BIN`, or the lab's build if it exists.
fn static_subzero() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SUBZERO_LAB_BIN") {
        return Some(p.into());
    }
    let lab = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/lab/x86_64-unknown-linux-gnu/release/subzero");
    lab.is_file().then_some(lab)
}

#[test]
fn demo_runs_in_a_real_jail_when_root() {
    let Some(exe) = static_subzero().filter(|_| is_root()) else {
        eprintln!("skipping: needs root and a static subzero (the lab's build or SUBZERO_LAB_BIN)");
        return;
    };
    if !Path::new("/dev/kvm").exists() {
        eprintln!("skipping: no /dev/kvm");
        return;
    }
    let base = common::scratch("jail-demo");
    let _ = std::fs::remove_dir_all(base.join("subzero"));
    let out = subzero(&[
        "jail",
        "--id",
        "demo",
        "--uid",
        "1000",
        "--gid",
        "1000",
        "--chroot-base",
        base.to_str().unwrap(),
        "--exec-file",
        exe.to_str().unwrap(),
        "--",
        "demo",
    ]);
    let err = stderr(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {err}"
    );
    assert!(
        stdout.contains("Hello from the Subzero demo guest!"),
        "{stdout}"
    );
    let mut root: Vec<String> = std::fs::read_dir(base.join("subzero/demo/root"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    root.sort();
    assert_eq!(
        root,
        ["dev", "run", "subzero"],
        "the jail holds only its own files"
    );
}
