//! virtio-blk behind the MMIO transport: request headers, data buffers and
//! status bytes in every arrangement, on a small disk image whose last
//! sector is partial. The first byte picks a read-only or writable disk; a
//! read-only one must be unchanged after the input.
#![no_main]

use subzero_fuzz::{device, disk_image, run_device, write_seeds, Program};

/// A request header: type, reserved, sector.
fn header(kind: u32, sector: u64) -> Vec<u8> {
    let mut h = kind.to_le_bytes().to_vec();
    h.extend_from_slice(&[0; 4]);
    h.extend_from_slice(&sector.to_le_bytes());
    h
}

fn seeds() -> Vec<Vec<u8>> {
    let p = |ro: u8| {
        Program::default()
            .raw(&[ro])
            .raw(&Program::prologue(u64::MAX, 1, 4).0)
    };
    let (read, write, flush, id) = (header(0, 1), header(1, 2), header(4, 0), header(8, 0));
    vec![
        p(1).chain(
            0,
            false,
            &[
                (0, 16, false, &read),
                (0x1000, 512, true, &[]),
                (0x2000, 1, true, &[]),
            ],
        )
        .kick(0)
        .0,
        p(1).chain(
            0,
            false,
            &[
                (0, 16, false, &write),
                (0x1000, 1024, false, &[7; 64]),
                (0x2000, 1, true, &[]),
            ],
        )
        .chain(
            0,
            true,
            &[(0x3000, 16, false, &flush), (0x3100, 1, true, &[])],
        )
        .kick(0)
        .0,
        p(0).chain(
            0,
            false,
            &[
                (0, 16, false, &id),
                (0x1000, 20, true, &[]),
                (0x2000, 1, true, &[]),
            ],
        )
        .kick(0)
        .0,
    ]
}

libfuzzer_sys::fuzz_target!(init: write_seeds(&seeds()), |data: &[u8]| {
    // Device 1 is the writable disk, 2 the read-only one.
    let ro = data.first().copied().unwrap_or(0) & 1;
    let (dev, mut host) = device(1 + ro);
    // A read-only disk must come out as it went in, whatever the guest asked.
    let before = (ro == 1).then(|| std::fs::read(disk_image()).expect("disk image"));
    run_device(dev, &mut host, data.get(1..).unwrap_or(&[]));
    if let Some(before) = before {
        let after = std::fs::read(disk_image()).expect("disk image");
        assert!(before == after, "the guest changed a read-only disk");
    }
});
