//! The passthrough device against a fake VFIO device: what the guest sees,
//! and what a hostile guest cannot do.

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use super::backend::{
    BarMapper, MsiVectors, MsixVectorsRef, RegionInfo, VfioBackend, CONFIG_REGION,
};
use super::device::VfioPciDevice;
use crate::pci::msix::MsiMessage;
use crate::pci::root::PciRoot;
use crate::pci::{regs, BarAllocator, PciWindows};

/// What the fake hardware saw.
#[derive(Default)]
struct Log {
    config_writes: Vec<(u64, Vec<u8>)>,
    bar_writes: Vec<(u32, u64, Vec<u8>)>,
    msix_enabled: bool,
    msi_enabled: Option<usize>,
    resets: u32,
    placed: Vec<(usize, Option<u64>)>,
    prepared: Vec<(u32, u64, u64)>,
    vectors: Vec<(usize, Option<MsiMessage>)>,
}

type Shared = Arc<Mutex<Log>>;

/// An NVMe-like function: 16 KiB 64-bit BAR 0 with the MSI-X table at 0x2000
/// and the PBA at 0x3000, MSI at 0x50 and MSI-X (4 vectors) at 0x70.
struct FakeHw {
    config: Mutex<[u8; 256]>,
    log: Shared,
}

/// A function with MSI only: the header above with MSI-X unlinked, and a
/// 64-bit maskable MSI capability that can do 4 vectors.
fn msi_only_header() -> [u8; 256] {
    let mut c = header();
    c[0x51] = 0; // MSI is the last capability
    c[0x52..0x54].copy_from_slice(&((2u16 << 1) | (1 << 7) | (1 << 8)).to_le_bytes());
    c
}

impl VfioBackend for FakeHw {
    fn region(&self, index: u32) -> Option<RegionInfo> {
        match index {
            0 => Some(RegionInfo {
                size: 0x4000,
                mmap: true,
                sparse: None,
            }),
            CONFIG_REGION => Some(RegionInfo {
                size: 256,
                mmap: false,
                sparse: None,
            }),
            _ => None,
        }
    }
    fn read(&self, index: u32, offset: u64, data: &mut [u8]) {
        if index == CONFIG_REGION {
            let c = self.config.lock().unwrap();
            for (i, b) in data.iter_mut().enumerate() {
                *b = c.get(offset as usize + i).copied().unwrap_or(0xff);
            }
        } else {
            data.fill(0x5a);
        }
    }
    fn write(&self, index: u32, offset: u64, data: &[u8]) {
        let mut log = self.log.lock().unwrap();
        if index == CONFIG_REGION {
            log.config_writes.push((offset, data.to_vec()));
        } else {
            log.bar_writes.push((index, offset, data.to_vec()));
        }
    }
    fn enable_msix(&self, vectors: &MsixVectorsRef<'_>) -> Result<(), String> {
        assert_eq!(vectors.0.len(), 4);
        self.log.lock().unwrap().msix_enabled = true;
        Ok(())
    }
    fn disable_msix(&self) {
        self.log.lock().unwrap().msix_enabled = false;
    }
    fn enable_msi(&self, vectors: &MsixVectorsRef<'_>) -> Result<(), String> {
        self.log.lock().unwrap().msi_enabled = Some(vectors.0.len());
        Ok(())
    }
    fn disable_msi(&self) {
        self.log.lock().unwrap().msi_enabled = None;
    }
    fn reset(&self) {
        self.log.lock().unwrap().resets += 1;
    }
    fn host_interrupts(&self) -> Option<u64> {
        Some(7)
    }
}

struct FakeMapper(Shared);

impl BarMapper for FakeMapper {
    fn prepare(&mut self, index: u32, offset: u64, len: u64) -> Result<usize, String> {
        let mut log = self.0.lock().unwrap();
        log.prepared.push((index, offset, len));
        Ok(log.prepared.len() - 1)
    }
    fn place(&mut self, area: usize, gpa: Option<u64>) -> Result<(), String> {
        self.0.lock().unwrap().placed.push((area, gpa));
        Ok(())
    }
}

