//! MSI as the guest programs it: the capability's control word, address,
//! data and (when the device has them) per-vector mask bits. For devices
//! that have MSI and no MSI-X.

use super::msix::MsiMessage;
use super::{dword_bytes, merge_dword};

/// Control bit: MSI is enabled.
const ENABLE: u16 = 1;
/// Control bits 6:4: multiple message enable (log2 of the vectors).
const MME_SHIFT: u16 = 4;
/// Control bit: 64-bit addresses.
const ADDR_64: u16 = 1 << 7;
/// Control bit: per-vector masking.
const PER_VECTOR_MASK: u16 = 1 << 8;
/// Interrupt messages go to the local APICs' window.
const MSI_ADDRESS_WINDOW: u64 = 0xfee;

/// One function's MSI state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msi {
    /// The read-only control bits the device reports (MMC, 64-bit, masking).
    caps: u16,
    enable: bool,
    mme: u16,
    address: u64,
    data: u16,
    mask: u32,
}

impl Msi {
    /// The capability of a device whose control word reads `control`;
    /// disabled, one vector.
    pub fn new(control: u16) -> Self {
        Msi {
            caps: control & (0b1110 | ADDR_64 | PER_VECTOR_MASK),
            enable: false,
            mme: 0,
            address: 0,
            data: 0,
            mask: 0,
        }
    }

    fn is64(&self) -> bool {
        self.caps & ADDR_64 != 0
    }

    fn masking(&self) -> bool {
        self.caps & PER_VECTOR_MASK != 0
    }

    /// log2 of the vectors the device can do.
    fn mmc(&self) -> u16 {
        (self.caps >> 1) & 7
    }

    /// Bytes the capability takes.
    pub fn len(&self) -> usize {
        match (self.is64(), self.masking()) {
            (true, true) => 0x18,
            (false, true) => 0x14,
            (true, false) => 0x10,
            (false, false) => 0x0c,
        }
    }

    /// Never empty.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether MSI is on.
    pub fn enabled(&self) -> bool {
        self.enable
    }

    /// Vectors the guest enabled (a power of two, at most what the device can).
    pub fn vectors(&self) -> usize {
        1 << self.mme.min(self.mmc())
    }

    fn control(&self) -> u16 {
        self.caps | u16::from(self.enable) | (self.mme << MME_SHIFT)
    }

    /// Offsets of data and mask registers.
    fn data_at(&self) -> usize {
        if self.is64() {
            0x0c
        } else {
            0x08
        }
    }

    /// The dword at `rel` (a multiple of 4) of the capability; the id and
    /// next bytes read as zero (the caller fills them in).
    pub fn read(&self, rel: usize) -> u32 {
        let mask_at = self.data_at() + 4;
        match rel {
            0 => u32::from(self.control()) << 16,
            4 => self.address as u32,
            8 if self.is64() => (self.address >> 32) as u32,
            r if r == self.data_at() => u32::from(self.data),
            r if r == mask_at && self.masking() => self.mask,
            _ => 0,
        }
    }

    /// Reads `data.len()` bytes at byte `rel` inside one dword.
    pub fn read_bytes(&self, rel: usize, data: &mut [u8]) {
        dword_bytes(self.read(rel & !3), rel & 3, data);
    }

    /// The guest writes `data` at byte `rel` (inside one dword). Returns
    /// whether what the vectors deliver may have changed.
    pub fn write(&mut self, rel: usize, data: &[u8]) -> bool {
        let reg = rel & !3;
        let v = merge_dword(self.read(reg), rel & 3, data);
        let mask_at = self.data_at() + 4;
        match reg {
            0 => {
                let c = (v >> 16) as u16;
                self.enable = c & ENABLE != 0;
                self.mme = ((c >> MME_SHIFT) & 7).min(self.mmc());
            }
            4 => self.address = (self.address & !0xffff_ffff) | u64::from(v & !3),
            8 if self.is64() => self.address = (self.address & 0xffff_ffff) | (u64::from(v) << 32),
            r if r == self.data_at() => self.data = v as u16,
            r if r == mask_at && self.masking() => self.mask = v,
            _ => return false,
        }
        true
    }

