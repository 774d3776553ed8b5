//! A host PCI device on the guest's PCI bus, through VFIO.
//!
//! BARs get addresses from Subzero's windows; the parts VFIO lets us mmap go
//! into the guest as KVM memory slots, so the guest's driver reaches the
//! hardware without exits. The MSI-X table and pending bits stay trapped:
//! each vector the guest programs becomes a KVM route, and VFIO signals its
//! eventfd straight into KVM. Everything else is read and written through
//! VFIO's regions, which the host kernel checks again.

use super::backend::{BarMapper, MsiVectors, VfioBackend, CONFIG_REGION};
use super::config::{self, Capabilities, MSIX_CAP_LEN};
use crate::pci::msi::Msi;
use crate::pci::msix::Msix;
use crate::pci::{merge_dword, regs, Bar, BarAllocator, BarKind, Bars, PciDevice};

const PAGE: u64 = 4096;

/// A BAR's areas that are mapped into the guest: (mapper handle, offset).
type Areas = Vec<(usize, u64)>;

/// Why a passthrough device could not be put on the bus.
#[derive(Debug, thiserror::Error)]
pub enum PassthroughError {
    /// The device's configuration space reads as nothing.
    #[error("{0}: its configuration space reads as all ones (is the device powered and bound to vfio-pci?)")]
    NoConfig(String),
    /// A BAR has no room.
    #[error("{name}: BAR {index}: {source}")]
    Bar {
        /// Device.
        name: String,
        /// BAR index.
        index: usize,
        /// What failed.
        #[source]
        source: crate::pci::bar::NoRoom,
    },
}

/// A passthrough device.
pub struct VfioPciDevice {
    name: String,
    backend: Box<dyn VfioBackend>,
    mapper: Box<dyn BarMapper>,
    vectors: Box<dyn MsiVectors>,
    caps: Capabilities,
    bars: Bars,
    areas: [Areas; 6],
    command: u16,
    interrupt_line: u8,
    msix: Option<Msix>,
    msix_live: bool,
    /// Host interrupts of earlier MSI-X enables (VFIO's count restarts).
    past_interrupts: u64,
    /// MSI, for a device without MSI-X: the capability's offset and state.
    msi: Option<(usize, Msi)>,
    msi_vectors: Option<Box<dyn MsiVectors>>,
    /// MSI vectors VFIO has now (0: MSI off).
    msi_live: usize,
}

impl VfioPciDevice {
    /// Reads the device's header, sizes its BARs from its regions and takes
    /// addresses for them from `allocator`. `vectors` serve MSI-X, and
    /// `msi_vectors` (if VFIO offers MSI) serve MSI on a device without MSI-X.
    pub fn new(
        name: &str,
        backend: Box<dyn VfioBackend>,
        mut mapper: Box<dyn BarMapper>,
        vectors: Box<dyn MsiVectors>,
        msi_vectors: Option<Box<dyn MsiVectors>>,
        allocator: &mut BarAllocator,
    ) -> Result<Self, PassthroughError> {
        let mut header = [0u8; regs::LEGACY_CONFIG_SIZE];
        backend.read(CONFIG_REGION, 0, &mut header);
        if header[..4] == [0xff; 4] {
            return Err(PassthroughError::NoConfig(name.into()));
        }
        let caps = config::parse(&header);
        let mut bars = Bars::default();
        let mut index = 0;
        while index < 6 {
            let reg = u32::from_le_bytes(
                header[regs::BAR0 + 4 * index..][..4]
                    .try_into()
                    .expect("4 bytes"),
            );
            let kind = BarKind::from_register(reg);
            let size = backend.region(index as u32).map_or(0, |r| r.size);
            if size > 0 {
                let bar = Bar::new(kind, size, 0);
                let addr =
                    allocator
                        .allocate(kind, bar.size)
                        .map_err(|source| PassthroughError::Bar {
                            name: name.into(),
                            index,
                            source,
                        })?;
                bars.set(index, Bar { addr, ..bar });
            }
            index += if matches!(kind, BarKind::Mem64 { .. }) {
                2
            } else {
                1
            };
        }
        let msix = caps
            .msix
            .map(|m| Msix::new(m.vectors.min(vectors.len().max(1) as u16)));
        let mut areas: [Areas; 6] = Default::default();
        for (i, bar) in bars.iter() {
            let Some(info) = backend
                .region(i as u32)
                .filter(|r| r.mmap && !bar.kind.is_io())
            else {
                continue;
            };
            let mut holes = Vec::new();
            if let (Some(m), Some(table)) = (caps.msix, &msix) {
                if m.table.0 == i {
                    holes.push((m.table.1, table.table_size()));
                }
                if m.pba.0 == i {
                    holes.push((m.pba.1, table.pba_size()));
                }
            }
            let mappable = info.sparse.clone().unwrap_or_else(|| vec![(0, info.size)]);
            for (offset, len) in subtract(&mappable, &holes, info.size) {
                match mapper.prepare(i as u32, offset, len) {
                    Ok(handle) => areas[i].push((handle, offset)),
                    Err(e) => log::warn!("{name}: BAR {i} at +{offset:#x} stays trapped: {e}"),
                }
            }
        }
        let command = u16::from_le_bytes([header[regs::COMMAND], header[regs::COMMAND + 1]]);
        let msi = caps.msi.map(|(at, control)| (at, Msi::new(control)));
        Ok(VfioPciDevice {
            name: name.into(),
            backend,
            mapper,
            vectors,
            caps,
            bars,
            areas,
            command,
            interrupt_line: 0,
            msix,
            msix_live: false,
            past_interrupts: 0,
            msi,
            msi_vectors,
            msi_live: 0,
        })
    }

