//! virtio-vsock behind the MMIO transport: the packet parser (headers and
//! payloads split across descriptors, every op, bad CIDs, credit) and the
//! connection state machine, with host programs connecting to its socket
//! (the `CONNECT <port>` line) and a host listener for guest connections
//! to one port.
#![no_main]

use subzero_fuzz::{run_device, write_seeds, Program, VsockHost, VSOCK_CID, VSOCK_PORT};

/// A packet header from the guest.
fn header(op: u16, len: u32, dst_port: u32) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&VSOCK_CID.to_le_bytes());
    h.extend_from_slice(&2u64.to_le_bytes());
    h.extend_from_slice(&5000u32.to_le_bytes());
    h.extend_from_slice(&dst_port.to_le_bytes());
    h.extend_from_slice(&len.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes());
    h.extend_from_slice(&op.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&65536u32.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h
}

fn seeds() -> Vec<Vec<u8>> {
    let (request, rw) = (header(1, 0, VSOCK_PORT), header(5, 5, VSOCK_PORT));
    let rx = |p: Program| {
        p.chain(0, false, &[(0x8000, 4096, true, &[])])
            .chain(0, false, &[(0x9000, 4096, true, &[])])
            .kick(0)
    };
    let connect = b"CONNECT 5000\n";
    let mut host = vec![0u8, 0, connect.len() as u8];
    host.extend_from_slice(connect);
    vec![
        rx(Program::prologue(u64::MAX, 3, 4))
            .chain(1, false, &[(0, 44, false, &request)])
            .kick(1)
            .chain(
                1,
                false,
                &[
                    (0x100, 20, false, &rw[..20]),
                    (0x200, 29, false, &[&rw[20..], b"hello"].concat()),
                ],
            )
            .kick(1)
            .0,
        rx(Program::prologue(u64::MAX, 3, 4))
            .host(&host)
            .host(&[1, 0, 5, 0, 5, b'h', b'e', b'l', b'l', b'o'])
            .0,
    ]
}

libfuzzer_sys::fuzz_target!(init: write_seeds(&seeds()), |data: &[u8]| {
    let (dev, mut host) = VsockHost::device();
    run_device(dev, &mut host, data);
});
