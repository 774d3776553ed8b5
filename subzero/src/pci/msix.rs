//! MSI-X as the guest programs it: the capability's control word, the
//! vector table and the pending-bit array.
//!
//! The table lives in a BAR; the device traps those pages and forwards the
//! accesses here. Every change to what a vector would deliver is reported,
//! so the owner can point a KVM route (and an irqfd) at it, or take it down.

/// Bytes per table entry: address low, address high, data, vector control.
pub const ENTRY_SIZE: u64 = 16;
/// Control bit: MSI-X is enabled.
pub const CONTROL_ENABLE: u16 = 1 << 15;
/// Control bit: every vector is masked.
pub const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
/// Vector control bit: this vector is masked.
const VECTOR_MASKED: u32 = 1;
/// Interrupt messages go to the local APICs' window (0xfee0_0000, 1 MiB).
const MSI_ADDRESS_WINDOW: u64 = 0xfee;

/// Where a vector's message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiMessage {
    /// Address (0xfeeX_XXXX: destination APIC and mode).
    pub address: u64,
    /// Data (vector and delivery mode).
    pub data: u32,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    address_lo: u32,
    address_hi: u32,
    data: u32,
    control: u32,
}

impl Default for Entry {
    /// Vectors come out of reset masked.
    fn default() -> Self {
        Entry {
            address_lo: 0,
            address_hi: 0,
            data: 0,
            control: VECTOR_MASKED,
        }
    }
}

/// One function's MSI-X state.
#[derive(Debug, Clone)]
pub struct Msix {
    entries: Vec<Entry>,
    control: u16,
    /// Vectors whose messages the guest aimed at nonsense, logged once each.
    bad: Vec<bool>,
}

impl Msix {
    /// `vectors` vectors (1 to 2048), all masked, MSI-X disabled.
    pub fn new(vectors: u16) -> Self {
        let n = usize::from(vectors.clamp(1, 2048));
        Msix {
            entries: vec![Entry::default(); n],
            control: 0,
            bad: vec![false; n],
        }
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Always false: a table has at least one vector.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Bytes the table takes.
    pub fn table_size(&self) -> u64 {
        self.entries.len() as u64 * ENTRY_SIZE
    }

    /// Bytes the pending-bit array takes (whole qwords).
    pub fn pba_size(&self) -> u64 {
        self.entries.len().div_ceil(64) as u64 * 8
    }

    /// The control word the guest reads: enable and mask bits, table size.
    pub fn control(&self) -> u16 {
        (self.control & (CONTROL_ENABLE | CONTROL_FUNCTION_MASK)) | (self.entries.len() as u16 - 1)
    }

    /// Whether MSI-X is enabled.
    pub fn enabled(&self) -> bool {
        self.control & CONTROL_ENABLE != 0
    }

    /// The guest writes the control word. Returns the vectors whose delivery
    /// may have changed (all of them when enable or mask flips).
    pub fn write_control(&mut self, value: u16) -> Vec<usize> {
        let old = self.control;
        self.control = value & (CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
        if old == self.control {
            Vec::new()
        } else {
            (0..self.entries.len()).collect()
        }
    }

    /// A read at `offset` into the table. Accesses that are not one dword
    /// or one qword, aligned, inside the table read as zero (the spec leaves
    /// them undefined).
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some((index, field)) = self.locate(offset, data.len()) else {
            return;
        };
        let e = &self.entries[index];
        let fields = [e.address_lo, e.address_hi, e.data, e.control];
        for (i, chunk) in data.chunks_mut(4).enumerate() {
            chunk.copy_from_slice(&fields[field + i].to_le_bytes());
        }
    }

    /// A write at `offset` into the table. Returns the vector whose delivery
    /// may have changed, if any; malformed accesses are dropped.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) -> Option<usize> {
        let (index, field) = self.locate(offset, data.len())?;
        let e = &mut self.entries[index];
        for (i, chunk) in data.chunks(4).enumerate() {
            let v = u32::from_le_bytes(chunk.try_into().ok()?);
            match field + i {
                0 => e.address_lo = v,
                1 => e.address_hi = v,
                2 => e.data = v,
                _ => e.control = v & VECTOR_MASKED,
            }
        }
        self.bad[index] = false;
        Some(index)
    }

    fn locate(&self, offset: u64, len: usize) -> Option<(usize, usize)> {
        let aligned = matches!(len, 4 | 8) && offset % len as u64 == 0;
        let index = usize::try_from(offset / ENTRY_SIZE).ok()?;
        (aligned && index < self.entries.len())
            .then_some((index, (offset % ENTRY_SIZE / 4) as usize))
    }

