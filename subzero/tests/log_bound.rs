//! A driver that repeats refused actions a million times gets a bounded
//! log: one line per place, then one per 10 s with a count, and the counts
//! for `--stats`. (Its own process: the logger is global.)

use std::time::Instant;

use subzero::bus::BusDevice;
use subzero::devices::virtio::mmio::{regs, MmioTransport};
use subzero::devices::virtio::rng::Rng;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const REPEATS: u64 = 1_000_000;

#[test]
fn a_million_refusals_write_a_handful_of_lines() {
    let log = std::env::temp_dir().join(format!("subzero-log-bound-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    subzero::logger::init(Some(log::LevelFilter::Warn));
    subzero::logger::set_path(&log).unwrap();
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let evt = || EventFd::new(EFD_NONBLOCK).unwrap();
    let mut t = MmioTransport::new(Box::new(Rng::default()), mem, vec![evt()], evt()).unwrap();
    let mut w = |reg: u64, v: u32| {
        t.write(reg, &v.to_le_bytes());
    };
    let started = Instant::now();
    for _ in 0..REPEATS {
        w(regs::STATUS, 0);
        w(regs::STATUS, 3);
        // A feature bit the device never offered: FEATURES_OK is refused.
        w(regs::DRIVER_FEATURES_SEL, 0);
        w(regs::DRIVER_FEATURES, 1 << 5);
        w(regs::DRIVER_FEATURES_SEL, 1);
        w(regs::DRIVER_FEATURES, 1);
        w(regs::STATUS, 0xb);
        // A queue outside guest memory: virtio-queue complains, and the
        // device needs a reset.
        w(regs::STATUS, 0);
        w(regs::STATUS, 3);
        w(regs::DRIVER_FEATURES_SEL, 1);
        w(regs::DRIVER_FEATURES, 1);
        w(regs::STATUS, 0xb);
        w(regs::QUEUE_NUM, 16);
        w(regs::QUEUE_DESC_LOW, 0xffff_f000);
        w(regs::QUEUE_DESC_HIGH, 0xffff);
        w(regs::QUEUE_READY, 1);
        w(regs::STATUS, 0xf);
    }
    let secs = started.elapsed().as_secs();
    log::logger().flush();
    let text = std::fs::read_to_string(&log).unwrap();
    let lines = |needle: &str| text.lines().filter(|l| l.contains(needle)).count() as u64;
    // The first line, then at most one per 10 s.
    let bound = 2 + secs / 10;
    let refused = lines("refused (offered");
    assert!(
        (1..=bound).contains(&refused),
        "{refused} lines in {secs} s:\n{text}"
    );
    let reset = lines("the device needs a reset");
    assert!(
        (1..=bound).contains(&reset),
        "{reset} lines in {secs} s:\n{text}"
    );
    eprintln!("{REPEATS} x 2 refused setups in {secs} s gave this log:\n{text}");
    let crate_lines = lines("virtio_queue");
    assert!(
        crate_lines <= bound,
        "{crate_lines} lines in {secs} s:\n{text}"
    );
    let counts = subzero::logger::counts();
    let site = counts
        .iter()
        .find(|c| c.first.contains("refused (offered"))
        .expect("the refusal is counted");
    assert_eq!(site.count, REPEATS, "{counts:?}");
    assert_eq!(site.written, refused);
    let _ = std::fs::remove_file(&log);
}
