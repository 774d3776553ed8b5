//! The root complex against a fake device: configuration mechanisms, BAR
//! placement and the hostile placements it refuses.

use super::*;
use crate::pci::{merge_dword, Bars};

type Placements = Arc<Mutex<Vec<(usize, Option<u64>)>>>;
type Writes = Arc<Mutex<Vec<(usize, u64, Vec<u8>)>>>;

/// A device with a 4 KiB memory BAR 0, a 64-bit 16 KiB BAR 2 and an I/O BAR 4.
struct Fake {
    bars: Bars,
    command: u16,
    placed: Placements,
    writes: Writes,
}

fn fake() -> (Fake, Placements, Writes) {
    let mut bars = Bars::default();
    bars.set(
        0,
        Bar::new(BarKind::Mem32 { prefetch: false }, 0x1000, 0xc000_0000),
    );
    bars.set(
        2,
        Bar::new(BarKind::Mem64 { prefetch: false }, 0x4000, 1 << 32),
    );
    bars.set(4, Bar::new(BarKind::Io, 0x20, 0xc000));
    let placed = Placements::default();
    let writes = Arc::new(Mutex::new(Vec::new()));
    let dev = Fake {
        bars,
        command: 0,
        placed: placed.clone(),
        writes: writes.clone(),
    };
    (dev, placed, writes)
}

