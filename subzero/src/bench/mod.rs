//! `subzero bench exits`: what one VM exit costs, per kind, against a floor.
//!
//! Each case runs the exerciser guest so that it makes N exits of one kind,
//! three ways, in the same process and interleaved:
//! - **raw**: a bare kvm-ioctls loop, no buses, no accounting: the floor;
//! - **dispatch**: Subzero's exit dispatcher and buses, no accounting;
//! - **subzero**: the real vCPU thread, with full exit accounting.
//!
//! The mean round trip is the run's wall time over N. The median of several
//! rounds is reported.

pub mod api;
pub mod halt_wake;

use std::time::{Duration, Instant};

use kvm_ioctls::{IoEventAddress, NoDatamatch, VcpuExit, VcpuFd};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::layout::ports;
use crate::demo::guest::{self, Params};
use crate::vmm::exit::{dispatch, Buses, Outcome};
use crate::vmm::BuildError;

/// A port with an ioeventfd: guest writes there complete inside KVM.
pub const IOEVENTFD_PORT: u16 = 0x520;

/// One exit kind to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// OUT to a port Subzero handles in userspace.
    PioWrite,
    /// Store to an MMIO address Subzero handles in userspace.
    MmioWrite,
    /// OUT to a port backed by an ioeventfd: no exit to userspace.
    IoeventfdWrite,
    /// HLT with no in-kernel irqchip: each one exits to userspace.
    Hlt,
    /// HLT in the kernel (in-kernel LAPIC), woken by an MSI that a host
    /// thread sends through an irqfd when the guest notifies an ioeventfd.
    HltWake,
}

impl Case {
    /// All cases, in report order.
    pub const ALL: [Case; 5] = [
        Case::PioWrite,
        Case::MmioWrite,
        Case::IoeventfdWrite,
        Case::Hlt,
        Case::HltWake,
    ];

    /// Name for the table.
    pub fn name(self) -> &'static str {
        match self {
            Case::PioWrite => "pio-write (userspace)",
            Case::MmioWrite => "mmio-write (userspace)",
            Case::IoeventfdWrite => "pio-write (ioeventfd, in kernel)",
            Case::Hlt => "hlt (userspace, no irqchip)",
            Case::HltWake => "hlt + irqfd wake (in kernel)",
        }
    }

    fn params(self, n: u64) -> Params {
        let base = Params::new();
        match self {
            Case::PioWrite => Params {
                pio_writes: n,
                ..base
            },
            Case::MmioWrite => Params {
                mmio_writes: n,
                ..base
            },
            Case::IoeventfdWrite => Params {
                pio_port: u64::from(IOEVENTFD_PORT),
                pio_writes: n,
                ..base
            },
            Case::Hlt | Case::HltWake => Params { halts: n, ..base },
        }
    }
}

/// How a case was driven.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// Bare kvm-ioctls loop.
    Raw,
    /// Subzero's dispatcher, no accounting.
    Dispatch,
    /// Subzero's vCPU thread with accounting.
    Subzero,
    /// [`Driver::Subzero`] under Subzero's seccomp filters, as `subzero
    /// run` has them: the VM is built and run from a thread under the main
    /// thread's filter, and its vCPU thread adds the vCPU filter.
    Seccomp,
    /// [`Driver::Subzero`] with KVM's tracepoints read for the hardware
    /// exit reasons, as `run --stats` does.
    Traced,
}

/// Median round trips of one case, nanoseconds per exit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CaseResult {
    /// The case.
    pub case: Case,
    /// Raw loop.
    pub raw_ns: f64,
    /// Dispatcher without accounting.
    pub dispatch_ns: f64,
    /// Full Subzero.
    pub subzero_ns: f64,
    /// Full Subzero under its seccomp filters.
    pub seccomp_ns: f64,
    /// Full Subzero with hardware exit tracing; NaN where tracing is not
    /// available.
    pub traced_ns: f64,
}

impl CaseResult {
    /// What accounting adds, as a fraction of Subzero's round trip.
    pub fn accounting_share(&self) -> f64 {
        (self.subzero_ns - self.dispatch_ns) / self.subzero_ns
    }
}

/// Why a benchmark run failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The VM could not be built.
    #[error(transparent)]
    Build(#[from] BuildError),
    /// A KVM call failed.
    #[error("{0}: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
    /// The guest stopped in an unexpected way.
    #[error("the benchmark guest stopped unexpectedly: {0}")]
    Guest(String),
    /// A thread or eventfd could not be created.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The traced driver was asked for where tracing is not available.
    #[error("hardware exit tracing is not available here")]
    Untraced,
}

