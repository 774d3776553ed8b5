//! Puts the PCI root complex on a VM's buses: ports 0xcf8-0xcff, the ECAM
//! window, and the I/O and memory windows where trapped BARs are decoded.

use std::sync::{Arc, Mutex};

use super::exit::Buses;
use crate::arch::x86_64::layout::{self, ports};
use crate::bus::BusError;
use crate::devices::vfio::host::OpenError;
use crate::devices::vfio::host::PassthroughContext;
use crate::devices::vfio::sysfs::HostDevice;
use crate::pci::root::{lock, Decoder, RootPort, SharedRoot};
use crate::pci::{BarAllocator, PciRoot, PciWindows};

/// A VM's PCI bus.
pub struct PciBus {
    /// The root complex and its devices.
    pub root: SharedRoot,
    /// Free space in its windows, for the BARs of devices still to come.
    pub allocator: BarAllocator,
}

/// The windows of a VM with `mem_size` bytes of RAM.
pub fn windows(mem_size: u64) -> PciWindows {
    let io = u64::from(ports::PCI_IO_START);
    PciWindows {
        io: io..io + u64::from(ports::PCI_IO_SIZE),
        mem32: layout::PCI_MEM32_START..layout::PCI_MEM32_END,
        mem64: layout::pci_mem64_window(mem_size),
        ecam: layout::PCI_ECAM_START..layout::PCI_ECAM_START + layout::PCI_ECAM_SIZE,
    }
}

/// Creates the root complex for a VM of `mem_size` bytes and puts it on `buses`.
pub fn attach(buses: &mut Buses, mem_size: u64) -> Result<PciBus, BusError> {
    let w = windows(mem_size);
    let allocator = BarAllocator::new(w.io.clone(), w.mem32.clone(), w.mem64.clone());
    let root: SharedRoot = Arc::new(Mutex::new(PciRoot::new(w.clone())));
    let port = |d| Arc::new(Mutex::new(RootPort::new(root.clone(), d)));
    let len = |r: &std::ops::Range<u64>| r.end - r.start;
    buses.pio.insert(
        "pci-config",
        u64::from(ports::PCI_CONFIG),
        u64::from(ports::PCI_CONFIG_LEN),
        port(Decoder::ConfigPorts),
    )?;
    buses.pio.insert(
        "pci-io",
        w.io.start,
        len(&w.io),
        port(Decoder::Bars {
            base: w.io.start,
            io: true,
        }),
    )?;
    buses
        .mmio
        .insert("pci-ecam", w.ecam.start, len(&w.ecam), port(Decoder::Ecam))?;
    for (name, r) in [("pci-mem32", &w.mem32), ("pci-mem64", &w.mem64)] {
        buses.mmio.insert(
            name,
            r.start,
            len(r),
            port(Decoder::Bars {
                base: r.start,
                io: false,
            }),
        )?;
    }
    Ok(PciBus { root, allocator })
}

/// Opens each `--device`, already checked on the host, and puts it on the bus.
pub fn passthrough(
    vm: &Arc<kvm_ioctls::VmFd>,
    mem: &vm_memory::GuestMemoryMmap,
    bus: &mut PciBus,
    hosts: &[HostDevice],
) -> Result<(), super::BuildError> {
    let Some(first) = hosts.first() else {
        return Ok(());
    };
    let routes = Arc::new(Mutex::new(crate::kvm::irq_routes::GsiRoutes::new(
        vm.clone(),
    )));
    let ctx = PassthroughContext::new(vm.clone(), routes, &first.bdf)?;
    for host in hosts {
        let device = ctx.open(host, mem, &mut bus.allocator)?;
        let name = format!("vfio-{}", device.bdf());
        let slot = lock(&bus.root)
            .add(&name, Box::new(device))
            .map_err(|source| OpenError::BusFull {
                bdf: host.bdf.clone(),
                source,
            })?;
        log::info!("--device {}: passed through as 00:{slot:02x}.0", host.bdf);
    }
    Ok(())
}

/// The report rows of the passthrough devices on `root`.
pub fn passthrough_rows(root: &SharedRoot) -> Vec<crate::stats::passthrough::PassthroughRow> {
    lock(root)
        .counters()
        .into_iter()
        .map(
            |(device, slot, c)| crate::stats::passthrough::PassthroughRow {
                device,
                slot,
                config_accesses: c.config_accesses,
                bar_reads: c.bar_reads,
                bar_writes: c.bar_writes,
                refused_placements: c.refused_placements,
                host_interrupts: c.interrupts,
            },
        )
        .collect()
}
