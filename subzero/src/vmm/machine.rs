//! A built VM ready to run: its KVM handles, memory, buses and vCPUs.
//! [`Machine::run`] starts one thread per vCPU and waits for the VM to stop.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_ioctls::{VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::signal::Killable;

use super::exit::Buses;
use super::vcpu::{self, SharedStats, StopSignal, VmStop};
use super::virtio::VirtioDevices;
use crate::devices::serial::{PanicWatch, SerialDevice};
use crate::stats::clock::TickClock;
use crate::stats::report::VirtioRow;
use crate::stats::VcpuStats;

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
    /// Virtio devices; their thread runs until the machine is dropped.
    pub virtio: VirtioDevices,
}

/// What happened in a run.
#[derive(Debug)]
pub struct RunReport {
    /// Why it stopped.
    pub stop: VmStop,
    /// The panic line, if the guest kernel printed one.
    pub panic: Option<String>,
    /// Exit accounting per vCPU, in vCPU order.
    pub per_vcpu: Vec<VcpuStats>,
    /// Wall time from the first KVM_RUN to the stop.
    pub elapsed: Duration,
    /// Nanoseconds per TSC tick over the run, to convert the accounting.
    pub ns_per_tick: f64,
    /// Virtio device counters at the stop.
    pub virtio: Vec<VirtioRow>,
}

impl RunReport {
    /// Exit accounting over all vCPUs.
    pub fn total(&self) -> VcpuStats {
        let mut all = VcpuStats::default();
        for c in &self.per_vcpu {
            all.merge(c);
        }
        all
    }
}

impl Machine {
    /// One accounting slot per vCPU, for [`Machine::run_with_stats`]; clone
    /// them first to read the accounting while the VM runs.
    pub fn new_stats(&self) -> Vec<SharedStats> {
        self.vcpus.iter().map(|_| SharedStats::default()).collect()
    }

    /// Runs the VM until a vCPU stops it.
    pub fn run(self) -> std::io::Result<RunReport> {
        let stats = self.new_stats();
        self.run_with_stats(stats)
    }

    /// Runs the VM, accounting vCPU *i*'s exits into `stats[i]`.
    pub fn run_with_stats(self, stats: Vec<SharedStats>) -> std::io::Result<RunReport> {
        vcpu::install_kick_handler();
        let signal = Arc::new(StopSignal::default());
        let start = Instant::now();
        let clock = TickClock::start();
        let mut threads = Vec::with_capacity(self.vcpus.len());
        for ((index, fd), slot) in self.vcpus.into_iter().enumerate().zip(stats.iter()) {
            let buses = self.buses.clone();
            let signal_for_thread = signal.clone();
            let slot = slot.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || vcpu::run(index, fd, buses, signal_for_thread, slot));
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
        let ns_per_tick = clock.ns_per_tick();
        stop_all(&signal, threads);
        let per_vcpu = stats
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .collect();
        Ok(RunReport {
            stop,
            panic: self.panic_watch.message(),
            per_vcpu,
            elapsed,
            ns_per_tick,
            virtio: self.virtio.counts(),
        })
    }
}

/// Kicks every vCPU thread out of KVM_RUN until it exits, then joins it.
fn stop_all(signal: &StopSignal, threads: Vec<JoinHandle<()>>) {
    if !signal.stopping() {
        signal.stop(VmStop {
            reason: super::exit::StopReason::Unhandled("VMM failed to start a vCPU".into()),
            vcpu: 0,
            rip: None,
        });
    }
    let deadline = Instant::now() + JOIN_TIMEOUT;
    for handle in threads {
        // A signal may land just before the thread re-enters KVM_RUN, so
        // repeat it until the thread is gone.
        while !handle.is_finished() && Instant::now() < deadline {
            let _ = handle.kill(vcpu::kick_signal());
            std::thread::sleep(Duration::from_millis(2));
        }
        if handle.is_finished() {
            if handle.join().is_err() {
                log::warn!("a vCPU thread panicked");
            }
        } else {
            log::warn!("a vCPU thread did not stop within {JOIN_TIMEOUT:?}");
        }
    }
}