struct FakeVectors(Shared, Vec<EventFd>);

/// The MSI vectors' log is kept apart from MSI-X's.
type VectorLog = Arc<Mutex<Vec<(usize, Option<MsiMessage>)>>>;

struct FakeMsiVectors(VectorLog, Vec<EventFd>);

impl MsiVectors for FakeMsiVectors {
    fn len(&self) -> usize {
        self.1.len()
    }
    fn eventfds(&self) -> MsixVectorsRef<'_> {
        MsixVectorsRef(self.1.iter().collect())
    }
    fn set(&mut self, index: usize, message: Option<MsiMessage>) {
        self.0.lock().unwrap().push((index, message));
    }
}

impl MsiVectors for FakeVectors {
    fn len(&self) -> usize {
        self.1.len()
    }
    fn eventfds(&self) -> MsixVectorsRef<'_> {
        MsixVectorsRef(self.1.iter().collect())
    }
    fn set(&mut self, index: usize, message: Option<MsiMessage>) {
        self.0.lock().unwrap().vectors.push((index, message));
    }
}

fn header() -> [u8; 256] {
    let mut c = [0u8; 256];
    c[0..4].copy_from_slice(&0x0010_1b36u32.to_le_bytes());
    c[6] = regs::STATUS_CAP_LIST as u8;
    c[0x08..0x0c].copy_from_slice(&0x0108_0200u32.to_le_bytes());
    c[0x10] = 0b100; // 64-bit memory BAR
    c[0x30..0x34].copy_from_slice(&0xfffe_0001u32.to_le_bytes()); // a ROM
    c[0x34] = 0x50;
    c[0x3d] = 1; // INTA
    c[0x50..0x52].copy_from_slice(&[regs::CAP_MSI, 0x70]);
    c[0x70..0x74].copy_from_slice(&[regs::CAP_MSIX, 0x00, 0x03, 0x00]);
    c[0x74..0x78].copy_from_slice(&0x2000u32.to_le_bytes());
    c[0x78..0x7c].copy_from_slice(&0x3000u32.to_le_bytes());
    c
}

fn windows() -> PciWindows {
    crate::pci::root::test_windows()
}

fn device(log: &Shared) -> VfioPciDevice {
    device_with(log, header(), None)
}

fn device_with(log: &Shared, config: [u8; 256], msi: Option<Box<dyn MsiVectors>>) -> VfioPciDevice {
    let hw = FakeHw {
        config: Mutex::new(config),
        log: log.clone(),
    };
    let vectors = FakeVectors(
        log.clone(),
        (0..4).map(|_| EventFd::new(0).unwrap()).collect(),
    );
    let w = windows();
    let mut alloc = BarAllocator::new(w.io, w.mem32, w.mem64);
    VfioPciDevice::new(
        "vfio-0000:00:04.0",
        Box::new(hw),
        Box::new(FakeMapper(log.clone())),
        Box::new(vectors),
        msi,
        &mut alloc,
    )
    .unwrap()
}

fn rd(root: &mut PciRoot, reg: u64) -> u32 {
    let mut d = [0u8; 4];
    root.ecam(1 << 15 | reg, &mut d, false);
    u32::from_le_bytes(d)
}

fn wr(root: &mut PciRoot, reg: u64, data: &[u8]) {
    root.ecam(1 << 15 | reg, &mut data.to_vec(), true);
}

fn on_bus() -> (PciRoot, Shared) {
    let log = Shared::default();
    let mut root = PciRoot::new(windows());
    assert_eq!(
        root.add("vfio-0000:00:04.0", Box::new(device(&log)))
            .unwrap(),
        1
    );
    (root, log)
}