impl PciDevice for Fake {
    fn read_config(&mut self, offset: usize) -> u32 {
        match offset {
            0 => 0x1234_abcd,
            4 => u32::from(self.command),
            0x10..=0x24 => self.bars.read((offset - 0x10) / 4),
            _ => 0,
        }
    }
    fn write_config(&mut self, offset: usize, data: &[u8]) {
        let reg = offset & !3;
        let merged = merge_dword(self.read_config(reg), offset & 3, data);
        match reg {
            4 => self.command = merged as u16,
            0x10..=0x24 => {
                self.bars.write((reg - 0x10) / 4, merged);
            }
            _ => {}
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
        self.placed.lock().unwrap().push((index, at));
    }
    fn read_bar(&mut self, index: usize, offset: u64, data: &mut [u8]) {
        data.fill(index as u8 * 0x10 + offset as u8);
    }
    fn write_bar(&mut self, index: usize, offset: u64, data: &[u8]) {
        self.writes
            .lock()
            .unwrap()
            .push((index, offset, data.to_vec()));
    }
}

fn windows() -> PciWindows {
    super::test_windows()
}

fn cf8_read(root: &mut PciRoot, address: u32, len: usize) -> Vec<u8> {
    root.config_ports(0, &mut address.to_le_bytes(), true);
    let mut data = vec![0; len];
    root.config_ports(4 + u64::from(address & 3), &mut data, false);
    data
}

fn dword(b: &[u8]) -> u32 {
    u32::from_le_bytes(b.try_into().unwrap())
}

fn ecam_rw(root: &mut PciRoot, slot: u64, reg: u64, value: Option<u32>) -> u32 {
    let off = slot << 15 | reg;
    match value {
        Some(v) => {
            root.ecam(off, &mut v.to_le_bytes(), true);
            0
        }
        None => {
            let mut d = [0u8; 4];
            root.ecam(off, &mut d, false);
            dword(&d)
        }
    }
}

#[test]
fn the_host_bridge_answers_through_ports_and_ecam() {
    let mut root = PciRoot::new(windows());
    // Linux's type 1 probe: a byte at 0xcfb, then the address register reads back.
    root.config_ports(3, &mut [1], true);
    root.config_ports(0, &mut 0x8000_0000u32.to_le_bytes(), true);
    let mut a = [0u8; 4];
    root.config_ports(0, &mut a, false);
    assert_eq!(dword(&a), 0x8000_0000);
    assert_eq!(dword(&cf8_read(&mut root, 0x8000_0000, 4)), 0x0008_1b36);
    assert_eq!(dword(&cf8_read(&mut root, 0x8000_0008, 4)), 0x0600_0000);
    assert_eq!(
        cf8_read(&mut root, 0x8000_000a, 2),
        [0x00, 0x06],
        "class via a word read"
    );
    assert_eq!(
        dword(&cf8_read(&mut root, 0x8000_0800, 4)),
        u32::MAX,
        "slot 1 is empty"
    );
    assert_eq!(
        dword(&cf8_read(&mut root, 0x8000_0100, 4)),
        u32::MAX,
        "function 1"
    );
    assert_eq!(
        dword(&cf8_read(&mut root, 0x8001_0000, 4)),
        u32::MAX,
        "bus 1"
    );
    assert_eq!(
        dword(&cf8_read(&mut root, 0x0000_0000, 4)),
        u32::MAX,
        "enable bit clear"
    );
    assert_eq!(ecam_rw(&mut root, 0, 0, None), 0x0008_1b36);
    assert_eq!(
        ecam_rw(&mut root, 0, 0x100, None),
        0,
        "no extended capabilities"
    );
    assert_eq!(ecam_rw(&mut root, 31, 0, None), u32::MAX);
    let mut d = [0u8; 4];
    root.ecam(1 << 20, &mut d, false);
    assert_eq!(d, [0xff; 4], "bus 1 through ECAM");
    root.ecam(2, &mut d, false);
    assert_eq!(d, [0xff; 4], "a dword access that crosses a dword");
    // Garbage writes change nothing.
    for reg in (0..0x1000).step_by(4) {
        ecam_rw(&mut root, 0, reg, Some(u32::MAX));
    }
    assert_eq!(ecam_rw(&mut root, 0, 0, None), 0x0008_1b36);
    assert_eq!(ecam_rw(&mut root, 0, 8, None), 0x0600_0000);
    assert!(
        root.counters().is_empty(),
        "the bridge is not a device of the report"
    );
}

#[test]
fn bars_go_live_with_decoding_and_follow_the_guest() {
    let mut root = PciRoot::new(windows());
    let (dev, placed, writes) = fake();
    assert_eq!(root.add("fake", Box::new(dev)).unwrap(), 1);
    assert!(placed.lock().unwrap().is_empty(), "decoding is off");
    let mut d = [0u8; 4];
    root.bar_access(false, 0xc000_0000, &mut d, false);
    assert_eq!(d, [0xff; 4], "not live yet");

    ecam_rw(&mut root, 1, 4, Some(u32::from(regs::CMD_MEMORY)));
    assert_eq!(
        *placed.lock().unwrap(),
        [(0, Some(0xc000_0000)), (2, Some(1 << 32))]
    );
    root.bar_access(false, 0xc000_0010, &mut d, false);
    assert_eq!(d, [0x10; 4]);
    root.bar_access(false, (1 << 32) + 4, &mut d, true);
    assert_eq!(writes.lock().unwrap().last().unwrap().0, 2);
    root.bar_access(true, 0xc000, &mut d, false);
    assert_eq!(d, [0xff; 4], "I/O decoding is off");

    // Sizing: all ones reads back the mask; the BAR leaves its place.
    placed.lock().unwrap().clear();
    ecam_rw(&mut root, 1, 0x10, Some(u32::MAX));
    assert_eq!(ecam_rw(&mut root, 1, 0x10, None), 0xffff_f000);
    assert_eq!(
        *placed.lock().unwrap(),
        [(0, None)],
        "0xfffff000 is outside the windows"
    );
    ecam_rw(&mut root, 1, 0x10, Some(0xc010_0000));
    assert_eq!(
        placed.lock().unwrap().last(),
        Some(&(0, Some(0xc010_0000))),
        "a moved BAR moves"
    );
    root.bar_access(false, 0xc000_0010, &mut d, false);
    assert_eq!(d, [0xff; 4], "the old place is gone");
    root.bar_access(false, 0xc010_0ffc, &mut d, false);
    assert_eq!(d, [0xfc; 4]);
    root.bar_access(false, 0xc010_0ffe, &mut d, false);
    assert_eq!(d, [0xff; 4], "an access past the BAR's end");
    let n = writes.lock().unwrap().len();
    root.bar_access(false, 0xc010_0ffe, &mut d, true);
    assert_eq!(
        writes.lock().unwrap().len(),
        n,
        "a write past the end is dropped"
    );
    let c = &root.counters()[0].2;
    assert_eq!((c.bar_reads, c.bar_writes), (2, 1));
}

#[test]
fn hostile_placements_are_refused() {
    let mut root = PciRoot::new(windows());
    let (a, _, _) = fake();
    let (mut b, placed_b, _) = fake();
    // b's BARs start elsewhere.
    b.bars.write(0, 0xc800_0000);
    b.bars.write(2, 0x8000_0000);
    b.bars.write(3, 0x1);
    b.bars.write(4, 0xd000);
    root.add("a", Box::new(a)).unwrap();
    root.add("b", Box::new(b)).unwrap();
    let on = u32::from(regs::CMD_MEMORY | regs::CMD_IO);
    ecam_rw(&mut root, 1, 4, Some(on));
    ecam_rw(&mut root, 2, 4, Some(on));
    assert_eq!(placed_b.lock().unwrap().len(), 3);
    placed_b.lock().unwrap().clear();
    // Over a's BAR 0, over RAM, over the IOAPIC, over its own BAR 2.
    for addr in [0xc000_0000u32, 0x0010_0000, 0xfec0_0000] {
        ecam_rw(&mut root, 2, 0x10, Some(addr));
        let p = placed_b.lock().unwrap().clone();
        assert!(!p.contains(&(0, Some(u64::from(addr)))), "{addr:#x}: {p:?}");
    }
    assert_eq!(
        placed_b.lock().unwrap().clone(),
        [(0, None)],
        "taken down once"
    );
    ecam_rw(&mut root, 2, 0x10, Some(0xc800_0000));
    assert_eq!(placed_b.lock().unwrap().pop(), Some((0, Some(0xc800_0000))));
    ecam_rw(&mut root, 2, 0x18, Some(0xc800_0000));
    ecam_rw(&mut root, 2, 0x1c, Some(0));
    let p = placed_b.lock().unwrap().clone();
    assert_eq!(
        p.last(),
        Some(&(2, None)),
        "a 64-bit BAR over its own BAR 0: {p:?}"
    );
    // I/O BAR over a's I/O BAR, and outside the I/O window.
    for port in [0xc000u32, 0x3f8] {
        ecam_rw(&mut root, 2, 0x20, Some(port));
        assert_eq!(
            placed_b.lock().unwrap().last(),
            Some(&(4, None)),
            "{port:#x}"
        );
    }
    let c = &root.counters()[1].2;
    assert!(c.refused_placements >= 5, "{c:?}");
    // a is untouched.
    let mut d = [0u8; 4];
    root.bar_access(false, 0xc000_0000, &mut d, false);
    assert_eq!(d, [0; 4]);
}

#[test]
fn the_bus_fills_up() {
    let mut root = PciRoot::new(windows());
    for _ in 1..SLOTS {
        root.add("f", Box::new(fake().0)).unwrap();
    }
    assert!(root.add("f", Box::new(fake().0)).is_err());
}
