//! Host-KVM: `subzero run` on a terminal puts it in raw-ish mode and puts
//! it back on every way out, SIGQUIT included.

mod common;

use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};

/// A pseudo-terminal: (master, slave path).
fn pty() -> (OwnedFd, std::path::PathBuf) {
    // SAFETY: plain libc calls on a descriptor we own; ptsname's buffer is
    // copied out at once.
    unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
        assert!(m >= 0);
        assert_eq!(libc::grantpt(m), 0);
        assert_eq!(libc::unlockpt(m), 0);
        let name = std::ffi::CStr::from_ptr(libc::ptsname(m));
        let path = std::path::PathBuf::from(name.to_str().unwrap());
        (OwnedFd::from_raw_fd(m), path)
    }
}

fn lflag(fd: &std::fs::File) -> libc::tcflag_t {
    use std::os::fd::AsRawFd;
    // SAFETY: termios is plain data; tcgetattr fills it.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: a valid terminal descriptor and termios.
    assert_eq!(unsafe { libc::tcgetattr(fd.as_raw_fd(), &mut t) }, 0);
    t.c_lflag
}

#[test]
fn sigquit_restores_the_terminal() {
    if !common::kvm_available() {
        return;
    }
    let dir = common::scratch("terminal");
    let kernel = dir.join("counter.elf");
    std::fs::write(&kernel, subzero::demo::COUNTER_ELF).unwrap();
    let (_master, slave_path) = pty();
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&slave_path)
        .unwrap();
    let cooked = lflag(&slave);
    assert_ne!(cooked & libc::ICANON, 0, "a new pty is canonical");
    let mut child = Command::new(env!("CARGO_BIN_EXE_subzero"))
        .args(["run", "--memory", "32M", "--kernel"])
        .arg(&kernel)
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let raw = common::wait_for(10, || lflag(&slave) & libc::ICANON == 0);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGQUIT) };
    let status = child.wait().unwrap();
    assert!(raw, "subzero never set the terminal up");
    assert!(!status.success());
    let after = lflag(&slave);
    assert_eq!(
        after & (libc::ICANON | libc::ECHO),
        cooked & (libc::ICANON | libc::ECHO),
        "the terminal was left in raw mode"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