    /// The host device's address, from its name (`vfio-<bdf>`).
    pub fn bdf(&self) -> &str {
        self.name.strip_prefix("vfio-").unwrap_or(&self.name)
    }

    /// Whether the guest enabled MSI-X (and VFIO took the eventfds).
    pub fn msix_enabled(&self) -> bool {
        self.msix_live
    }

    fn real(&self, offset: usize) -> u32 {
        let mut d = [0u8; 4];
        self.backend.read(CONFIG_REGION, offset as u64, &mut d);
        u32::from_le_bytes(d)
    }

    fn msix_cap(&self) -> Option<usize> {
        self.caps.msix.map(|m| m.offset)
    }

    fn write_msix_control(&mut self, value: u16) {
        let Some(msix) = self.msix.as_mut() else {
            return;
        };
        let changed = msix.write_control(value);
        let want = msix.enabled();
        if want && !self.msix_live {
            match self.backend.enable_msix(&self.vectors.eventfds()) {
                Ok(()) => self.msix_live = true,
                Err(e) => log::warn!("{}: enabling MSI-X failed: {e}", self.name),
            }
        } else if !want && self.msix_live {
            self.past_interrupts += self.backend.host_interrupts().unwrap_or(0);
            self.backend.disable_msix();
            self.msix_live = false;
        }
        for v in changed {
            self.update_vector(v);
        }
    }

    /// MSI's registers changed: VFIO gets the vectors the guest enabled
    /// (again, if that number changed), and each vector its route.
    fn update_msi(&mut self) {
        let (Some((_, msi)), Some(vectors)) = (&self.msi, self.msi_vectors.as_mut()) else {
            return;
        };
        let want = if msi.enabled() {
            msi.vectors().min(vectors.len())
        } else {
            0
        };
        if want != self.msi_live {
            if self.msi_live > 0 {
                self.past_interrupts += self.backend.host_interrupts().unwrap_or(0);
                self.backend.disable_msi();
                self.msi_live = 0;
            }
            if want > 0 {
                let fds = vectors.eventfds();
                let fds = super::backend::MsixVectorsRef(fds.0[..want].to_vec());
                match self.backend.enable_msi(&fds) {
                    Ok(()) => self.msi_live = want,
                    Err(e) => log::warn!("{}: enabling MSI failed: {e}", self.name),
                }
            }
        }
        for v in 0..vectors.len() {
            let message = if v < self.msi_live {
                msi.message(v)
            } else {
                None
            };
            vectors.set(v, message);
        }
    }

    fn msi_rel(&self, offset: usize) -> Option<usize> {
        let (at, msi) = self.msi.as_ref()?;
        (offset >= *at && offset < at + msi.len()).then(|| offset - at)
    }

