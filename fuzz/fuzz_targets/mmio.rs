//! The virtio-mmio transport: any sequence of register reads and writes
//! (any offset, any width, the configuration space included), mixed with
//! ring setup, kicks and host events, on each of the devices (the first
//! byte picks it). Nothing is set up beforehand: the input is the driver.
//! After it, a reset and a clean setup must bring the device up again.
#![no_main]

use subzero::devices::virtio::features;
use subzero::devices::virtio::mmio::{regs, status};
use subzero_fuzz::{device, ring_base, write_seeds, Driver, Input, Program, DEVICES};

/// Linux's register sequence by hand: features (VERSION_1 only), queue 0
/// at 16 entries, DRIVER_OK, a chain and a notify through the register.
fn by_hand(kind: u8) -> Vec<u8> {
    let (desc, avail, used) = (ring_base(0), ring_base(0) + 0x1000, ring_base(0) + 0x2000);
    let ad = status::ACKNOWLEDGE | status::DRIVER;
    Program::default()
        .raw(&[kind])
        .read_reg(regs::MAGIC_VALUE)
        .read_reg(regs::DEVICE_ID)
        .write_reg(regs::STATUS, 0)
        .write_reg(regs::STATUS, ad)
        .write_reg(regs::DEVICE_FEATURES_SEL, 1)
        .read_reg(regs::DEVICE_FEATURES)
        .write_reg(regs::DRIVER_FEATURES_SEL, 1)
        .write_reg(regs::DRIVER_FEATURES, 1)
        .write_reg(regs::STATUS, ad | status::FEATURES_OK)
        .write_reg(regs::QUEUE_SEL, 0)
        .read_reg(regs::QUEUE_NUM_MAX)
        .write_reg(regs::QUEUE_NUM, 16)
        .write_reg(regs::QUEUE_DESC_LOW, desc as u32)
        .write_reg(regs::QUEUE_AVAIL_LOW, avail as u32)
        .write_reg(regs::QUEUE_USED_LOW, used as u32)
        .write_reg(regs::QUEUE_READY, 1)
        .write_reg(regs::STATUS, ad | status::FEATURES_OK | status::DRIVER_OK)
        .read_reg(regs::CONFIG)
        .read_reg(regs::CONFIG_GENERATION)
        .chain(0, false, &[(0, 64, true, &[])])
        .notify(0)
        .read_reg(regs::INTERRUPT_STATUS)
        .write_reg(regs::INTERRUPT_ACK, 1)
        .0
}

fn seeds() -> Vec<Vec<u8>> {
    (0..DEVICES.len() as u8).map(by_hand).collect()
}

libfuzzer_sys::fuzz_target!(init: write_seeds(&seeds()), |data: &[u8]| {
    let mut inp = Input::new(data);
    let (dev, mut host) = device(inp.u8());
    let mut d = Driver::new(dev);
    d.run(&mut inp, &mut host);
    // Whatever came before, a reset and a clean setup bring the device up.
    d.setup(features::VERSION_1, &mut Input::new(&[4; 3]), true);
    let ok = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
    assert_eq!(d.read(regs::STATUS, 4), u64::from(ok), "no recovery by reset");
});
