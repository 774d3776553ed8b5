//! The PCI layer: one root complex (segment 0, bus 0) with a host bridge at
//! 00:00.0, configuration space through ports 0xcf8/0xcfc and through ECAM,
//! BARs allocated from the windows the DSDT announces, and MSI-X.
//!
//! Devices implement [`PciDevice`]. The [`root::PciRoot`] owns them, routes
//! configuration and trapped BAR accesses to them, and decides where each
//! BAR is live: inside the right window, with decoding on, and clear of every
//! other BAR. A BAR that a device maps into the guest directly (a VFIO
//! region as a KVM memory slot) follows those decisions through
//! [`PciDevice::place_bar`].

pub mod bar;
pub mod host_bridge;
pub mod msi;
pub mod msix;
pub mod root;

pub use bar::{Bar, BarAllocator, BarKind, Bars};
pub use root::{PciRoot, PciWindows};

/// Configuration registers of a type 0 header (byte offsets).
pub mod regs {
    /// Vendor and device id.
    pub const VENDOR_ID: usize = 0x00;
    /// Command (low half) and status (high half).
    pub const COMMAND: usize = 0x04;
    /// Revision, then class code (prog-if, subclass, class).
    pub const CLASS_REVISION: usize = 0x08;
    /// Cache line, latency, header type, BIST.
    pub const HEADER_TYPE: usize = 0x0c;
    /// First BAR register.
    pub const BAR0: usize = 0x10;
    /// Subsystem vendor and id.
    pub const SUBSYSTEM: usize = 0x2c;
    /// Expansion ROM base.
    pub const ROM: usize = 0x30;
    /// Capability pointer.
    pub const CAP_POINTER: usize = 0x34;
    /// Interrupt line and pin.
    pub const INTERRUPT: usize = 0x3c;
    /// Command bit: decode I/O BARs.
    pub const CMD_IO: u16 = 1;
    /// Command bit: decode memory BARs.
    pub const CMD_MEMORY: u16 = 2;
    /// Status bit: the capability list is valid.
    pub const STATUS_CAP_LIST: u16 = 1 << 4;
    /// Capability id of MSI.
    pub const CAP_MSI: u8 = 0x05;
    /// Capability id of MSI-X.
    pub const CAP_MSIX: u8 = 0x11;
    /// Size of the legacy configuration space; ECAM's extended space follows.
    pub const LEGACY_CONFIG_SIZE: usize = 0x100;
    /// Size of a function's configuration space through ECAM.
    pub const CONFIG_SIZE: usize = 0x1000;
}

/// A device on the PCI bus.
pub trait PciDevice: Send {
    /// Reads the dword at `offset` (a multiple of 4, below 4096) of its
    /// configuration space.
    fn read_config(&mut self, offset: usize) -> u32;
    /// Writes `data` (1, 2 or 4 bytes, inside one dword) at `offset`.
    fn write_config(&mut self, offset: usize, data: &[u8]);
    /// Its BARs as the guest last programmed them, by register index.
    fn bars(&self) -> Vec<(usize, Bar)>;
    /// The command register's decode bits: (I/O, memory).
    fn decoding(&self) -> (bool, bool);
    /// Where BAR `index` is live now (None: nowhere). Devices that map a BAR
    /// straight into the guest move the mapping here.
    fn place_bar(&mut self, index: usize, at: Option<u64>) {
        let _ = (index, at);
    }
    /// A trapped read of BAR `index` at `offset`; the access lies inside it.
    fn read_bar(&mut self, index: usize, offset: u64, data: &mut [u8]);
    /// A trapped write of BAR `index` at `offset`; the access lies inside it.
    fn write_bar(&mut self, index: usize, offset: u64, data: &[u8]);
    /// Interrupts the device raised, when they bypass Subzero and only the
    /// host counts them (a passthrough device's MSI-X).
    fn interrupts(&self) -> Option<u64> {
        None
    }
}

/// `old` with `data` written at byte `shift` (0 to 3) of it; bytes past the
/// dword are dropped.
pub fn merge_dword(old: u32, shift: usize, data: &[u8]) -> u32 {
    let mut bytes = old.to_le_bytes();
    for (i, b) in data.iter().enumerate() {
        if let Some(slot) = bytes.get_mut(shift + i) {
            *slot = *b;
        }
    }
    u32::from_le_bytes(bytes)
}

/// The bytes of `value` that a `len`-byte read at byte `shift` returns.
pub fn dword_bytes(value: u32, shift: usize, data: &mut [u8]) {
    let bytes = value.to_le_bytes();
    for (i, b) in data.iter_mut().enumerate() {
        *b = bytes.get(shift + i).copied().unwrap_or(0xff);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_dword_access() {
        assert_eq!(merge_dword(0x1122_3344, 1, &[0xaa, 0xbb]), 0x11bb_aa44);
        assert_eq!(merge_dword(0x1122_3344, 3, &[0xaa, 0xbb]), 0xaa22_3344);
        let mut d = [0u8; 2];
        dword_bytes(0x1122_3344, 2, &mut d);
        assert_eq!(d, [0x22, 0x11]);
        dword_bytes(0x1122_3344, 3, &mut d);
        assert_eq!(d, [0x11, 0xff]);
    }
}