/// Runs the guest to its power-off write with a bare loop.
fn raw_loop(fd: &mut VcpuFd) -> Result<(), BenchError> {
    let poweroff = ports::ACPI_SLEEP_CONTROL;
    loop {
        match fd.run() {
            Ok(VcpuExit::IoOut(port, _)) if port == poweroff => return Ok(()),
            Ok(VcpuExit::IoOut(..) | VcpuExit::MmioWrite(..) | VcpuExit::Hlt) => {}
            Ok(VcpuExit::IoIn(_, data) | VcpuExit::MmioRead(_, data)) => data.fill(0),
            Ok(other) => return Err(BenchError::Guest(format!("{other:?}"))),
            Err(e) => return Err(BenchError::Kvm("KVM_RUN", e)),
        }
    }
}

/// Runs the guest with Subzero's dispatcher but no accounting.
fn dispatch_loop(fd: &mut VcpuFd, buses: &Buses) -> Result<(), BenchError> {
    loop {
        let exit = fd.run().map_err(|e| BenchError::Kvm("KVM_RUN", e))?;
        if let Outcome::Stop(reason) = dispatch(exit, buses).outcome {
            return match reason {
                crate::vmm::exit::StopReason::PowerOff => Ok(()),
                other => Err(BenchError::Guest(format!("{other:?}"))),
            };
        }
    }
}

/// Times one run of `machine` with a driver. `n` exits.
fn drive(machine: crate::vmm::Machine, driver: Driver) -> Result<Duration, BenchError> {
    Ok(match driver {
        Driver::Subzero | Driver::Seccomp | Driver::Traced => {
            let mut machine = machine;
            let mut hw = (driver == Driver::Traced)
                .then(|| crate::vmm::hw_trace::HwTrace::start(&mut machine, true));
            if hw.as_ref().is_some_and(|h| !h.traced()) {
                return Err(BenchError::Untraced);
            }
            let report = machine.run()?;
            if let Some(hw) = hw.as_mut() {
                hw.finish();
            }
            if report.stop.reason != crate::vmm::exit::StopReason::PowerOff {
                return Err(BenchError::Guest(format!("{:?}", report.stop.reason)));
            }
            report.elapsed
        }
        Driver::Raw | Driver::Dispatch => {
            let mut machine = machine;
            let mut fd = machine.vcpus.remove(0);
            let start = Instant::now();
            if driver == Driver::Raw {
                raw_loop(&mut fd)?;
            } else {
                dispatch_loop(&mut fd, &machine.buses)?;
            }
            start.elapsed()
        }
    })
}

/// Times one run of `case` with `n` exits, in nanoseconds per exit.
pub fn run_once(case: Case, driver: Driver, n: u64) -> Result<f64, BenchError> {
    if driver == Driver::Seccomp {
        return filtered(case, n);
    }
    if case == Case::HltWake {
        let vm = halt_wake::build(n)?;
        let elapsed = drive(vm.machine, driver)?;
        let woken = vm.waker.finish();
        if woken != n {
            return Err(BenchError::Guest(format!("{woken} wakeups for {n} halts")));
        }
        return Ok(elapsed.as_nanos() as f64 / n.max(1) as f64);
    }
    let params = case.params(n);
    let vm = guest::build(&params, "", Box::new(std::io::sink()))?;
    // Keep the eventfd alive for the whole run.
    let _evt = if case == Case::IoeventfdWrite {
        let evt = EventFd::new(0)?;
        vm.machine
            .vm
            .register_ioevent(
                &evt,
                &IoEventAddress::Pio(u64::from(IOEVENTFD_PORT)),
                NoDatamatch,
            )
            .map_err(|e| BenchError::Kvm("KVM_IOEVENTFD", e))?;
        Some(evt)
    } else {
        None
    };
    let elapsed = drive(vm.machine, driver)?;
    Ok(elapsed.as_nanos() as f64 / n.max(1) as f64)
}

