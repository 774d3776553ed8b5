//! Base address registers: the guest's sizing and placement writes, and the
//! windows BARs are allocated from.
//!
//! A BAR decodes `size` bytes (a power of two) at an address aligned to its
//! size. The guest sizes it by writing all ones and reading back the mask, then
//! writes the address it wants. A 64-bit memory BAR takes two registers, the
//! second holding the high half.

use std::ops::Range;

use vm_allocator::{AddressAllocator, AllocPolicy};

/// Bit 0 of an I/O BAR.
const IO_SPACE: u32 = 1;
/// Type bits of a 64-bit memory BAR.
const MEM_TYPE_64: u32 = 0b100;
/// Prefetchable memory BAR.
const MEM_PREFETCH: u32 = 0b1000;

/// What a BAR decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// Port I/O.
    Io,
    /// Memory below 4 GiB.
    Mem32 {
        /// Prefetchable.
        prefetch: bool,
    },
    /// Memory anywhere; uses two registers.
    Mem64 {
        /// Prefetchable.
        prefetch: bool,
    },
}

impl BarKind {
    /// Decodes the flag bits of a BAR register as the device reports them.
    pub fn from_register(value: u32) -> Self {
        if value & IO_SPACE != 0 {
            return BarKind::Io;
        }
        let prefetch = value & MEM_PREFETCH != 0;
        if value & 0b110 == MEM_TYPE_64 {
            BarKind::Mem64 { prefetch }
        } else {
            BarKind::Mem32 { prefetch }
        }
    }

    fn flags(self) -> u32 {
        match self {
            BarKind::Io => IO_SPACE,
            BarKind::Mem32 { prefetch } => u32::from(prefetch) * MEM_PREFETCH,
            BarKind::Mem64 { prefetch } => MEM_TYPE_64 | (u32::from(prefetch) * MEM_PREFETCH),
        }
    }

    /// Whether the BAR is in the I/O space.
    pub fn is_io(self) -> bool {
        self == BarKind::Io
    }
}

/// One BAR as the guest sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bar {
    /// What it decodes.
    pub kind: BarKind,
    /// Bytes it decodes: a power of two, at least 16 (memory) or 4 (I/O).
    pub size: u64,
    /// Where the guest placed it.
    pub addr: u64,
}

impl Bar {
    /// A BAR of `size` bytes (rounded up to a power of two and the minimum
    /// the kind allows) at `addr`.
    pub fn new(kind: BarKind, size: u64, addr: u64) -> Self {
        let min = if kind.is_io() { 4 } else { 16 };
        let size = size.max(min).checked_next_power_of_two().unwrap_or(1 << 63);
        Bar { kind, size, addr }
    }

    /// The range it decodes.
    pub fn range(&self) -> Range<u64> {
        self.addr..self.addr.saturating_add(self.size)
    }

    fn addr_mask(&self) -> u64 {
        let mask = !(self.size - 1);
        match self.kind {
            BarKind::Io => mask & 0xffff_fffc,
            BarKind::Mem32 { .. } => mask & 0xffff_fff0,
            BarKind::Mem64 { .. } => mask & !0xf,
        }
    }
}

/// The six BAR registers of a type 0 header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bars {
    bars: [Option<Bar>; 6],
}

impl Bars {
    /// Places `bar` at register `index` (a 64-bit BAR also takes `index + 1`).
    /// Returns false, changing nothing, if the registers are taken or out of range.
    pub fn set(&mut self, index: usize, bar: Bar) -> bool {
        let wide = matches!(bar.kind, BarKind::Mem64 { .. });
        let last = index + usize::from(wide);
        if last >= 6 || (index..=last).any(|i| self.owner(i).is_some()) {
            return false;
        }
        self.bars[index] = Some(bar);
        true
    }

    /// The BAR at register `index`, if one starts there.
    pub fn get(&self, index: usize) -> Option<&Bar> {
        self.bars.get(index)?.as_ref()
    }

    /// The BARs, with their register index.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &Bar)> {
        self.bars
            .iter()
            .enumerate()
            .filter_map(|(i, b)| Some((i, b.as_ref()?)))
    }

    /// The BAR that owns register `reg`, and whether `reg` is its high half.
    fn owner(&self, reg: usize) -> Option<(usize, bool)> {
        if self.bars.get(reg)?.is_some() {
            return Some((reg, false));
        }
        let below = reg.checked_sub(1)?;
        match self.bars[below] {
            Some(Bar {
                kind: BarKind::Mem64 { .. },
                ..
            }) => Some((below, true)),
            _ => None,
        }
    }

    /// Reads BAR register `reg` (0 to 5). Unimplemented BARs read as zero.
    pub fn read(&self, reg: usize) -> u32 {
        let Some((index, high)) = self.owner(reg) else {
            return 0;
        };
        let Some(bar) = self.bars[index] else {
            return 0;
        };
        let value = bar.addr & bar.addr_mask();
        if high {
            (value >> 32) as u32
        } else {
            value as u32 | bar.kind.flags()
        }
    }

    /// Writes BAR register `reg` with a full dword. Only the address bits the
    /// BAR decodes stick, so writing all ones reads back its size mask.
    /// Returns the register index of the BAR whose address changed.
    pub fn write(&mut self, reg: usize, value: u32) -> Option<usize> {
        let (index, high) = self.owner(reg)?;
        let bar = self.bars[index].as_mut()?;
        let old = bar.addr;
        let mut addr = bar.addr;
        if high {
            addr = (addr & 0xffff_ffff) | (u64::from(value) << 32);
        } else {
            addr = (addr & !0xffff_ffff) | u64::from(value);
        }
        bar.addr = addr & bar.addr_mask();
        (bar.addr != old).then_some(index)
    }
}

