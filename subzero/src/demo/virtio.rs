//! The virtio part of `subzero demo`: a tiny guest drives a virtio-rng
//! device through its MMIO registers and queue, and the report shows where
//! its queue notifications went: to the device thread through KVM's
//! ioeventfd, not out to a vCPU thread in userspace.

use std::fmt;
use std::io;

use vm_memory::{ByteValued, Bytes, GuestAddress};

use super::DemoError;
use crate::arch::x86_64::layout::ports;
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::VirtioDeviceCounts;
use crate::vmm::builder::build_tiny;
use crate::vmm::exit::{ExitKind, StopReason};
use crate::vmm::virtio::VirtioDevices;
use crate::vmm::RunReport;

/// The guest program (guests/virtio_rng.S), assembled at build time.
pub const CODE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/virtio_rng.bin"));
/// Where the guest reads its [`VirtioParams`].
pub const PARAMS_START: u64 = 0x5000;
/// Its virtqueue (descriptors, avail ring +0x1000, used ring +0x2000).
pub const RING_START: u64 = 0x20_0000;
/// Its receive buffers.
pub const BUF_START: u64 = 0x30_0000;
/// MMIO register writes the guest makes to set the device up.
pub const SETUP_WRITES: u64 = 18;

/// What the virtio guest does, in the layout virtio_rng.S reads.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct VirtioParams {
    /// The device's MMIO base.
    pub base: u64,
    /// Requests to make, one kick each.
    pub requests: u64,
    /// Bytes per request.
    pub len: u64,
    /// Queue memory.
    pub ring: u64,
    /// Buffer memory.
    pub buf: u64,
    /// Port written to power off.
    pub poweroff_port: u64,
    /// Value written to power off.
    pub poweroff_value: u64,
}

// SAFETY: repr(C) and only u64 fields: no padding, every bit pattern valid.
unsafe impl ByteValued for VirtioParams {}

/// What the virtio guest did, seen from the VMM.
#[derive(Debug)]
pub struct VirtioReport {
    /// Its parameters.
    pub params: VirtioParams,
    /// The run.
    pub run: RunReport,
    /// The rng device's counters.
    pub device: VirtioDeviceCounts,
    /// Distinct byte values in what the guest received.
    pub distinct_bytes: usize,
}

/// Runs the virtio guest: `requests` requests of `len` bytes.
pub fn run_virtio(requests: u64, len: u64) -> Result<VirtioReport, DemoError> {
    let len = len.clamp(1, 4096);
    let requests = requests.min((0x100_0000 - BUF_START) / len);
    let mut params = VirtioParams {
        base: 0,
        requests,
        len,
        ring: RING_START,
        buf: BUF_START,
        poweroff_port: u64::from(ports::ACPI_SLEEP_CONTROL),
        poweroff_value: u64::from((ports::ACPI_S5_SLEEP_TYPE << 2) | 0x20),
    };
    let mut tiny = build_tiny(true, CODE, &[], Box::new(io::sink()))?;
    let mut devices = VirtioDevices::default();
    let slot = devices
        .attach(
            &tiny.vm,
            &tiny.memory,
            &mut tiny.buses,
            Box::new(Rng::default()),
        )?
        .clone();
    params.base = slot.base;
    tiny.memory.write_obj(params, GuestAddress(PARAMS_START))?;
    devices.start()?;
    let memory = tiny.memory.clone();
    let machine = tiny.into_machine_with(devices);
    let run = machine.run()?;
    let mut got = vec![0u8; (requests * len) as usize];
    memory.read_slice(&mut got, GuestAddress(BUF_START))?;
    let mut seen = [false; 256];
    got.iter().for_each(|&b| seen[usize::from(b)] = true);
    Ok(VirtioReport {
        params,
        run,
        device: slot.counts(),
        distinct_bytes: seen.iter().filter(|&&s| s).count(),
    })
}

impl VirtioReport {
    /// Differences from what the guest was asked to do. Empty when all matched.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let exits = self.run.total();
        let n = self.params.requests;
        let kicks = self.device.eventfd_kicks + self.device.mmio_kicks;
        if kicks != n {
            out.push(format!("{kicks} kicks reached the device, expected {n}"));
        }
        if self.device.mmio_kicks != 0 {
            out.push(format!(
                "{} kicks exited to userspace instead of going through the ioeventfd",
                self.device.mmio_kicks
            ));
        }
        let writes = exits.get(ExitKind::MmioWrite);
        if writes != SETUP_WRITES + self.device.mmio_kicks {
            out.push(format!(
                "{writes} MMIO write exits, expected {SETUP_WRITES} (device setup only)"
            ));
        }
        if n > 0 && self.distinct_bytes < 2 {
            out.push("the guest's buffers hold no random bytes".into());
        }
        if self.run.stop.reason != StopReason::PowerOff {
            out.push(format!("stopped with {:?}", self.run.stop.reason));
        }
        out
    }
}

impl fmt::Display for VirtioReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &self.device;
        writeln!(
            f,
            "\nvirtio: a {}-byte guest drove {} at {:#x} ({} requests of {} bytes)",
            CODE.len(),
            d.device,
            d.base,
            self.params.requests,
            self.params.len
        )?;
        writeln!(
            f,
            "  queue kicks:       {} through the ioeventfd, {} as MMIO exits",
            d.eventfd_kicks, d.mmio_kicks
        )?;
        writeln!(
            f,
            "  MMIO write exits:  {} (the {SETUP_WRITES} register writes of device setup)",
            self.run.total().get(ExitKind::MmioWrite)
        )?;
        writeln!(f, "  interrupts:        {} through the irqfd", d.interrupts)?;
        writeln!(
            f,
            "  guest received:    {} bytes with {} distinct values",
            self.params.requests * self.params.len,
            self.distinct_bytes
        )
    }
}
