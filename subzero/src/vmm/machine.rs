//! A built VM ready to run: its KVM handles, memory, buses and vCPUs.
//! [`Machine::start`] starts one thread per vCPU and gives a [`RunningVm`]
//! that can be paused, resumed, saved and stopped; [`Machine::run`] runs it
//! until the guest stops it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kvm_ioctls::{VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::exit::{Buses, StopReason};
use super::vcpu::{self, SharedStats, StopSignal, VcpuSetup, VmStop};
use super::vcpu_handle::{VcpuError, VcpuHandle, VcpuRunState};
use super::virtio::VirtioDevices;
use crate::arch::x86_64::vcpu_state::VcpuState;
use crate::devices::i8042::I8042;
use crate::devices::serial::{PanicWatch, SerialDevice};
use crate::devices::virtio::VirtioDeviceCounts;
use crate::stats::clock::TickClock;
use crate::stats::VcpuStats;
use crate::trace::Attacher;

/// How long a finished VM waits for its console output to be written.
const CONSOLE_DRAIN: Duration = Duration::from_secs(2);

/// A VM whose vCPUs are configured and not yet running.
pub struct Machine {
    /// The VM. Kept open as long as the vCPUs run.
    pub vm: Arc<VmFd>,
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
    /// The keyboard controller.
    pub i8042: Arc<Mutex<I8042>>,
    /// Virtio devices; their thread runs until the machine is dropped.
    pub virtio: VirtioDevices,
    /// KVM's list of MSRs a snapshot saves.
    pub msr_indices: Arc<Vec<u32>>,
    /// Per vCPU, a saved state to restore before it first runs; empty for
    /// a fresh boot.
    pub restore: Vec<VcpuState>,
    /// When set, each vCPU thread opens KVM's tracepoints for itself
    /// before it first runs (see [`crate::trace`]).
    pub tracer: Option<Attacher>,
    /// The PCI root complex, for its devices' counters (none in tiny VMs).
    pub pci: Option<crate::pci::root::SharedRoot>,
}

/// What happened in a run.
#[derive(Debug)]
pub struct RunReport {
    /// Why it stopped.
    pub stop: VmStop,
    /// The panic line, if the guest kernel printed one.
    pub panic: Option<String>,
    /// Bytes the guest printed on its console.
    pub console_bytes: u64,
    /// Exit accounting per vCPU, in vCPU order.
    pub per_vcpu: Vec<VcpuStats>,
    /// Wall time from the first KVM_RUN to the stop.
    pub elapsed: Duration,
    /// Nanoseconds per TSC tick over the run, to convert the accounting.
    pub ns_per_tick: f64,
    /// Virtio device counters at the stop.
    pub virtio: Vec<VirtioDeviceCounts>,
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

/// A VM whose vCPU threads are started.
pub struct RunningVm {
    /// The VM.
    pub vm: Arc<VmFd>,
    /// Guest RAM.
    pub memory: GuestMemoryMmap,
    /// Port-I/O and MMIO buses.
    pub buses: Arc<Buses>,
    /// The console UART.
    pub serial: Arc<Mutex<SerialDevice>>,
    /// Records a kernel panic seen on the console.
    pub panic_watch: PanicWatch,
    /// The keyboard controller.
    pub i8042: Arc<Mutex<I8042>>,
    /// Virtio devices.
    pub virtio: VirtioDevices,
    /// Exit accounting per vCPU.
    pub stats: Vec<SharedStats>,
    signal: Arc<StopSignal>,
    handles: Vec<VcpuHandle>,
    start: Instant,
    clock: TickClock,
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
        let running = self.start(stats, None, false)?;
        running.signal.wait();
        Ok(running.finish())
    }

