//! The host side of the serial console: stdin into the guest's UART, and the
//! terminal put in non-canonical mode (and restored) while the VM runs.

use std::io::Read;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::devices::serial::SerialDevice;

/// Starts a thread that feeds stdin into the UART's receive FIFO, waiting
/// while the FIFO is full. The thread ends at end of input.
pub fn forward_stdin(serial: Arc<Mutex<SerialDevice>>) {
    let spawned = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            crate::seccomp::enter_or_exit(crate::seccomp::ThreadKind::Console);
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0u8; 256];
            loop {
                let n = match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let mut rest = &buf[..n];
                while !rest.is_empty() {
                    let taken = serial
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .enqueue_input(rest);
                    rest = &rest[taken..];
                    if taken == 0 {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot start the stdin thread; guest input disabled: {e}");
    }
}

static SAVED: OnceLock<libc::termios> = OnceLock::new();

/// Puts a terminal on stdin into non-canonical, no-echo mode so keystrokes
/// reach the guest at once. Ctrl-C still stops Subzero. The mode is restored
/// by [`restore_terminal`], on SIGINT, SIGTERM, SIGHUP and SIGQUIT, and
/// before a panic's message (a release build then aborts).
pub fn setup_terminal() {
    // SAFETY: isatty only inspects the descriptor.
    if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
        return;
    }
    // SAFETY: termios is plain data; tcgetattr fills it.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and pointer to a termios struct.
    if unsafe { libc::tcgetattr(libc::STDIN_FILENO, &mut t) } != 0 {
        return;
    }
    if SAVED.set(t).is_err() {
        return;
    }
    extern "C" fn on_signal(sig: libc::c_int) {
        restore_terminal();
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(128 + sig) };
    }
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
        // SAFETY: installs an async-signal-safe handler (tcsetattr, _exit).
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    // A panic aborts in release builds: put the terminal back first.
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_terminal();
        previous(info);
    }));
    t.c_lflag &= !(libc::ICANON | libc::ECHO);
    t.c_cc[libc::VMIN] = 1;
    t.c_cc[libc::VTIME] = 0;
    // SAFETY: valid fd and termios.
    unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) };
}

/// Restores the terminal mode saved by [`setup_terminal`], if any.
pub fn restore_terminal() {
    if let Some(t) = SAVED.get() {
        // SAFETY: valid fd and a termios saved from it.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, t) };
    }
}