    /// What vector `index` delivers: nothing when MSI is off, the vector is
    /// not enabled or masked, or the address is not an interrupt address.
    /// Vector `index` sets the low bits of the data, as the device does.
    pub fn message(&self, index: usize) -> Option<MsiMessage> {
        let n = self.vectors();
        if !self.enable || index >= n || (self.masking() && self.mask & (1 << index) != 0) {
            return None;
        }
        if self.address >> 20 != MSI_ADDRESS_WINDOW {
            return None;
        }
        let data = (u32::from(self.data) & !(n as u32 - 1)) | index as u32;
        Some(MsiMessage {
            address: self.address,
            data,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dword(m: &mut Msi, rel: usize, v: u32) {
        m.write(rel, &v.to_le_bytes());
    }

    #[test]
    fn a_64_bit_maskable_capability_with_four_vectors() {
        // MMC 2 (4 vectors), 64-bit, per-vector masking.
        let mut m = Msi::new((2 << 1) | ADDR_64 | PER_VECTOR_MASK);
        assert_eq!(m.len(), 0x18);
        assert_eq!(
            m.read(0) >> 16,
            u32::from(0b100 | ADDR_64 | PER_VECTOR_MASK)
        );
        dword(&mut m, 4, 0xfee0_1003);
        dword(&mut m, 8, 0);
        dword(&mut m, 0xc, 0xffff_4040);
        assert_eq!(m.read(4), 0xfee0_1000, "low address bits are reserved");
        assert_eq!(m.read(0xc), 0x4040, "data is 16 bits");
        assert_eq!(m.message(0), None, "disabled");
        // Enable, asking for 8 vectors: the device can do 4.
        m.write(2, &((3u16 << MME_SHIFT) | ENABLE).to_le_bytes());
        assert!(m.enabled());
        assert_eq!(m.vectors(), 4);
        assert_eq!(m.read(0) >> 16 & 0x71, 0x21, "MME reads back clamped");
        let at = |data| {
            Some(MsiMessage {
                address: 0xfee0_1000,
                data,
            })
        };
        assert_eq!(m.message(0), at(0x4040));
        assert_eq!(m.message(3), at(0x4043));
        assert_eq!(m.message(4), None, "not enabled");
        dword(&mut m, 0x10, 0b10);
        assert_eq!(m.message(1), None, "masked");
        assert_eq!(m.read(0x10), 0b10);
        assert_eq!(m.read(0x14), 0, "pending bits read as zero");
        assert!(!m.write(0x14, &[0xff; 4]), "and are read-only");
        dword(&mut m, 8, 1);
        assert_eq!(m.message(0), None, "an address above 4 GiB is no interrupt");
    }

    #[test]
    fn a_32_bit_capability_without_masking() {
        let mut m = Msi::new(0);
        assert_eq!(m.len(), 0x0c);
        dword(&mut m, 4, 0x0010_0000);
        dword(&mut m, 8, 0x31);
        m.write(2, &[1, 0]);
        assert_eq!(m.vectors(), 1);
        assert_eq!(m.message(0), None, "aimed at RAM");
        dword(&mut m, 4, 0xfee0_0000);
        assert_eq!(
            m.message(0),
            Some(MsiMessage {
                address: 0xfee0_0000,
                data: 0x31
            })
        );
        assert_eq!(m.read(8), 0x31);
        // Masking is not there: the mask register reads zero and ignores writes.
        assert!(!m.write(0xc, &[0xff; 4]));
        assert_eq!(m.message(0).map(|x| x.data), Some(0x31));
        let mut b = [0u8; 2];
        m.read_bytes(2, &mut b);
        assert_eq!(b, [1, 0]);
    }
}