    /// Whether vector `index` is masked, by itself or by the function mask.
    pub fn masked(&self, index: usize) -> bool {
        self.control & CONTROL_FUNCTION_MASK != 0
            || self
                .entries
                .get(index)
                .is_none_or(|e| e.control & VECTOR_MASKED != 0)
    }

    /// What vector `index` delivers now: nothing when MSI-X is off, the
    /// vector is masked, or its address is not the local APICs' window.
    pub fn message(&mut self, index: usize) -> Option<MsiMessage> {
        if !self.enabled() || self.masked(index) {
            return None;
        }
        let e = self.entries.get(index)?;
        let address = u64::from(e.address_hi) << 32 | u64::from(e.address_lo);
        if address >> 20 != MSI_ADDRESS_WINDOW {
            if !std::mem::replace(&mut self.bad[index], true) {
                log::warn!("MSI-X vector {index}: address {address:#x} is not an interrupt address; the vector stays off");
            }
            return None;
        }
        Some(MsiMessage {
            address,
            data: e.data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(m: &mut Msix, index: usize, address: u64, data: u32, masked: bool) -> Option<usize> {
        let base = index as u64 * ENTRY_SIZE;
        m.write_table(base, &address.to_le_bytes())?;
        m.write_table(base + 8, &data.to_le_bytes())?;
        m.write_table(base + 12, &u32::from(masked).to_le_bytes())
    }

    #[test]
    fn a_vector_delivers_only_when_enabled_unmasked_and_well_aimed() {
        let mut m = Msix::new(4);
        assert_eq!(m.control(), 3, "table size - 1, disabled");
        assert_eq!(program(&mut m, 1, 0xfee0_1000, 0x41, false), Some(1));
        assert_eq!(m.message(1), None, "MSI-X still disabled");
        assert_eq!(
            m.write_control(CONTROL_ENABLE | CONTROL_FUNCTION_MASK)
                .len(),
            4
        );
        assert_eq!(m.message(1), None, "function masked");
        m.write_control(CONTROL_ENABLE);
        assert_eq!(m.control(), CONTROL_ENABLE | 3);
        let want = MsiMessage {
            address: 0xfee0_1000,
            data: 0x41,
        };
        assert_eq!(m.message(1), Some(want));
        assert_eq!(m.message(0), None, "vectors start masked");
        assert!(m.write_control(CONTROL_ENABLE).is_empty(), "no change");
        // Masking the vector itself takes it down.
        program(&mut m, 1, 0xfee0_1000, 0x41, true);
        assert_eq!(m.message(1), None);
        // Nonsense addresses never become a route: RAM, MMIO, high bits.
        for bad in [0x1000, 0xfed0_0000, 0x1_fee0_0000, u64::MAX] {
            program(&mut m, 2, bad, 0x42, false);
            assert_eq!(m.message(2), None, "{bad:#x}");
        }
    }

    #[test]
    fn the_table_reads_back_and_malformed_accesses_are_dropped() {
        let mut m = Msix::new(2);
        program(&mut m, 0, 0xfee0_0000, 0x30, false);
        let mut q = [0u8; 8];
        m.read_table(0, &mut q);
        assert_eq!(u64::from_le_bytes(q), 0xfee0_0000);
        let mut d = [0u8; 4];
        m.read_table(12, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0, "unmasked");
        m.read_table(16 + 12, &mut d);
        assert_eq!(u32::from_le_bytes(d), 1, "masked at reset");
        // Byte writes, unaligned writes and writes past the table do nothing.
        assert_eq!(m.write_table(8, &[0xff]), None);
        assert_eq!(m.write_table(2, &[0; 4]), None);
        assert_eq!(m.write_table(32, &[0; 4]), None);
        assert_eq!(m.write_table(u64::MAX - 3, &[0; 4]), None);
        m.read_table(8, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x30);
        m.read_table(u64::MAX - 7, &mut q);
        assert_eq!(q, [0; 8]);
        // Reserved vector-control bits do not stick.
        m.write_table(12, &u32::MAX.to_le_bytes());
        m.read_table(12, &mut d);
        assert_eq!(u32::from_le_bytes(d), 1);
        assert_eq!(Msix::new(0).len(), 1);
        assert_eq!(Msix::new(65).pba_size(), 16);
    }
}
