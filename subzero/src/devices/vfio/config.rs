//! The guest's view of a passthrough device's configuration space.
//!
//! The capability list is walked once, from the host's copy. A device with
//! MSI-X has its MSI hidden (its interrupts go through MSI-X); MSI-X, or MSI
//! on a device that has only MSI, is virtualized; the extended space past
//! 256 bytes reads as empty.

use std::ops::Range;

use crate::pci::regs;

/// Most capabilities a walk follows (48 fit in 192 bytes).
const MAX_CAPS: usize = 48;
/// Bytes the MSI capability takes at most (64-bit, per-vector masking).
const MSI_CAP_LEN: usize = 24;
/// Bytes of the MSI-X capability.
pub const MSIX_CAP_LEN: usize = 12;

/// Where a device's MSI-X table and pending bits live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixCap {
    /// Offset of the capability in configuration space.
    pub offset: usize,
    /// Vectors the device has.
    pub vectors: u16,
    /// BAR holding the table, and the table's offset in it.
    pub table: (usize, u64),
    /// BAR holding the pending-bit array, and its offset in it.
    pub pba: (usize, u64),
}

/// The capability list as the guest sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// What the capability pointer (0x34) reads.
    pub first: u8,
    /// Exposed capabilities as (offset, the `next` the guest reads).
    pub exposed: Vec<(usize, u8)>,
    /// Byte ranges of hidden capabilities: they read as zero, writes drop.
    pub hidden: Vec<Range<usize>>,
    /// The MSI-X capability, when the device has a sound one.
    pub msix: Option<MsixCap>,
    /// The MSI capability (offset, control word) of a device without
    /// MSI-X.
    pub msi: Option<(usize, u16)>,
}

fn u16_at(c: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([c[off], c[off + 1]])
}

fn u32_at(c: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(c[off..off + 4].try_into().expect("4 bytes"))
}

/// Walks the capability list of the 256-byte header `config`. A list that
/// loops, points outside the device-specific area or runs past 48 entries
/// ends there.
pub fn parse(config: &[u8; regs::LEGACY_CONFIG_SIZE]) -> Capabilities {
    let mut caps = Capabilities::default();
    let status = u16_at(config, regs::COMMAND + 2);
    if status & regs::STATUS_CAP_LIST == 0 {
        return caps;
    }
    let mut ptr = usize::from(config[regs::CAP_POINTER] & 0xfc);
    let mut seen = Vec::new();
    let mut kept = Vec::new();
    let mut msi = None;
    while ptr >= 0x40
        && ptr + 4 <= regs::LEGACY_CONFIG_SIZE
        && seen.len() < MAX_CAPS
        && !seen.contains(&ptr)
    {
        seen.push(ptr);
        let id = config[ptr];
        let next = usize::from(config[ptr + 1] & 0xfc);
        match id {
            regs::CAP_MSI if msi.is_none() && ptr + MSI_CAP_LEN <= regs::LEGACY_CONFIG_SIZE => {
                msi = Some((ptr, u16_at(config, ptr + 2)));
                kept.push(ptr);
            }
            regs::CAP_MSI => caps
                .hidden
                .push(ptr..(ptr + 4).min(regs::LEGACY_CONFIG_SIZE)),
            regs::CAP_MSIX if ptr + MSIX_CAP_LEN <= regs::LEGACY_CONFIG_SIZE => {
                let control = u16_at(config, ptr + 2);
                let table = u32_at(config, ptr + 4);
                let pba = u32_at(config, ptr + 8);
                let bir = |v: u32| (v & 7) as usize;
                if bir(table) < 6 && bir(pba) < 6 {
                    caps.msix = Some(MsixCap {
                        offset: ptr,
                        vectors: (control & 0x7ff) + 1,
                        table: (bir(table), u64::from(table & !7)),
                        pba: (bir(pba), u64::from(pba & !7)),
                    });
                    kept.push(ptr);
                } else {
                    caps.hidden.push(ptr..ptr + MSIX_CAP_LEN);
                }
            }
            _ => kept.push(ptr),
        }
        ptr = next;
    }
    if let Some((at, _)) = msi {
        if caps.msix.is_some() {
            kept.retain(|&p| p != at);
            caps.hidden.push(at..at + MSI_CAP_LEN);
        } else {
            caps.msi = msi;
        }
    }
    caps.first = kept.first().map_or(0, |&p| p as u8);
    caps.exposed = kept
        .iter()
        .enumerate()
        .map(|(i, &p)| (p, kept.get(i + 1).map_or(0, |&n| n as u8)))
        .collect();
    caps
}