#[test]
fn the_guest_sees_the_device_with_msi_hidden_and_no_intx_or_rom() {
    let (mut root, log) = on_bus();
    assert_eq!(rd(&mut root, 0), 0x0010_1b36);
    assert_eq!(rd(&mut root, 8), 0x0108_0200, "class passes through");
    assert_eq!(
        rd(&mut root, 0x10),
        0x4,
        "64-bit BAR at its window address (low half)"
    );
    assert_eq!(rd(&mut root, 0x14), 1, "in the 64-bit window at 4 GiB");
    assert_eq!(rd(&mut root, 0x30), 0, "no expansion ROM");
    assert_eq!(
        rd(&mut root, 0x34),
        0x70,
        "the list starts past the hidden MSI"
    );
    assert_eq!(rd(&mut root, 0x3c) >> 8 & 0xff, 0, "interrupt pin: none");
    assert_eq!(rd(&mut root, 0x50), 0, "MSI reads as nothing");
    assert_eq!(
        rd(&mut root, 0x70),
        0x0003_0011,
        "MSI-X, 4 vectors, disabled, last in the list"
    );
    assert_eq!(rd(&mut root, 0x100), 0, "no extended capabilities");
    // The MSI-X table page is cut out of the mapping; the rest is mapped.
    assert_eq!(log.lock().unwrap().prepared, [(0, 0, 0x2000)]);
}

#[test]
fn a_moved_bar_moves_its_mapping_and_decoding_gates_it() {
    let (mut root, log) = on_bus();
    wr(&mut root, 4, &(regs::CMD_MEMORY | 4).to_le_bytes());
    assert_eq!(log.lock().unwrap().placed, [(0, Some(1 << 32))]);
    assert!(
        log.lock().unwrap().config_writes.contains(&(4, vec![6, 0])),
        "bus master reaches the device"
    );
    wr(&mut root, 0x10, &0xc000_0000u32.to_le_bytes());
    wr(&mut root, 0x14, &0u32.to_le_bytes());
    assert_eq!(
        log.lock().unwrap().placed.last(),
        Some(&(0, Some(0xc000_0000)))
    );
    wr(&mut root, 4, &0u16.to_le_bytes());
    assert_eq!(log.lock().unwrap().placed.last(), Some(&(0, None)));
}

#[test]
fn msix_vectors_become_routes_only_when_sound() {
    let (mut root, log) = on_bus();
    wr(&mut root, 4, &regs::CMD_MEMORY.to_le_bytes());
    let table = 1u64 << 32 | 0x2000;
    let entry = |root: &mut PciRoot, v: u64, addr: u64, data: u32, ctrl: u32| {
        root.bar_access(false, table + v * 16, &mut addr.to_le_bytes(), true);
        root.bar_access(false, table + v * 16 + 8, &mut data.to_le_bytes(), true);
        root.bar_access(false, table + v * 16 + 12, &mut ctrl.to_le_bytes(), true);
    };
    entry(&mut root, 0, 0xfee0_0000, 0x4021, 0);
    entry(&mut root, 1, 0x0010_0000, 0x4022, 0); // aimed at RAM
                                                 // Enable MSI-X through a word write of the control register.
    wr(&mut root, 0x72, &0x8000u16.to_le_bytes());
    assert!(log.lock().unwrap().msix_enabled);
    assert_eq!(rd(&mut root, 0x70) >> 16, 0x8003);
    let v = log.lock().unwrap().vectors.clone();
    let want = MsiMessage {
        address: 0xfee0_0000,
        data: 0x4021,
    };
    assert!(v.contains(&(0, Some(want))), "{v:?}");
    assert!(
        v.contains(&(1, None)),
        "a vector aimed at RAM stays off: {v:?}"
    );
    assert!(!v.iter().any(|(i, m)| *i == 1 && m.is_some()));
    // The table reads back; masking the vector takes its route down.
    let mut d = [0u8; 4];
    root.bar_access(false, table + 8, &mut d, false);
    assert_eq!(u32::from_le_bytes(d), 0x4021);
    entry(&mut root, 0, 0xfee0_0000, 0x4021, 1);
    assert_eq!(log.lock().unwrap().vectors.last(), Some(&(0, None)));
    assert_eq!(
        root.counters()[0].2.interrupts,
        Some(7),
        "the host's count while enabled"
    );
    // Function mask, then disable: VFIO lets go of the vectors; the count
    // of that enable is kept, and the next one adds to it.
    wr(&mut root, 0x72, &0xc000u16.to_le_bytes());
    wr(&mut root, 0x72, &0u16.to_le_bytes());
    assert!(!log.lock().unwrap().msix_enabled);
    assert_eq!(root.counters()[0].2.interrupts, Some(7));
    wr(&mut root, 0x72, &0x8000u16.to_le_bytes());
    assert_eq!(root.counters()[0].2.interrupts, Some(14));
    wr(&mut root, 0x72, &0u16.to_le_bytes());
    // The table never reached the hardware.
    assert!(log.lock().unwrap().bar_writes.is_empty());
}

