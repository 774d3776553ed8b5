//! `subzero demo`: runs the embedded exerciser guest and reports what the
//! VMM saw, exit by exit. Needs only /dev/kvm.

pub mod guest;
pub mod virtio;

use std::fmt;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use crate::devices::probe::ProbeCounts;
use crate::vmm::exit::{ExitKind, StopReason};
use crate::vmm::{BuildError, RunReport};
use guest::{Params, PROBE_MMIO, PROBE_PORT, PROBE_VALUE};

/// The counter guest (guests/counter.S) as an ELF that Subzero boots like
/// a vmlinux: it prints `count 1`, `count 2`, ... on COM1 forever.
pub const COUNTER_ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/counter.elf"));

/// The greeting the demo guest prints.
pub const GREETING: &str = "Hello from the Subzero demo guest!\n";

/// The demo's parameters: a few of each exit kind.
pub fn demo_params() -> Params {
    Params {
        pio_reads: 8,
        pio_writes: 8,
        mmio_reads: 8,
        mmio_writes: 8,
        halts: 3,
        ..Params::new()
    }
}

/// Why the demo could not run.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Building the VM failed.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// Starting the vCPU thread failed.
    #[error("cannot start the vCPU thread: {0}")]
    Thread(#[from] io::Error),
    /// Writing the guest's parameters or reading its buffers failed.
    #[error("demo guest memory: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
    /// Placing the virtio device failed.
    #[error(transparent)]
    Virtio(#[from] crate::vmm::virtio::VirtioSetupError),
}

/// Collects guest output, optionally echoing it to stdout.
#[derive(Clone)]
struct Capture {
    buf: Arc<Mutex<Vec<u8>>>,
    echo: bool,
}

impl Write for Capture {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(data);
        if self.echo {
            let mut out = io::stdout().lock();
            out.write_all(data)?;
            out.flush()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What the exerciser did, seen from the VMM.
#[derive(Debug)]
pub struct ExerciserReport {
    /// The parameters it ran with.
    pub params: Params,
    /// Everything it printed on the serial port.
    pub console: String,
    /// The run: stop reason and exit counts.
    pub run: RunReport,
    /// Port-I/O probe counters.
    pub pio: ProbeCounts,
    /// MMIO probe counters.
    pub mmio: ProbeCounts,
}

/// Runs the exerciser with `params`, printing `message`, and reports.
pub fn run_exerciser(
    params: &Params,
    message: &str,
    echo: bool,
) -> Result<ExerciserReport, DemoError> {
    let capture = Capture {
        buf: Arc::default(),
        echo,
    };
    let vm = guest::build(params, message, Box::new(capture.clone()))?;
    let run = vm.machine.run()?;
    let pio = vm
        .pio_probe
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .counts();
    let mmio = vm
        .mmio_probe
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .counts();
    let console = String::from_utf8_lossy(&capture.buf.lock().unwrap_or_else(|p| p.into_inner()))
        .into_owned();
    Ok(ExerciserReport {
        params: *params,
        console,
        run,
        pio,
        mmio,
    })
}

/// Runs `subzero demo`.
pub fn run(echo: bool) -> Result<ExerciserReport, DemoError> {
    run_exerciser(&demo_params(), GREETING, echo)
}

impl ExerciserReport {
    /// Differences between what the guest was asked to do and what the VMM
    /// saw. Empty when everything matched.
    pub fn problems(&self) -> Vec<String> {
        let p = &self.params;
        let exits = self.run.total();
        let mut out = Vec::new();
        let mut expect = |what: &str, seen: u64, want: u64| {
            if seen != want {
                out.push(format!("{what}: saw {seen}, expected {want}"));
            }
        };
        let message_len = self.console.len() as u64;
        expect(
            "port writes",
            exits.get(ExitKind::IoOut),
            message_len + p.pio_writes + 1,
        );
        expect("port reads", exits.get(ExitKind::IoIn), p.pio_reads);
        expect("MMIO reads", exits.get(ExitKind::MmioRead), p.mmio_reads);
        expect("MMIO writes", exits.get(ExitKind::MmioWrite), p.mmio_writes);
        expect("HLT exits", exits.get(ExitKind::Hlt), p.halts);
        expect("probe port reads", self.pio.reads, p.pio_reads);
        expect("probe port writes", self.pio.writes, p.pio_writes);
        expect("probe MMIO reads", self.mmio.reads, p.mmio_reads);
        expect("probe MMIO writes", self.mmio.writes, p.mmio_writes);
        if p.pio_reads > 0 && p.pio_writes > 0 {
            expect(
                "port value echoed",
                self.pio.last_written,
                u64::from(PROBE_VALUE),
            );
        }
        if p.mmio_reads > 0 && p.mmio_writes > 0 {
            expect(
                "MMIO value echoed",
                self.mmio.last_written,
                u64::from(PROBE_VALUE),
            );
        }
        if self.run.stop.reason != StopReason::PowerOff {
            out.push(format!(
                "stopped with {:?}, expected a power-off",
                self.run.stop.reason
            ));
        }
        out
    }
}

impl fmt::Display for ExerciserReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let exits = self.run.total();
        writeln!(
            f,
            "\nsubzero demo: a {}-byte guest ran for {:.2} ms on /dev/kvm",
            guest::CODE.len(),
            self.run.elapsed.as_secs_f64() * 1e3
        )?;
        let probe = |c: &ProbeCounts| {
            format!(
                "{} reads, {} writes, last value written {:#x}",
                c.reads, c.writes, c.last_written
            )
        };
        let rows = [
            (
                "guest printed:".to_string(),
                format!("{:?}", self.console.trim_end()),
            ),
            (format!("port {PROBE_PORT:#x}:"), probe(&self.pio)),
            (format!("MMIO {PROBE_MMIO:#x}:"), probe(&self.mmio)),
            ("stop:".to_string(), describe_stop(&self.run.stop.reason)),
        ];
        for (label, value) in rows {
            writeln!(f, "  {label:<17} {value}")?;
        }
        writeln!(f, "\n  {:<16} {:>8}", "exit reason", "count")?;
        for kind in ExitKind::ALL {
            let n = exits.get(kind);
            if n > 0 {
                writeln!(f, "  {:<16} {:>8}", kind.name(), n)?;
            }
        }
        writeln!(f, "  {:<16} {:>8}", "total", exits.total())
    }
}

/// One line for a stop reason.
pub fn describe_stop(reason: &StopReason) -> String {
    match reason {
        StopReason::PowerOff => "guest powered off".into(),
        StopReason::Reset(how) => format!("guest reset ({how})"),
        StopReason::Crash => "guest reported a crash".into(),
        StopReason::Unhandled(what) => format!("unhandled exit: {what}"),
        StopReason::Stopped => "stopped by the VMM".into(),
    }
}
