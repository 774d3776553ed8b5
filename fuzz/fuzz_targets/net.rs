//! virtio-net behind the MMIO transport: transmit chains (virtio-net
//! header, offload requests, frames of any size) and receive buffers, with
//! frames of any content arriving from the backend (a datagram socket in
//! place of the TAP), merged receive buffers included.
#![no_main]

use subzero_fuzz::{run_device, write_seeds, NetHost, Program};

fn seeds() -> Vec<Vec<u8>> {
    let mut frame = vec![0u8; 12];
    frame.extend_from_slice(&[0xff; 6]);
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x08, 0x00]);
    frame.resize(12 + 60, 0x45);
    let host = |f: &[u8]| {
        let mut a = (f.len() as u32).to_le_bytes().to_vec();
        a.push(f.len() as u8);
        a.extend_from_slice(f);
        a
    };
    vec![
        Program::prologue(u64::MAX, 2, 4)
            .chain(
                1,
                false,
                &[
                    (0, 12, false, &frame[..12]),
                    (0x100, 60, false, &frame[12..]),
                ],
            )
            .kick(1)
            .0,
        Program::prologue(u64::MAX, 2, 4)
            .chain(0, false, &[(0x1000, 1526, true, &[])])
            .chain(0, true, &[(0x2000, 12, true, &[]), (0x3000, 64, true, &[])])
            .kick(0)
            .host(&host(&frame))
            .0,
        // Without MRG_RXBUF or offloads.
        Program::prologue(1 << 32, 2, 4)
            .chain(0, false, &[(0x1000, 40, true, &[])])
            .host(&host(&frame))
            .0,
    ]
}

libfuzzer_sys::fuzz_target!(init: write_seeds(&seeds()), |data: &[u8]| {
    let (dev, mut host) = NetHost::device();
    run_device(dev, &mut host, data);
});