#[test]
fn a_hostile_guest_gets_nothing() {
    let (mut root, log) = on_bus();
    wr(&mut root, 4, &regs::CMD_MEMORY.to_le_bytes());
    // Garbage over the whole config space, every width and offset.
    for reg in 0..0x1000u64 {
        wr(&mut root, reg, &[0xff]);
        if reg % 2 == 0 {
            wr(&mut root, reg, &[0xa5, 0x5a]);
        }
    }
    assert_eq!(rd(&mut root, 0), 0x0010_1b36, "ids are read-only");
    assert_eq!(rd(&mut root, 0x30), 0, "still no ROM");
    assert_eq!(rd(&mut root, 0x50), 0, "MSI still hidden");
    let w = log.lock().unwrap().config_writes.clone();
    assert!(
        w.iter()
            .all(|(off, _)| *off < 0x100 && !(0x50..0x68).contains(off)),
        "no write to the hidden MSI or past 256 bytes"
    );
    assert!(
        w.iter().all(|(off, _)| !(0x10..0x28).contains(off)
            && !(0x70..0x7c).contains(off)
            && *off != 0x30),
        "BARs, ROM and MSI-X stay virtual"
    );
    // BAR 0 over RAM, and over the IOAPIC: not mapped.
    for addr in [0x0010_0000u32, 0xfec0_0000] {
        wr(&mut root, 4, &regs::CMD_MEMORY.to_le_bytes());
        wr(&mut root, 0x10, &addr.to_le_bytes());
        wr(&mut root, 0x14, &0u32.to_le_bytes());
        assert_eq!(
            log.lock().unwrap().placed.last(),
            Some(&(0, None)),
            "{addr:#x}"
        );
    }
    // Accesses past the BAR's end never reach the device.
    wr(&mut root, 0x10, &0xc000_0000u32.to_le_bytes());
    let before = log.lock().unwrap().bar_writes.len();
    root.bar_access(false, 0xc000_3ffe, &mut [1, 2, 3, 4], true);
    root.bar_access(false, 0xc000_4000, &mut [1, 2, 3, 4], true);
    assert_eq!(log.lock().unwrap().bar_writes.len(), before);
    root.bar_access(false, 0xc000_0100, &mut [1, 2, 3, 4], true);
    assert_eq!(
        log.lock().unwrap().bar_writes.last(),
        Some(&(0, 0x100, vec![1, 2, 3, 4]))
    );
    // Malformed MSI-X table accesses are dropped; no vector ever delivered.
    root.bar_access(false, 0xc000_2001, &mut [1], true);
    let v = log.lock().unwrap().vectors.clone();
    assert!(v.iter().all(|(_, m)| m.is_none()), "{v:?}");
}