/// [`Driver::Seccomp`]: a [`Driver::Subzero`] run on a thread under the
/// main thread's filter. Filters last as long as their thread, so the
/// other drivers' runs stay unfiltered.
fn filtered(case: Case, n: u64) -> Result<f64, BenchError> {
    use crate::seccomp::{self, ThreadKind};
    seccomp::install().map_err(|e| BenchError::Guest(e.to_string()))?;
    seccomp::set_active(true);
    let result = std::thread::Builder::new()
        .name("bench-seccomp".into())
        .spawn(move || {
            seccomp::enter(ThreadKind::Vmm).map_err(|e| BenchError::Guest(e.to_string()))?;
            run_once(case, Driver::Subzero, n)
        })
        .map_err(BenchError::from)
        .and_then(|t| {
            t.join()
                .unwrap_or_else(|_| Err(BenchError::Guest("panicked".into())))
        });
    seccomp::set_active(false);
    result
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Measures `cases`: `rounds` interleaved rounds of `n` exits per driver.
/// `on_result` sees each case's result as soon as it is measured.
pub fn run(
    cases: &[Case],
    n: u64,
    rounds: usize,
    on_result: &mut dyn FnMut(&CaseResult),
) -> Result<Vec<CaseResult>, BenchError> {
    let mut out = Vec::new();
    for &case in cases {
        let (mut raw, mut disp, mut full, mut sec) = (vec![], vec![], vec![], vec![]);
        let mut traced = vec![];
        for _ in 0..rounds.max(1) {
            raw.push(run_once(case, Driver::Raw, n)?);
            disp.push(run_once(case, Driver::Dispatch, n)?);
            full.push(run_once(case, Driver::Subzero, n)?);
            sec.push(run_once(case, Driver::Seccomp, n)?);
            match run_once(case, Driver::Traced, n) {
                Ok(ns) => traced.push(ns),
                Err(BenchError::Untraced) => traced.push(f64::NAN),
                Err(e) => return Err(e),
            }
        }
        let result = CaseResult {
            case,
            raw_ns: median(raw),
            dispatch_ns: median(disp),
            subzero_ns: median(full),
            seccomp_ns: median(sec),
            traced_ns: median(traced),
        };
        on_result(&result);
        out.push(result);
    }
    Ok(out)
}

/// The host CPU's clock in MHz, from /proc/cpuinfo, to convert to cycles.
pub fn cpu_mhz() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    text.lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()
}

/// The table's title and column header.
pub fn header(n: u64, rounds: usize) -> String {
    let mhz = cpu_mhz();
    let mut o = format!(
        "subzero bench exits: {n} exits per run, median of {rounds} rounds{}\n\n",
        mhz.map(|m| format!(", cycles at {m:.0} MHz"))
            .unwrap_or_default()
    );
    o.push_str(&format!(
        "{:<34} {:>9} {:>8} {:>11} {:>9} {:>8} {:>8} {:>11} {:>10} {:>10}\n",
        "exit kind",
        "raw ns",
        "cycles",
        "dispatch ns",
        "subzero ns",
        "cycles",
        "ratio",
        "accounting",
        "seccomp ns",
        "traced ns"
    ));
    o
}

/// One case's row.
pub fn row(r: &CaseResult) -> String {
    let mhz = cpu_mhz();
    let cycles = |ns: f64| {
        mhz.map(|m| format!("{:>8.0}", ns * m / 1e3))
            .unwrap_or_else(|| "       ?".into())
    };
    let accounting = if matches!(r.case, Case::IoeventfdWrite | Case::HltWake) {
        "n/a".to_string()
    } else {
        format!("{:.1}%", r.accounting_share() * 100.0)
    };
    format!(
        "{:<34} {:>9.0} {} {:>11.0} {:>9.0} {} {:>7.2}x {:>11} {:>10.0} {:>10}\n",
        r.case.name(),
        r.raw_ns,
        cycles(r.raw_ns),
        r.dispatch_ns,
        r.subzero_ns,
        cycles(r.subzero_ns),
        r.subzero_ns / r.raw_ns,
        accounting,
        r.seccomp_ns,
        if r.traced_ns.is_nan() {
            "n/a".to_string()
        } else {
            format!("{:.0}", r.traced_ns)
        }
    )
}

/// What the columns mean, and the time taken.
pub fn footer(took: Duration) -> String {
    format!(
        "\nratio = subzero / raw (what Subzero's dispatch and accounting add to the floor);\n\
         accounting = (subzero - dispatch) / subzero, for cases whose exits reach userspace;\n\
         seccomp = subzero under its seccomp filters (main thread's and vCPU's, as `run`);\n\
         traced = subzero reading KVM's tracepoints for the hardware exit reasons, as\n\
         `run --stats` does (n/a where they cannot be read).\n\
         Seed figure: a hardware exit round trip costs roughly 500-1500 cycles on modern\n\
         CPUs. Took {:.1} s.\n",
        took.as_secs_f64()
    )
}

/// The results as a table.
pub fn table(results: &[CaseResult], n: u64, rounds: usize, took: Duration) -> String {
    let mut o = header(n, rounds);
    for r in results {
        o.push_str(&row(r));
    }
    o.push_str(&footer(took));
    o
}
