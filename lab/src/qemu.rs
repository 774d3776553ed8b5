//! Runs L1 under QEMU and reads its serial console live, line by line,
//! timestamping each line when it arrives.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::parse::Line;

/// What came out of one QEMU run.
#[derive(Debug)]
pub struct QemuRun {
    /// Console lines, timestamped on arrival (relative to the spawn).
    pub lines: Vec<Line>,
    /// QEMU's stderr.
    pub stderr: String,
    /// Spawn to exit (or kill).
    pub wall: Duration,
    /// QEMU's exit status (None if it could not be collected).
    pub status: Option<ExitStatus>,
    /// Whether the harness killed QEMU at the overall timeout.
    pub timed_out: bool,
    /// Whether the harness killed QEMU because its console fell silent.
    pub stalled: bool,
}

/// Spawns `cmd` (stdin null, stdout and stderr piped), reads stdout until EOF
/// or `timeout`, writing every line to `log` as it arrives and passing it to
/// `on_line`. Once `done_marker` has been seen QEMU gets `grace` to exit on
/// its own before it is killed. If no line arrives for `stall`, QEMU is
/// killed and the run marked stalled.
#[allow(clippy::too_many_arguments)]
pub fn run(
    mut cmd: Command,
    timeout: Duration,
    stall: Duration,
    log: &Path,
    done_marker: &str,
    grace: Duration,
    on_line: &mut dyn FnMut(&Line),
) -> std::io::Result<QemuRun> {
    let mut logf = File::create(log)?;
    writeln!(logf, "# {cmd:?}")?;
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();

    let (tx, rx) = mpsc::channel::<Line>();
    let reader = thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let at = start.elapsed();
                    let text: String = String::from_utf8_lossy(&buf)
                        .chars()
                        .filter(|&c| c != '\r' && c != '\n')
                        .collect();
                    if tx.send(Line { at, text }).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let err_reader = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = stderr.read_to_end(&mut s);
        String::from_utf8_lossy(&s).into_owned()
    });

    let mut lines = Vec::new();
    let mut deadline = start + timeout;
    let mut timed_out = false;
    let mut stalled = false;
    let mut done_seen = false;
    let mut last_line = Instant::now();
    loop {
        let now = Instant::now();
        if now >= deadline {
            if !done_seen {
                timed_out = true;
            }
            let _ = child.kill();
            break;
        }
        if now >= last_line + stall {
            stalled = true;
            let _ = child.kill();
            break;
        }
        let wait = (deadline - now).min(last_line + stall - now);
        match rx.recv_timeout(wait) {
            Ok(line) => {
                last_line = Instant::now();
                let _ = writeln!(logf, "[{:9.3}] {}", line.at.as_secs_f64(), line.text);
                on_line(&line);
                if !done_seen && line.text.contains(done_marker) {
                    done_seen = true;
                    deadline = deadline.min(Instant::now() + grace);
                }
                lines.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let status = child.wait().ok();
    let wall = start.elapsed();
    // After a kill the pipes close, so the readers finish.
    let _ = reader.join();
    // Lines that raced with the kill.
    for line in rx.try_iter() {
        let _ = writeln!(logf, "[{:9.3}] {}", line.at.as_secs_f64(), line.text);
        lines.push(line);
    }
    let stderr = err_reader.join().unwrap_or_default();
    let _ = writeln!(
        logf,
        "# qemu exit: {status:?} after {:.3}s{}",
        wall.as_secs_f64(),
        if timed_out {
            " (killed at the overall timeout)"
        } else if stalled {
            " (killed: console silent too long)"
        } else {
            ""
        }
    );
    if !stderr.is_empty() {
        let _ = writeln!(logf, "# qemu stderr:\n{stderr}");
    }
    Ok(QemuRun {
        lines,
        stderr,
        wall,
        status,
        timed_out,
        stalled,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `script` as the "QEMU" with a 500 ms stall limit and "DONE" as
    /// the done marker.
    fn run_sh(name: &str, script: &str) -> QemuRun {
        let log = std::env::temp_dir().join(format!("lab-{name}-{}.log", std::process::id()));
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]);
        let q = run(
            cmd,
            Duration::from_secs(20),
            Duration::from_millis(500),
            &log,
            "DONE",
            Duration::from_secs(1),
            &mut |_| {},
        )
        .unwrap();
        let _ = std::fs::remove_file(&log);
        q
    }

    #[test]
    fn a_silent_console_is_a_stall() {
        let q = run_sh("stall", "echo first; exec sleep 30");
        assert!(q.stalled && !q.timed_out);
        assert!(
            q.wall < Duration::from_secs(10),
            "killed promptly: {:?}",
            q.wall
        );
        let texts: Vec<&str> = q.lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(texts, ["first"]);
    }

    #[test]
    fn a_chatty_console_is_not_a_stall() {
        let q = run_sh(
            "chatty",
            "for i in 1 2 3 4 5 6; do echo $i; sleep 0.2; done; echo DONE",
        );
        assert!(!q.stalled && !q.timed_out);
        assert_eq!(q.lines.last().map(|l| l.text.as_str()), Some("DONE"));
    }
}