    fn update_vector(&mut self, v: usize) {
        let Some(msix) = self.msix.as_mut() else {
            return;
        };
        if v < self.vectors.len() {
            let message = msix.message(v);
            self.vectors.set(v, message);
        }
    }

    /// Where `offset` in BAR `index` falls: the MSI-X table, the PBA, or neither.
    fn msix_part(&self, index: usize, offset: u64) -> Option<(bool, u64)> {
        let (m, t) = (self.caps.msix?, self.msix.as_ref()?);
        let inside = |(bar, start): (usize, u64), len: u64| {
            (bar == index && offset >= start && offset < start + len).then(|| offset - start)
        };
        inside(m.table, t.table_size())
            .map(|o| (true, o))
            .or_else(|| inside(m.pba, t.pba_size()).map(|o| (false, o)))
    }
}

/// `areas` (offset, len) minus `holes` widened to whole pages, clipped to `size`.
fn subtract(areas: &[(u64, u64)], holes: &[(u64, u64)], size: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for &(start, len) in areas {
        let mut pieces = vec![(start.min(size), start.saturating_add(len).min(size))];
        for &(h, hlen) in holes {
            let (hs, he) = (
                h / PAGE * PAGE,
                h.saturating_add(hlen).div_ceil(PAGE) * PAGE,
            );
            pieces = pieces
                .into_iter()
                .flat_map(|(s, e)| [(s, e.min(hs)), (s.max(he), e)])
                .filter(|(s, e)| s < e)
                .collect();
        }
        out.extend(
            pieces
                .into_iter()
                .filter(|(s, e)| s % PAGE == 0 && (e - s) % PAGE == 0)
                .map(|(s, e)| (s, e - s)),
        );
    }
    out
}

impl PciDevice for VfioPciDevice {
    fn read_config(&mut self, offset: usize) -> u32 {
        if offset >= regs::LEGACY_CONFIG_SIZE {
            return 0;
        }
        match offset {
            regs::COMMAND => {
                let mut status = (self.real(offset) >> 16) as u16;
                if self.caps.first == 0 {
                    status &= !regs::STATUS_CAP_LIST;
                }
                u32::from(status) << 16 | u32::from(self.command)
            }
            0x10..=0x27 => self.bars.read((offset - regs::BAR0) / 4),
            regs::ROM => 0,
            regs::CAP_POINTER => u32::from(self.caps.first),
            // Interrupt pin 0: no INTx, MSI-X only.
            regs::INTERRUPT => (self.real(offset) & 0xffff_0000) | u32::from(self.interrupt_line),
            _ if offset < 0x40 => self.real(offset),
            _ if self.caps.is_hidden(offset) => 0,
            _ if self.msi_rel(offset).is_some() => {
                let rel = self.msi_rel(offset).unwrap_or(0);
                let value = self.msi.as_ref().map_or(0, |(_, m)| m.read(rel));
                if rel == 0 {
                    let next = self.caps.next_of(offset).unwrap_or(0);
                    value | u32::from(regs::CAP_MSI) | u32::from(next) << 8
                } else {
                    value
                }
            }
            _ => {
                let mut bytes = self.real(offset).to_le_bytes();
                if let Some(next) = self.caps.next_of(offset) {
                    bytes[1] = next;
                }
                if Some(offset) == self.msix_cap() {
                    if let Some(m) = &self.msix {
                        bytes[2..4].copy_from_slice(&m.control().to_le_bytes());
                    }
                }
                u32::from_le_bytes(bytes)
            }
        }
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) {
        let reg = offset & !3;
        let shift = offset & 3;
        match reg {
            _ if offset >= regs::LEGACY_CONFIG_SIZE => {}
            regs::COMMAND => {
                // Command and status go to the device (the host kernel vets
                // them); the decode bits also say where the BARs are live.
                self.backend.write(CONFIG_REGION, offset as u64, data);
                let merged = merge_dword(u32::from(self.command), shift, data);
                self.command = merged as u16;
            }
            0x10..=0x27 => {
                let r = (reg - regs::BAR0) / 4;
                let value = merge_dword(self.bars.read(r), shift, data);
                self.bars.write(r, value);
            }
            regs::HEADER_TYPE if shift < 2 => self.backend.write(
                CONFIG_REGION,
                offset as u64,
                &data[..data.len().min(2 - shift)],
            ),
            regs::INTERRUPT if shift == 0 => self.interrupt_line = data[0],
            _ if reg < 0x40 => {}
            _ if self.caps.is_hidden(offset) => {}
            _ if self.msi_rel(offset).is_some() => {
                let rel = self.msi_rel(offset).unwrap_or(0);
                let changed = self.msi.as_mut().is_some_and(|(_, m)| m.write(rel, data));
                if changed {
                    self.update_msi();
                }
            }
            _ => match self.msix_cap() {
                Some(cap) if (cap..cap + MSIX_CAP_LEN).contains(&offset) => {
                    if reg == cap && shift + data.len() > 2 {
                        let old = u32::from(self.msix.as_ref().map_or(0, Msix::control)) << 16;
                        let control = (merge_dword(old, shift, data) >> 16) as u16;
                        self.write_msix_control(control);
                    }
                }
                _ => self.backend.write(CONFIG_REGION, offset as u64, data),
            },
        }
    }

