//! Address spaces that route guest accesses to devices.
//!
//! Subzero has two buses: one for port I/O and one for MMIO. Each maps
//! non-overlapping ranges to devices. A device sees the offset into its own
//! range, never the absolute address, so the same device type can live at
//! any base.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The two address spaces a vCPU's accesses go to.
#[derive(Default, Clone)]
pub struct Buses {
    /// Port I/O.
    pub pio: Bus,
    /// Memory-mapped I/O.
    pub mmio: Bus,
}

/// What a device asks the VMM to do after an access.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceAction {
    /// Nothing; the vCPU resumes.
    None,
    /// The guest asked for a machine reset (reboot).
    Reset,
    /// The guest asked to power off.
    PowerOff,
}

/// A device that sits on a bus.
pub trait BusDevice: Send {
    /// Reads `data.len()` bytes at `offset` into the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset` into the device's range.
    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction;
}

/// A device shared between vCPU threads.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Why a device could not be inserted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The range has zero length.
    #[error("device {name}: empty address range at {base:#x}")]
    EmptyRange {
        /// Device name.
        name: String,
        /// Range start.
        base: u64,
    },
    /// The range wraps past the end of the address space.
    #[error("device {name}: range {base:#x}+{len:#x} overflows the address space")]
    Overflow {
        /// Device name.
        name: String,
        /// Range start.
        base: u64,
        /// Range length.
        len: u64,
    },
    /// The range overlaps a device already on the bus.
    #[error("device {name} at {base:#x}+{len:#x} overlaps {other}")]
    Overlap {
        /// Device name.
        name: String,
        /// Range start.
        base: u64,
        /// Range length.
        len: u64,
        /// The device already there.
        other: String,
    },
}

#[derive(Clone)]
struct Entry {
    len: u64,
    name: String,
    device: SharedDevice,
}

/// Where an address landed on the bus.
pub struct Resolved<'a> {
    /// The owning device's name, e.g. "serial".
    pub name: &'a str,
    /// Start of the owning device's range.
    pub base: u64,
    /// Offset of the access inside that range.
    pub offset: u64,
    device: &'a SharedDevice,
}

/// A set of non-overlapping address ranges, each owned by one device.
#[derive(Clone, Default)]
pub struct Bus {
    entries: BTreeMap<u64, Entry>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Places `device` at `[base, base + len)`. Fails on empty, wrapping or
    /// overlapping ranges.
    pub fn insert(
        &mut self,
        name: &str,
        base: u64,
        len: u64,
        device: SharedDevice,
    ) -> Result<(), BusError> {
        if len == 0 {
            return Err(BusError::EmptyRange {
                name: name.into(),
                base,
            });
        }
        let last = base
            .checked_add(len - 1)
            .ok_or_else(|| BusError::Overflow {
                name: name.into(),
                base,
                len,
            })?;
        // The nearest range starting at or below our last byte is the only
        // one that can overlap: ranges are disjoint and sorted.
        if let Some((&other_base, other)) = self.entries.range(..=last).next_back() {
            if other_base + (other.len - 1) >= base {
                return Err(BusError::Overlap {
                    name: name.into(),
                    base,
                    len,
                    other: format!("{} at {:#x}+{:#x}", other.name, other_base, other.len),
                });
            }
        }
        self.entries.insert(
            base,
            Entry {
                len,
                name: name.into(),
                device,
            },
        );
        Ok(())
    }

