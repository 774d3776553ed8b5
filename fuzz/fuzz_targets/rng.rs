//! virtio-rng behind the MMIO transport: descriptor chains of any shape
//! (the device takes any chain of writable buffers, so this is the target
//! for chain validation itself: loops, indirect tables, readable buffers,
//! buffers outside RAM or across its hole, oversized chains).
#![no_main]

use subzero::devices::virtio::rng::Rng;
use subzero_fuzz::{run_device, write_seeds, NoHost, Program, DATA};

fn seeds() -> Vec<Vec<u8>> {
    let all = Program::prologue(u64::MAX, 1, 4);
    vec![
        all.raw(&[])
            .chain(0, false, &[(0, 64, true, &[])])
            .kick(0)
            .0,
        Program::prologue(u64::MAX, 1, 4)
            .chain(
                0,
                true,
                &[(0x100, 16, true, &[]), (0x1000, 4096, true, &[])],
            )
            .chain(
                0,
                false,
                &[(0x2000, 8, false, b"readable"), (0x3000, 8, true, &[])],
            )
            .kick(0)
            .0,
        // A buffer that runs past the end of the first RAM region.
        Program::prologue(u64::MAX, 1, 4)
            .chain(0, false, &[((0x10_0000 - DATA - 8) as u32, 64, true, &[])])
            .kick(0)
            .0,
    ]
}

libfuzzer_sys::fuzz_target!(init: write_seeds(&seeds()), |data: &[u8]| {
    run_device(Box::new(Rng::default()), &mut NoHost, data);
});