    fn bars(&self) -> Vec<(usize, Bar)> {
        self.bars.iter().map(|(i, b)| (i, *b)).collect()
    }

    fn decoding(&self) -> (bool, bool) {
        (
            self.command & regs::CMD_IO != 0,
            self.command & regs::CMD_MEMORY != 0,
        )
    }

    fn place_bar(&mut self, index: usize, at: Option<u64>) {
        for &(handle, offset) in self.areas.get(index).into_iter().flatten() {
            if let Err(e) = self.mapper.place(handle, at.map(|a| a + offset)) {
                log::warn!(
                    "{}: BAR {index} +{offset:#x}: {e}; accesses there now exit",
                    self.name
                );
            }
        }
    }

    fn interrupts(&self) -> Option<u64> {
        let now = if self.msix_live {
            self.backend.host_interrupts()?
        } else {
            0
        };
        Some(self.past_interrupts + now)
    }

    fn read_bar(&mut self, index: usize, offset: u64, data: &mut [u8]) {
        match self.msix_part(index, offset) {
            Some((true, o)) => self.msix.as_ref().expect("MSI-X").read_table(o, data),
            Some((false, _)) | None => self.backend.read(index as u32, offset, data),
        }
    }

    fn write_bar(&mut self, index: usize, offset: u64, data: &[u8]) {
        match self.msix_part(index, offset) {
            Some((true, o)) => {
                if let Some(v) = self.msix.as_mut().and_then(|m| m.write_table(o, data)) {
                    self.update_vector(v);
                }
            }
            Some((false, _)) => {}
            None => self.backend.write(index as u32, offset, data),
        }
    }
}

impl Drop for VfioPciDevice {
    /// Leaves the device as the host can bind it again: interrupts off, reset.
    fn drop(&mut self) {
        if self.msix_live {
            self.backend.disable_msix();
        }
        if self.msi_live > 0 {
            self.backend.disable_msi();
        }
        self.backend.reset();
        log::info!("{}: reset and released", self.name);
    }
}

#[cfg(test)]
mod subtract_tests {
    use super::subtract;

    #[test]
    fn the_msix_pages_are_cut_out() {
        let whole = [(0, 0x4000)];
        assert_eq!(
            subtract(&whole, &[(0x2000, 0x100)], 0x4000),
            [(0, 0x2000), (0x3000, 0x1000)]
        );
        assert_eq!(
            subtract(&whole, &[(0x2000, 0x100), (0x3000, 8)], 0x4000),
            [(0, 0x2000)]
        );
        assert_eq!(subtract(&whole, &[(0x2800, 0x1000)], 0x4000), [(0, 0x2000)]);
        assert_eq!(
            subtract(&[(0, 0x8000)], &[], 0x4000),
            [(0, 0x4000)],
            "clipped to the region"
        );
        assert!(
            subtract(&[(0x10, 0x100)], &[], 0x4000).is_empty(),
            "not page aligned"
        );
    }
}