/// Windows the BARs are allocated from, as the DSDT announces them.
pub struct BarAllocator {
    io: AddressAllocator,
    mem32: AddressAllocator,
    mem64: AddressAllocator,
}

/// No window has room for a BAR.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("no room for a {size:#x}-byte {kind:?} BAR in the PCI windows")]
pub struct NoRoom {
    /// What was asked for.
    pub kind: BarKind,
    /// Its size.
    pub size: u64,
}

impl BarAllocator {
    /// Allocators over the I/O, 32-bit and 64-bit windows.
    pub fn new(io: Range<u64>, mem32: Range<u64>, mem64: Range<u64>) -> Self {
        let alloc = |r: Range<u64>| {
            AddressAllocator::new(r.start, r.end - r.start).expect("a valid PCI window")
        };
        BarAllocator {
            io: alloc(io),
            mem32: alloc(mem32),
            mem64: alloc(mem64),
        }
    }

    /// An address for a BAR of `kind` and `size` (a power of two), aligned to
    /// its size. 64-bit BARs go high; prefetchable or not, they fall back to
    /// the 32-bit window when the high one is full.
    pub fn allocate(&mut self, kind: BarKind, size: u64) -> Result<u64, NoRoom> {
        let take = |a: &mut AddressAllocator| {
            a.allocate(size, size, AllocPolicy::FirstMatch)
                .ok()
                .map(|r| r.start())
        };
        let addr = match kind {
            BarKind::Io => take(&mut self.io),
            BarKind::Mem32 { .. } => take(&mut self.mem32),
            BarKind::Mem64 { .. } => take(&mut self.mem64).or_else(|| take(&mut self.mem32)),
        };
        addr.ok_or(NoRoom { kind, size })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizing_reads_back_the_size_mask() {
        let mut bars = Bars::default();
        assert!(bars.set(
            0,
            Bar::new(BarKind::Mem32 { prefetch: false }, 0x4000, 0xc000_0000)
        ));
        assert!(bars.set(
            2,
            Bar::new(BarKind::Mem64 { prefetch: true }, 1 << 33, 1 << 34)
        ));
        assert!(bars.set(4, Bar::new(BarKind::Io, 0x20, 0xc000)));
        assert_eq!(bars.read(0), 0xc000_0000);
        assert_eq!(bars.read(2), 0b1100);
        assert_eq!(bars.read(3), 4);
        assert_eq!(bars.read(4), 0xc001);
        assert_eq!(bars.read(5), 0);
        for reg in 0..6 {
            bars.write(reg, u32::MAX);
        }
        assert_eq!(bars.read(0), 0xffff_c000);
        assert_eq!(bars.read(2), 0b1100);
        assert_eq!(bars.read(3), 0xffff_fffe);
        assert_eq!(bars.read(4), 0xffff_ffe1);
        assert_eq!(bars.read(5), 0, "nothing there");
    }

    #[test]
    fn a_placement_write_reports_the_moved_bar() {
        let mut bars = Bars::default();
        bars.set(0, Bar::new(BarKind::Mem64 { prefetch: false }, 0x1000, 0));
        assert_eq!(bars.write(0, 0xc000_1234), Some(0));
        assert_eq!(bars.get(0).unwrap().addr, 0xc000_1000);
        assert_eq!(bars.write(1, 0x1), Some(0));
        assert_eq!(bars.get(0).unwrap().addr, 0x1_c000_1000);
        assert_eq!(bars.write(1, 0x1), None, "same value: nothing moved");
    }

    #[test]
    fn overlapping_registers_are_refused() {
        let mut bars = Bars::default();
        assert!(bars.set(1, Bar::new(BarKind::Mem64 { prefetch: false }, 0x1000, 0)));
        assert!(!bars.set(2, Bar::new(BarKind::Io, 4, 0)));
        assert!(!bars.set(5, Bar::new(BarKind::Mem64 { prefetch: false }, 16, 0)));
        assert!(!bars.set(6, Bar::new(BarKind::Io, 4, 0)));
        assert!(bars.set(0, Bar::new(BarKind::Io, 3, 0)));
        assert_eq!(bars.get(0).unwrap().size, 4);
    }

    #[test]
    fn allocations_are_aligned_and_fall_back_to_32_bit() {
        let mut a = BarAllocator::new(
            0xc000..0x1_0000,
            0xc000_0000..0xc010_0000,
            1 << 32..(1 << 32) + 0x2000,
        );
        let m64 = BarKind::Mem64 { prefetch: false };
        assert_eq!(a.allocate(m64, 0x2000), Ok(1 << 32));
        assert_eq!(a.allocate(m64, 0x1000), Ok(0xc000_0000), "high window full");
        let m32 = BarKind::Mem32 { prefetch: false };
        assert_eq!(
            a.allocate(m32, 0x10_000),
            Ok(0xc001_0000),
            "aligned to its size"
        );
        assert_eq!(a.allocate(BarKind::Io, 0x100), Ok(0xc000));
        assert!(a.allocate(m32, 1 << 30).is_err());
    }
}
