//! Transmit: guest frames to the TAP, the guest's virtio-net header
//! included, written from guest memory with one `writev` (no copy).
//!
//! With `CSUM` and `HOST_TSO*` negotiated, the header may ask the host to
//! fill in a checksum (`NEEDS_CSUM`, `csum_start`, `csum_offset`) or to cut
//! a TCP segment of up to 64 KiB into MSS-sized ones (`gso_type`,
//! `gso_size`, `hdr_len`). The device passes it to the TAP byte for byte:
//! the kernel checks it (`virtio_net_hdr_to_skb`) and refuses what does
//! not add up with EINVAL, which drops that frame only. The device itself
//! refuses headers asking for offloads the driver did not negotiate, or
//! that it never offered (UFO, USO, flags other than `NEEDS_CSUM`).

use std::fmt;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;

use virtio_bindings::bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6,
};
use vm_memory::{GuestMemoryMmap, Permissions};

use super::{
    bit, count, iov, DescChain, DeviceError, Net, QueueCtx, ETH_HLEN, MAX_FRAME, MAX_PACKET,
    TX_QUEUE, VNET_HDR_LEN,
};

/// Why the transmit header `flags`, `gso_type` cannot go out with the
/// features `acked`, if it cannot.
pub(super) fn tx_header_refused(acked: u64, flags: u8, gso_type: u8) -> Option<&'static str> {
    let has = |b: u32| acked & bit(b) != 0;
    if flags & !(VIRTIO_NET_HDR_F_NEEDS_CSUM as u8) != 0 {
        return Some("flags other than NEEDS_CSUM");
    }
    if flags != 0 && !has(VIRTIO_NET_F_CSUM) {
        return Some("a partial checksum without CSUM");
    }
    let ecn = gso_type & VIRTIO_NET_HDR_GSO_ECN as u8 != 0;
    let needed = match u32::from(gso_type & !(VIRTIO_NET_HDR_GSO_ECN as u8)) {
        VIRTIO_NET_HDR_GSO_NONE if ecn => return Some("ECN without a GSO type"),
        VIRTIO_NET_HDR_GSO_NONE => return None,
        VIRTIO_NET_HDR_GSO_TCPV4 => VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_HDR_GSO_TCPV6 => VIRTIO_NET_F_HOST_TSO6,
        _ => return Some("a GSO type the device does not offer"),
    };
    // virtio 1.2 5.1.3.1: HOST_TSO* require CSUM, HOST_ECN a HOST_TSO*.
    if !has(needed) || !has(VIRTIO_NET_F_CSUM) {
        return Some("TCP segmentation without HOST_TSO4/6 and CSUM");
    }
    if ecn && !has(VIRTIO_NET_F_HOST_ECN) {
        return Some("ECN segmentation without HOST_ECN");
    }
    None
}

impl Net {
    /// Sends every available transmit chain.
    pub(super) fn tx(&mut self, ctx: &mut QueueCtx) -> Result<(), DeviceError> {
        loop {
            ctx.disable_notification(TX_QUEUE)?;
            loop {
                if self.tx_limiter.blocked() {
                    // The limiter's timer brings the device back.
                    return ctx.notify(TX_QUEUE);
                }
                let chain = match ctx.pop(TX_QUEUE, MAX_PACKET as u64) {
                    Ok(Some(c)) => c,
                    Ok(None) => break,
                    Err(e) => {
                        count(
                            &self.counters.tx_invalid,
                            format_args!("transmit chain refused: {e}"),
                        );
                        continue;
                    }
                };
                let frame = chain.readable_len().saturating_sub(VNET_HDR_LEN as u64);
                if !self.tx_limiter.consume(frame, 1) {
                    // Back on the ring, sent when the buckets refill.
                    self.counters.tx_throttled.fetch_add(1, Ordering::Relaxed);
                    ctx.throttled.fetch_add(1, Ordering::Relaxed);
                    ctx.undo_pop(TX_QUEUE);
                    continue;
                }
                self.tx_chain(ctx.mem, &chain);
                ctx.add_used(TX_QUEUE, chain.head, 0)?;
            }
            if !ctx.enable_notification(TX_QUEUE)? {
                break;
            }
        }
        ctx.notify(TX_QUEUE)
    }

    /// Sends the frame in `chain` to the backend, or counts why not.
    fn tx_chain(&mut self, mem: &GuestMemoryMmap, chain: &DescChain) {
        let invalid = |why: fmt::Arguments| count(&self.counters.tx_invalid, why);
        if !chain.writable.is_empty() {
            return invalid(format_args!("transmit chain with device-writable buffers"));
        }
        let len = chain.readable_len();
        if len < (VNET_HDR_LEN + ETH_HLEN) as u64 || len > MAX_PACKET as u64 {
            return invalid(format_args!(
                "transmit chain of {len} bytes: not a header and a frame of 14 to {MAX_FRAME} bytes"
            ));
        }
        let len = len as usize;
        // The header is checked from a copy of its first two bytes; the
        // frame then goes from guest memory to the TAP in one writev. A
        // guest that changes the header in between only gets what the
        // kernel's own check of it (virtio_net_hdr_to_skb) lets through.
        let mut hdr = [0u8; 2];
        if let Err(e) = chain.read_at(mem, 0, &mut hdr) {
            return invalid(format_args!("transmit chain unreadable: {e}"));
        }
        if let Some(why) = tx_header_refused(self.acked, hdr[0], hdr[1]) {
            return invalid(format_args!(
                "transmit header refused (flags {:#x}, gso {:#x}): {why}",
                hdr[0], hdr[1]
            ));
        }
        let iovs = match iov::iovecs(mem, &chain.readable, 0, len as u64, Permissions::Read) {
            Ok(v) => v,
            Err(e) => return invalid(format_args!("transmit chain unreadable: {e}")),
        };
        let result = loop {
            // SAFETY: the iovecs point into guest memory, mapped for the
            // whole call; writev only reads through them.
            let n = unsafe {
                libc::writev(
                    self.backend.as_raw_fd(),
                    iovs.0.as_ptr(),
                    iovs.0.len() as libc::c_int,
                )
            };
            match usize::try_from(n) {
                Ok(n) => break Ok(n),
                Err(_) => match io::Error::last_os_error() {
                    e if e.kind() == io::ErrorKind::Interrupted => continue,
                    e => break Err(e),
                },
            }
        };
        match result {
            Ok(n) if n == len => {
                self.counters.tx_frames.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .tx_bytes
                    .fetch_add((len - VNET_HDR_LEN) as u64, Ordering::Relaxed);
            }
            Ok(n) => count(
                &self.counters.tx_backend_errors,
                format_args!("{}: short write, {n} of {len} bytes", self.tap_name),
            ),
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.raw_os_error() == Some(libc::ENOBUFS) =>
            {
                count(
                    &self.counters.tx_backend_drops,
                    format_args!("{}: TAP full, frame dropped", self.tap_name),
                )
            }
            // EINVAL: the kernel refused the guest's header (or frame).
            Err(e) => count(
                &self.counters.tx_backend_errors,
                format_args!("{}: write failed: {e}", self.tap_name),
            ),
        }
    }
}