    /// Starts a thread per vCPU, accounting vCPU *i*'s exits into
    /// `stats[i]`. `stop_event`, if given, becomes readable when a vCPU
    /// stops the VM. With `paused`, the vCPUs wait for
    /// [`RunningVm::resume`] before they first run.
    pub fn start(
        mut self,
        stats: Vec<SharedStats>,
        stop_event: Option<EventFd>,
        paused: bool,
    ) -> std::io::Result<RunningVm> {
        vcpu::install_kick_handler();
        let signal = Arc::new(match stop_event {
            Some(event) => StopSignal::with_event(event),
            None => StopSignal::default(),
        });
        let restoring = !self.restore.is_empty();
        let mut restore = std::mem::take(&mut self.restore).into_iter();
        let mut running = RunningVm {
            vm: self.vm,
            memory: self.memory,
            buses: self.buses,
            serial: self.serial,
            panic_watch: self.panic_watch,
            i8042: self.i8042,
            virtio: self.virtio,
            stats,
            signal,
            handles: Vec::with_capacity(self.vcpus.len()),
            start: Instant::now(),
            clock: TickClock::start(),
        };
        for (index, fd) in self.vcpus.into_iter().enumerate() {
            let setup = VcpuSetup {
                index,
                fd,
                buses: running.buses.clone(),
                signal: running.signal.clone(),
                stats: running.stats[index].clone(),
                msr_indices: self.msr_indices.clone(),
                restore: restore.next().map(Box::new),
                tracer: self.tracer.clone(),
                // A restored vCPU first puts its state back, then waits.
                start_paused: paused || restoring,
            };
            // On an error, dropping `running` ends the threads started.
            running.handles.push(VcpuHandle::spawn(setup)?);
        }
        if restoring {
            // Each vCPU answers a pause once its state is back; only then
            // may the devices (parked since restore_vm) raise interrupts.
            running.pause().map_err(std::io::Error::other)?;
            if !paused {
                running.resume().map_err(std::io::Error::other)?;
            }
        }
        Ok(running)
    }
}

impl RunningVm {
    /// Why the VM stopped, if a vCPU stopped it.
    pub fn stopped(&self) -> Option<VmStop> {
        self.signal.reason()
    }

    /// Whether every vCPU is paused.
    pub fn is_paused(&self) -> bool {
        self.handles
            .iter()
            .all(|h| h.state() == VcpuRunState::Paused)
    }

    /// Takes every vCPU out of KVM_RUN and parks it, then parks every
    /// device thread, so nothing changes guest memory or device state.
    pub fn pause(&mut self) -> Result<(), VcpuError> {
        self.handles.iter_mut().try_for_each(VcpuHandle::pause)?;
        self.virtio
            .pause()
            .map_err(|why| VcpuError::Failed(0, format!("pausing the devices: {why}")))
    }

    /// Lets the devices serve and every vCPU run again.
    pub fn resume(&mut self) -> Result<(), VcpuError> {
        self.virtio.resume();
        self.handles.iter_mut().try_for_each(VcpuHandle::resume)
    }

    /// The state of every vCPU, which must be paused.
    pub fn save_vcpus(&mut self) -> Result<Vec<VcpuState>, VcpuError> {
        self.handles.iter_mut().map(VcpuHandle::save).collect()
    }

    /// Virtio device counters now.
    pub fn virtio_counts(&self) -> Vec<VirtioDeviceCounts> {
        self.virtio.counts()
    }

    /// Stops every vCPU thread and reports the run.
    pub fn finish(mut self) -> RunReport {
        let elapsed = self.start.elapsed();
        let ns_per_tick = self.clock.ns_per_tick();
        for handle in &mut self.handles {
            handle.exit();
        }
        // What the guest printed reaches the console before the report.
        if !self.panic_watch.drain(CONSOLE_DRAIN) {
            log::warn!("the console did not take the guest's last output within {CONSOLE_DRAIN:?}");
        }
        let stop = self.signal.reason().unwrap_or(VmStop {
            reason: StopReason::Stopped,
            vcpu: 0,
            rip: None,
        });
        let per_vcpu = self
            .stats
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .collect();
        RunReport {
            stop,
            panic: self.panic_watch.message(),
            console_bytes: self.panic_watch.bytes(),
            per_vcpu,
            elapsed,
            ns_per_tick,
            virtio: self.virtio.counts(),
        }
    }
}