impl Capabilities {
    /// The patched `next` byte if `offset` is an exposed capability's header.
    pub fn next_of(&self, offset: usize) -> Option<u8> {
        self.exposed
            .iter()
            .find(|(p, _)| *p == offset)
            .map(|(_, n)| *n)
    }

    /// Whether byte `offset` belongs to a hidden capability.
    pub fn is_hidden(&self, offset: usize) -> bool {
        self.hidden.iter().any(|r| r.contains(&offset))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header with PM at 0x40, MSI at 0x50, MSI-X at 0x70, PCIe at 0x80.
    pub fn header() -> [u8; 256] {
        let mut c = [0u8; 256];
        c[6] = regs::STATUS_CAP_LIST as u8;
        c[0x34] = 0x40;
        c[0x40..0x42].copy_from_slice(&[0x01, 0x50]);
        c[0x50..0x52].copy_from_slice(&[regs::CAP_MSI, 0x70]);
        c[0x70..0x74].copy_from_slice(&[regs::CAP_MSIX, 0x80, 0x0f, 0x00]);
        c[0x74..0x78].copy_from_slice(&0x2000u32.to_le_bytes());
        c[0x78..0x7c].copy_from_slice(&0x3000u32.to_le_bytes());
        c[0x80..0x82].copy_from_slice(&[0x10, 0x00]);
        c
    }

    #[test]
    fn msi_is_unlinked_and_msix_found() {
        let caps = parse(&header());
        assert_eq!(caps.first, 0x40);
        assert_eq!(caps.exposed, [(0x40, 0x70), (0x70, 0x80), (0x80, 0)]);
        assert!(caps.is_hidden(0x50) && caps.is_hidden(0x67) && !caps.is_hidden(0x68));
        let m = caps.msix.unwrap();
        assert_eq!(
            (m.offset, m.vectors, m.table, m.pba),
            (0x70, 16, (0, 0x2000), (0, 0x3000))
        );
    }

    #[test]
    fn broken_lists_end_the_walk() {
        let mut c = header();
        c[0x81] = 0x40; // PCIe points back to PM: a loop
        assert_eq!(parse(&c).exposed.len(), 3);
        c[0x41] = 0x20; // into the header
        assert_eq!(parse(&c).exposed, [(0x40, 0)]);
        c[0x34] = 0x3c; // into the header
        assert!(parse(&c).exposed.is_empty());
        c[0x34] = 0x70;
        c[0x74] = 7; // table BIR 7 does not exist
        let caps = parse(&c);
        assert_eq!(caps.msix, None);
        assert!(caps.is_hidden(0x70));
        c[6] = 0;
        assert_eq!(parse(&c), Capabilities::default(), "no capability list");
    }

    #[test]
    fn msi_stays_when_there_is_no_msix() {
        let mut c = header();
        c[0x51] = 0x80; // MSI -> PCIe, skipping MSI-X
        c[0x52] = 0x86; // 64-bit, MMC 3
        let caps = parse(&c);
        assert_eq!(caps.msix, None);
        assert_eq!(caps.msi, Some((0x50, 0x86)));
        assert_eq!(caps.exposed, [(0x40, 0x50), (0x50, 0x80), (0x80, 0)]);
        assert!(!caps.is_hidden(0x50));
    }
}
