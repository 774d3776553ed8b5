//! The root complex: bus 0 of segment 0, its configuration mechanisms, and
//! the windows where BARs live.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use super::host_bridge::HostBridge;
use super::{dword_bytes, regs, Bar, BarKind, PciDevice};
use crate::bus::{BusDevice, DeviceAction};

/// Slots on bus 0; slot 0 is the host bridge.
pub const SLOTS: usize = 32;
/// Bit 31 of the 0xcf8 address register: the access goes to config space.
const CONFIG_ENABLE: u32 = 1 << 31;

/// Where the root complex decodes, as the ACPI tables announce it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciWindows {
    /// Port I/O window for I/O BARs.
    pub io: Range<u64>,
    /// Memory window below 4 GiB.
    pub mem32: Range<u64>,
    /// Memory window above 4 GiB, for 64-bit BARs.
    pub mem64: Range<u64>,
    /// ECAM: 1 MiB per bus, bus 0 only.
    pub ecam: Range<u64>,
}

impl PciWindows {
    fn holds(&self, bar: &Bar) -> bool {
        let r = bar.range();
        let inside = |w: &Range<u64>| r.start >= w.start && r.end <= w.end && r.start < r.end;
        match bar.kind {
            BarKind::Io => inside(&self.io),
            BarKind::Mem32 { .. } => inside(&self.mem32),
            BarKind::Mem64 { .. } => inside(&self.mem32) || inside(&self.mem64),
        }
    }
}

/// What the root counted for one device.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DeviceCounters {
    /// Configuration-space reads and writes.
    pub config_accesses: u64,
    /// Trapped BAR reads (accesses that left the guest).
    pub bar_reads: u64,
    /// Trapped BAR writes.
    pub bar_writes: u64,
    /// BAR placements refused (outside the windows, or over another BAR).
    pub refused_placements: u64,
    /// Interrupts the device raised, where only the host sees them.
    pub interrupts: Option<u64>,
}

struct Slot {
    name: String,
    device: Box<dyn PciDevice>,
    /// Where each BAR is live, by register index.
    live: BTreeMap<usize, Bar>,
    /// The last refused placement per BAR, so each is logged once.
    refused: BTreeMap<usize, u64>,
    counters: DeviceCounters,
}

/// The root complex and the devices on its bus.
pub struct PciRoot {
    windows: PciWindows,
    slots: Vec<Option<Slot>>,
    config_address: u32,
}

/// The bus is full.
#[derive(Debug, thiserror::Error)]
#[error("PCI bus 0 is full: it has {SLOTS} slots")]
pub struct BusFull;

impl PciRoot {
    /// A root complex with only its host bridge.
    pub fn new(windows: PciWindows) -> Self {
        let mut root = PciRoot {
            windows,
            slots: (0..SLOTS).map(|_| None).collect(),
            config_address: 0,
        };
        root.slots[0] = Some(Slot::new("host-bridge", Box::new(HostBridge)));
        root
    }

    /// The windows it decodes.
    pub fn windows(&self) -> &PciWindows {
        &self.windows
    }

    /// Puts `device` in the first free slot and returns the slot number.
    pub fn add(&mut self, name: &str, device: Box<dyn PciDevice>) -> Result<u8, BusFull> {
        let slot = self.slots.iter().position(Option::is_none).ok_or(BusFull)?;
        self.slots[slot] = Some(Slot::new(name, device));
        self.refresh(slot);
        Ok(slot as u8)
    }