    /// Finds the device owning `addr`, if any.
    pub fn resolve(&self, addr: u64) -> Option<Resolved<'_>> {
        let (&base, entry) = self.entries.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset < entry.len).then_some(Resolved {
            name: &entry.name,
            base,
            offset,
            device: &entry.device,
        })
    }

    /// Reads from the device at `addr` and returns the base of its range.
    /// Returns `None` (and fills `data` with 0xff, as an open bus would) when
    /// no device is there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> Option<u64> {
        match self.resolve(addr) {
            Some(r) => {
                lock(r.device).read(r.offset, data);
                Some(r.base)
            }
            None => {
                data.fill(0xff);
                None
            }
        }
    }

    /// Writes to the device at `addr`. Returns the base of its range and what
    /// the device asks for, or `None` when no device is there.
    pub fn write(&self, addr: u64, data: &[u8]) -> Option<(u64, DeviceAction)> {
        let r = self.resolve(addr)?;
        let action = lock(r.device).write(r.offset, data);
        Some((r.base, action))
    }

    /// The name of the device whose range starts at `base`.
    pub fn name_at(&self, base: u64) -> Option<&str> {
        self.entries.get(&base).map(|e| e.name.as_str())
    }

    /// The devices on this bus as (name, base, len), in address order.
    pub fn ranges(&self) -> impl Iterator<Item = (&str, u64, u64)> {
        self.entries
            .iter()
            .map(|(&base, e)| (e.name.as_str(), base, e.len))
    }
}

/// Locks a device, recovering it if another vCPU thread panicked while
/// holding it: device state stays usable and the VM goes on.
fn lock(device: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Remembers the last access and answers reads with its offset.
    #[derive(Default)]
    struct Probe {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
            self.last_write = Some((offset, data.to_vec()));
            DeviceAction::None
        }
    }

    fn probe() -> Arc<Mutex<Probe>> {
        Arc::new(Mutex::new(Probe::default()))
    }

    #[test]
    fn device_sees_offset_not_address() {
        let mut bus = Bus::new();
        let dev = probe();
        bus.insert("probe", 0x3f8, 8, dev.clone()).unwrap();
        let mut data = [0u8; 1];
        assert_eq!(bus.read(0x3fd, &mut data), Some(0x3f8));
        assert_eq!(data, [5]);
        assert_eq!(bus.write(0x3f9, &[0xab]), Some((0x3f8, DeviceAction::None)));
        assert_eq!(bus.name_at(0x3f8), Some("probe"));
        assert_eq!(bus.name_at(0x3f9), None);
        assert_eq!(dev.lock().unwrap().last_write, Some((1, vec![0xab])));
    }

    #[test]
    fn unclaimed_addresses_read_as_open_bus() {
        let mut bus = Bus::new();
        bus.insert("probe", 0x100, 0x10, probe()).unwrap();
        let mut data = [0u8; 4];
        assert_eq!(bus.read(0x110, &mut data), None);
        assert_eq!(data, [0xff; 4]);
        assert_eq!(bus.read(0xff, &mut data), None);
        assert_eq!(bus.write(0x110, &[1]), None);
    }

    #[test]
    fn overlapping_inserts_are_rejected() {
        let mut bus = Bus::new();
        bus.insert("a", 0x100, 0x10, probe()).unwrap();
        for (base, len) in [(0x100, 1), (0xf8, 0x9), (0x10f, 0x10), (0x0, 0x1000)] {
            let err = bus.insert("b", base, len, probe()).unwrap_err();
            assert!(
                matches!(err, BusError::Overlap { .. }),
                "{base:#x}+{len:#x}"
            );
            assert!(err.to_string().contains("overlaps a at 0x100+0x10"));
        }
        // Adjacent ranges on both sides are fine.
        bus.insert("below", 0xf0, 0x10, probe()).unwrap();
        bus.insert("above", 0x110, 0x10, probe()).unwrap();
        let names: Vec<_> = bus.ranges().map(|(n, _, _)| n).collect();
        assert_eq!(names, ["below", "a", "above"]);
    }

    #[test]
    fn empty_and_wrapping_ranges_are_rejected() {
        let mut bus = Bus::new();
        assert!(matches!(
            bus.insert("e", 0x10, 0, probe()),
            Err(BusError::EmptyRange { .. })
        ));
        assert!(matches!(
            bus.insert("w", u64::MAX, 2, probe()),
            Err(BusError::Overflow { .. })
        ));
        bus.insert("top", u64::MAX, 1, probe()).unwrap();
        assert!(bus.resolve(u64::MAX).is_some());
    }
}
