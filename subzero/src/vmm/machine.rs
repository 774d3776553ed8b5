//! A built VM ready to run: its KVM handles, memory, buses and vCPUs.
//! [`Machine::run`] starts one thread per vCPU and waits for the VM to stop.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::{VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::signal::Killable;

use super::exit::Buses;
use super::vcpu::{self, ExitCounts, StopSignal, VmStop};
use crate::devices::serial::{PanicWatch, SerialDevice};

/// How long to wait for vCPU threads to leave KVM_RUN after the VM stopped.
const JOIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A VM whose vCPUs are configured and not yet running.
pub struct Machine {
    /// The VM. Kept open as long as the vCPUs run.
    pub vm: VmFd,
    /// Guest RAM. Must outlive the vCPUs.
    pub memory: GuestMemoryMmap,
    /// Port-I/O and MMIO buses.
    pub buses: Arc<Buses>,
    /// The vCPUs, BSP first.
    pub vcpus: Vec<VcpuFd>,
    /// The console UART, for feeding input.
    pub serial: Arc<Mutex<SerialDevice>>,
    /// Records a kernel panic seen on the console.
    pub panic_watch: PanicWatch,
}

/// What happened in a run.
#[derive(Debug)]
pub struct RunReport {
    /// Why it stopped.
    pub stop: VmStop,
    /// The panic line, if the guest kernel printed one.
    pub panic: Option<String>,
    /// Exit counts per vCPU (vCPUs that did not finish in time are missing).
    pub per_vcpu: Vec<ExitCounts>,
    /// Wall time from the first KVM_RUN to the stop.
    pub elapsed: Duration,
}

impl RunReport {
    /// Exit counts over all vCPUs.
    pub fn total(&self) -> ExitCounts {
        let mut all = ExitCounts::default();
        for c in &self.per_vcpu {
            all.merge(c);
        }
        all
    }
}

impl Machine {
    /// Runs the VM until a vCPU stops it.
    pub fn run(self) -> std::io::Result<RunReport> {
        vcpu::install_kick_handler();
        let signal = Arc::new(StopSignal::default());
        let start = Instant::now();
        let mut threads = Vec::with_capacity(self.vcpus.len());
        for (index, fd) in self.vcpus.into_iter().enumerate() {
            let buses = self.buses.clone();
            let signal_for_thread = signal.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || vcpu::run(index, fd, buses, signal_for_thread));
            match spawned {
                Ok(handle) => threads.push(handle),
                Err(e) => {
                    stop_all(&signal, threads);
                    return Err(e);
                }
            }
        }
        let stop = signal.wait();
        let elapsed = start.elapsed();
        let per_vcpu = stop_all(&signal, threads);
        Ok(RunReport {
            stop,
            panic: self.panic_watch.message(),
            per_vcpu,
            elapsed,
        })
    }
}

/// Kicks every vCPU thread out of KVM_RUN until it exits, then joins it.
fn stop_all(signal: &StopSignal, threads: Vec<JoinHandle<ExitCounts>>) -> Vec<ExitCounts> {
    if !signal.stopping() {
        signal.stop(VmStop {
            reason: super::exit::StopReason::Unhandled("VMM failed to start a vCPU".into()),
            vcpu: 0,
            rip: None,
        });
    }
    let deadline = Instant::now() + JOIN_TIMEOUT;
    let mut counts = Vec::with_capacity(threads.len());
    for handle in threads {
        // A signal may land just before the thread re-enters KVM_RUN, so
        // repeat it until the thread is gone.
        while !handle.is_finished() && Instant::now() < deadline {
            let _ = handle.kill(vcpu::kick_signal());
            std::thread::sleep(Duration::from_millis(2));
        }
        if handle.is_finished() {
            if let Ok(c) = handle.join() {
                counts.push(c);
            }
        } else {
            log::warn!("a vCPU thread did not stop within {JOIN_TIMEOUT:?}");
        }
    }
    counts
}