    /// Per device (name, slot): what the root counted.
    pub fn counters(&self) -> Vec<(String, u8, DeviceCounters)> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let s = s.as_ref()?;
                let mut c = s.counters.clone();
                c.interrupts = s.device.interrupts();
                Some((s.name.clone(), i as u8, c))
            })
            .filter(|(_, i, _)| *i != 0)
            .collect()
    }

    /// A configuration access to `bus:slot.function`, register `reg`.
    /// Absent functions read as all ones; accesses that cross a dword, or
    /// that miss, are ignored.
    pub fn config(
        &mut self,
        bus: u8,
        slot: u8,
        function: u8,
        reg: usize,
        data: &mut [u8],
        write: bool,
    ) {
        let shift = reg & 3;
        let fits = !data.is_empty() && shift + data.len() <= 4 && reg < regs::CONFIG_SIZE;
        let s = match self.slots.get_mut(usize::from(slot)) {
            Some(Some(s)) if bus == 0 && function == 0 && fits => s,
            _ => {
                if !write {
                    data.fill(0xff);
                }
                return;
            }
        };
        s.counters.config_accesses += 1;
        if write {
            s.device.write_config(reg, data);
            self.refresh(usize::from(slot));
        } else {
            let value = s.device.read_config(reg & !3);
            dword_bytes(value, shift, data);
        }
    }

    /// An access at `offset` into the ECAM window.
    pub fn ecam(&mut self, offset: u64, data: &mut [u8], write: bool) {
        let bus = (offset >> 20) as u8;
        let slot = ((offset >> 15) & 0x1f) as u8;
        let function = ((offset >> 12) & 7) as u8;
        let reg = (offset & 0xfff) as usize;
        if offset >> 20 > 0xff {
            if !write {
                data.fill(0xff);
            }
            return;
        }
        self.config(bus, slot, function, reg, data, write);
    }

    /// An access at `offset` into ports 0xcf8-0xcff: the address register,
    /// then the data window it selects.
    pub fn config_ports(&mut self, offset: u64, data: &mut [u8], write: bool) {
        if offset < 4 {
            let shift = offset as usize;
            if write {
                self.config_address = super::merge_dword(self.config_address, shift, data);
            } else {
                dword_bytes(self.config_address, shift, data);
            }
            return;
        }
        let a = self.config_address;
        if a & CONFIG_ENABLE == 0 {
            if !write {
                data.fill(0xff);
            }
            return;
        }
        let bus = (a >> 16) as u8;
        let slot = ((a >> 11) & 0x1f) as u8;
        let function = ((a >> 8) & 7) as u8;
        let reg = (a & 0xfc) as usize + (offset as usize - 4);
        self.config(bus, slot, function, reg, data, write);
    }

    /// A trapped access at `addr` in the I/O (`io`) or memory space. Goes to
    /// the live BAR that holds the whole access; anything else reads as all
    /// ones and drops writes.
    pub fn bar_access(&mut self, io: bool, addr: u64, data: &mut [u8], write: bool) {
        let len = data.len() as u64;
        let hit = self.slots.iter_mut().flatten().find_map(|s| {
            let (index, bar) = s.live.iter().find(|(_, b)| {
                b.kind.is_io() == io
                    && addr >= b.addr
                    && addr.saturating_add(len) <= b.addr + b.size
            })?;
            Some((*index, addr - bar.addr, s))
        });
        let Some((index, offset, s)) = hit else {
            log::debug!(
                "PCI: {} access at {addr:#x}+{len} hits no BAR",
                if io { "I/O" } else { "memory" }
            );
            if !write {
                data.fill(0xff);
            }
            return;
        };
        if write {
            s.counters.bar_writes += 1;
            s.device.write_bar(index, offset, data);
        } else {
            s.counters.bar_reads += 1;
            s.device.read_bar(index, offset, data);
        }
    }

    /// Recomputes where the BARs of `slot` are live, and tells the device
    /// about every change. A BAR is live when its space is decoded, it lies
    /// inside the right window, and it overlaps no other live BAR.
    fn refresh(&mut self, slot: usize) {
        let Some(mut s) = self.slots[slot].take() else {
            return;
        };
        let (io_on, mem_on) = s.device.decoding();
        let mut live = BTreeMap::new();
        for (index, bar) in s.device.bars() {
            let on = if bar.kind.is_io() { io_on } else { mem_on };
            if !on {
                continue;
            }
            let problem = if !self.windows.holds(&bar) {
                Some("it is outside the PCI windows".to_string())
            } else {
                self.overlap(&bar, &live)
                    .map(|other| format!("it overlaps {other}"))
            };
            match problem {
                None => {
                    s.refused.remove(&index);
                    live.insert(index, bar);
                }
                Some(why) => {
                    if s.refused.insert(index, bar.addr) != Some(bar.addr) {
                        s.counters.refused_placements += 1;
                        log::warn!(
                            "PCI {}: BAR {index} at {:#x}+{:#x} is not mapped: {why}",
                            s.name,
                            bar.addr,
                            bar.size
                        );
                    }
                }
            }
        }
        let indices: Vec<usize> = s.live.keys().chain(live.keys()).copied().collect();
        for index in indices {
            let (old, new) = (s.live.get(&index), live.get(&index));
            if old != new {
                s.device.place_bar(index, new.map(|b| b.addr));
            }
        }
        s.live = live;
        self.slots[slot] = Some(s);
    }

    /// The live BAR (of another slot, or in `mine`) that `bar` overlaps.
    fn overlap(&self, bar: &Bar, mine: &BTreeMap<usize, Bar>) -> Option<String> {
        let r = bar.range();
        let clash = |b: &Bar| {
            b.kind.is_io() == bar.kind.is_io() && b.addr < r.end && r.start < b.addr + b.size
        };
        if let Some((i, _)) = mine.iter().find(|(_, b)| clash(b)) {
            return Some(format!("its own BAR {i}"));
        }
        self.slots.iter().flatten().find_map(|s| {
            let (i, _) = s.live.iter().find(|(_, b)| clash(b))?;
            Some(format!("BAR {i} of {}", s.name))
        })
    }
}