#[test]
fn the_device_is_reset_when_the_vm_ends() {
    let (mut root, log) = on_bus();
    wr(&mut root, 0x72, &0x8000u16.to_le_bytes());
    assert!(log.lock().unwrap().msix_enabled);
    drop(root);
    let l = log.lock().unwrap();
    assert_eq!(l.resets, 1);
    assert!(!l.msix_enabled, "interrupts off before the reset");
}

#[test]
fn a_device_with_no_config_space_is_refused() {
    let log = Shared::default();
    let hw = FakeHw {
        config: Mutex::new([0xff; 256]),
        log: log.clone(),
    };
    let w = windows();
    let mut alloc = BarAllocator::new(w.io, w.mem32, w.mem64);
    let err = VfioPciDevice::new(
        "vfio-x",
        Box::new(hw),
        Box::new(FakeMapper(log.clone())),
        Box::new(FakeVectors(log, vec![])),
        None,
        &mut alloc,
    )
    .err()
    .expect("refused");
    assert!(err.to_string().contains("all ones"), "{err}");
}

#[test]
fn a_device_with_only_msi_gets_its_vectors_routed() {
    let log = Shared::default();
    let msi_log = VectorLog::default();
    let msi = FakeMsiVectors(
        msi_log.clone(),
        (0..4).map(|_| EventFd::new(0).unwrap()).collect(),
    );
    let mut root = PciRoot::new(windows());
    let dev = device_with(&log, msi_only_header(), Some(Box::new(msi)));
    root.add("vfio-0000:00:04.0", Box::new(dev)).unwrap();
    assert_eq!(rd(&mut root, 0x34), 0x50, "MSI is the list now");
    assert_eq!(rd(&mut root, 0x50) & 0xffff, 0x0005, "MSI, last");
    assert_eq!(
        rd(&mut root, 0x50) >> 16,
        0x184,
        "64-bit, maskable, 4 vectors, disabled"
    );
    wr(&mut root, 0x54, &0xfee0_2000u32.to_le_bytes());
    wr(&mut root, 0x58, &0u32.to_le_bytes());
    wr(&mut root, 0x5c, &0x4050u32.to_le_bytes());
    assert!(
        msi_log.lock().unwrap().iter().all(|(_, m)| m.is_none()),
        "nothing while disabled"
    );
    // Enable with 2 vectors.
    wr(&mut root, 0x52, &(0x184u16 | 1 | (1 << 4)).to_le_bytes());
    assert_eq!(
        log.lock().unwrap().msi_enabled,
        Some(2),
        "VFIO gets two eventfds"
    );
    let routed = |v: usize| {
        msi_log
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(i, _)| *i == v)
            .and_then(|(_, m)| *m)
    };
    assert_eq!(
        routed(0),
        Some(MsiMessage {
            address: 0xfee0_2000,
            data: 0x4050
        })
    );
    assert_eq!(
        routed(1),
        Some(MsiMessage {
            address: 0xfee0_2000,
            data: 0x4051
        })
    );
    assert_eq!(routed(2), None, "not enabled");
    // Mask vector 1; aim the message at RAM: both off.
    wr(&mut root, 0x60, &0b10u32.to_le_bytes());
    assert_eq!(routed(1), None);
    assert!(routed(0).is_some());
    wr(&mut root, 0x54, &0x0010_0000u32.to_le_bytes());
    assert_eq!(routed(0), None, "an address that is no interrupt");
    assert!(
        log.lock()
            .unwrap()
            .config_writes
            .iter()
            .all(|(off, _)| !(0x50..0x68).contains(off)),
        "MSI stays virtual"
    );
    // Disable.
    wr(&mut root, 0x52, &0x184u16.to_le_bytes());
    assert_eq!(log.lock().unwrap().msi_enabled, None);
    drop(root);
    assert_eq!(log.lock().unwrap().resets, 1);
}
