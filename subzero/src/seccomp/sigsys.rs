//! The SIGSYS handler: says which thread made which forbidden system call,
//! then ends the process. It runs inside a filtered thread, so it uses only
//! calls every filter allows (write, the terminal's ioctl, exit_group) and
//! allocates nothing.

use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::OnceLock;

use super::{names, ThreadKind};

/// The exit status after a forbidden system call (Firecracker's).
pub const EXIT_BAD_SYSCALL: i32 = 148;

/// What the handler knows of the thread: its name (at most 15 bytes, as
/// Linux keeps them) and its filter.
#[derive(Clone, Copy)]
struct ThreadInfo {
    name: [u8; 16],
    len: usize,
    kind: Option<ThreadKind>,
}

thread_local! {
    static THREAD: Cell<ThreadInfo> = const {
        Cell::new(ThreadInfo { name: [0; 16], len: 0, kind: None })
    };
}

static VIOLATION_HOOK: OnceLock<fn()> = OnceLock::new();

/// Runs `hook` before the process exits on a forbidden call (the terminal's
/// restore). It must be async-signal-safe and use only calls every filter
/// allows.
pub fn on_violation(hook: fn()) {
    let _ = VIOLATION_HOOK.set(hook);
}

/// Remembers the calling thread's name and filter (None while it only has
/// the one it inherited) for the message.
pub(super) fn name_thread(kind: Option<ThreadKind>) {
    let current = std::thread::current();
    let name = current.name().unwrap_or("unnamed").as_bytes();
    let mut info = ThreadInfo {
        name: [0; 16],
        len: name.len().min(15),
        kind,
    };
    info.name[..info.len].copy_from_slice(&name[..info.len]);
    THREAD.with(|t| t.set(info));
}

/// A message buffer on the stack.
struct StackBuf {
    bytes: [u8; 512],
    len: usize,
}

impl std::fmt::Write for StackBuf {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let n = s.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// The message for system call `nr` made on a thread described by `info`.
fn message(out: &mut StackBuf, nr: i64, info: &ThreadInfo) {
    let thread = std::str::from_utf8(&info.name[..info.len]).unwrap_or("?");
    let filter = info.kind.map_or("inherited", ThreadKind::name);
    let call = names::name(nr).unwrap_or("unknown");
    let _ = writeln!(
        out,
        "subzero: seccomp: thread '{thread}' ({filter} filter) made a system call its \
         filter forbids: {call} (#{nr}). Subzero stops here: this is a bug in Subzero, or a \
         guest that took over the thread. To tell which, run again with --no-seccomp, and \
         report the line above."
    );
}

/// The system call number in a SIGSYS siginfo: after si_signo, si_errno,
/// si_code (padded to 16 bytes) comes `_sigsys { void *call_addr; int
/// syscall; unsigned arch; }`.
///
/// # Safety
/// `info` must point to the siginfo the kernel passed with a SIGSYS.
unsafe fn syscall_number(info: *const libc::siginfo_t) -> i64 {
    #[repr(C)]
    struct SigSys {
        signo: i32,
        errno: i32,
        code: i32,
        _pad: i32,
        call_addr: *const libc::c_void,
        syscall: i32,
        arch: u32,
    }
    // SAFETY: the caller guarantees a SIGSYS siginfo, whose layout starts
    // as SigSys does (include/uapi/asm-generic/siginfo.h).
    unsafe { (*info.cast::<SigSys>()).syscall as i64 }
}

extern "C" fn on_sigsys(_sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: SA_SIGINFO handler for SIGSYS: the kernel passes its siginfo.
    let nr = unsafe { syscall_number(info) };
    let mut out = StackBuf {
        bytes: [0; 512],
        len: 0,
    };
    message(&mut out, nr, &THREAD.with(Cell::get));
    // SAFETY: writes our stack buffer to stderr; write is async-signal-safe.
    unsafe { libc::write(libc::STDERR_FILENO, out.bytes.as_ptr().cast(), out.len) };
    if let Some(hook) = VIOLATION_HOOK.get() {
        hook();
    }
    exit_now(EXIT_BAD_SYSCALL);
}

/// Ends the process at once, without unwinding or atexit handlers.
pub(super) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit is async-signal-safe and never returns.
    unsafe { libc::_exit(code) }
}

/// Installs [`on_sigsys`] for SIGSYS.
pub(super) fn install_handler() -> std::io::Result<()> {
    // SAFETY: sigaction is plain data; zeroed is a valid empty value.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = on_sigsys as *const () as libc::sighandler_t;
    act.sa_flags = libc::SA_SIGINFO;
    // SAFETY: the handler is async-signal-safe (see above) and `act` is
    // fully initialized.
    if unsafe { libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_names_the_thread_its_filter_and_the_call() {
        let mut info = ThreadInfo {
            name: [0; 16],
            len: 6,
            kind: Some(ThreadKind::Vcpu),
        };
        info.name[..6].copy_from_slice(b"vcpu 0");
        let mut out = StackBuf {
            bytes: [0; 512],
            len: 0,
        };
        message(&mut out, libc::SYS_socket, &info);
        let text = std::str::from_utf8(&out.bytes[..out.len]).unwrap();
        assert!(
            text.starts_with("subzero: seccomp: thread 'vcpu 0' (vcpu filter)"),
            "{text}"
        );
        assert!(text.contains("forbids: socket (#41)"), "{text}");
        assert!(text.contains("--no-seccomp"), "{text}");
        assert!(text.ends_with('\n'), "the whole message fits: {text}");
    }
}