impl Slot {
    fn new(name: &str, device: Box<dyn PciDevice>) -> Self {
        Slot {
            name: name.into(),
            device,
            live: BTreeMap::new(),
            refused: BTreeMap::new(),
            counters: DeviceCounters::default(),
        }
    }
}

/// The root complex, shared by the bus entries that reach it.
pub type SharedRoot = Arc<Mutex<PciRoot>>;

/// Locks the root, recovering it if a vCPU thread panicked holding it.
pub fn lock(root: &SharedRoot) -> std::sync::MutexGuard<'_, PciRoot> {
    root.lock().unwrap_or_else(|p| p.into_inner())
}

/// What a bus entry of the root complex decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    /// Ports 0xcf8-0xcff.
    ConfigPorts,
    /// The ECAM window.
    Ecam,
    /// A BAR window starting at `base`; `io` for the I/O window.
    Bars {
        /// Start of the window.
        base: u64,
        /// Whether it is in the I/O space.
        io: bool,
    },
}

/// One bus entry of the root complex.
pub struct RootPort {
    root: SharedRoot,
    decoder: Decoder,
}

impl RootPort {
    /// An entry decoding `decoder` for `root`.
    pub fn new(root: SharedRoot, decoder: Decoder) -> Self {
        RootPort { root, decoder }
    }

    fn access(&mut self, offset: u64, data: &mut [u8], write: bool) {
        let mut root = lock(&self.root);
        match self.decoder {
            Decoder::ConfigPorts => root.config_ports(offset, data, write),
            Decoder::Ecam => root.ecam(offset, data, write),
            Decoder::Bars { base, io } => root.bar_access(io, base + offset, data, write),
        }
    }
}

impl BusDevice for RootPort {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.access(offset, data, false);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
        let mut copy = data.to_vec();
        self.access(offset, &mut copy, true);
        DeviceAction::None
    }
}

/// The windows the unit tests use: Subzero's I/O and 32-bit windows, a
/// 64-bit window from 4 GiB, one bus of ECAM.
#[cfg(test)]
pub(crate) fn test_windows() -> PciWindows {
    PciWindows {
        io: 0xc000..0x1_0000,
        mem32: 0xc000_0000..0xd000_0000,
        mem64: 1 << 32..1 << 35,
        ecam: 0xe000_0000..0xe010_0000,
    }
}

#[cfg(test)]
#[path = "root_tests.rs"]
mod tests;
