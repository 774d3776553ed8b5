//! Receive: frames from the TAP to the guest's receive chains.
//!
//! The kernel's virtio-net header comes with every frame. It is checked
//! against the offloads the TAP was told to use ([`rx_header`]), so a frame
//! the driver cannot take (the TAP's settings lag behind a reset, say) is
//! dropped rather than delivered; only `num_buffers` is rewritten.
//!
//! # Mergeable receive buffers
//!
//! Without `MRG_RXBUF` a frame goes into one chain (too small: the frame is
//! dropped and the chain returned empty). With it, the device takes chains
//! from the queue into `rx_chains` until their writable space holds the
//! frame, fills them in order (the header at the start of the first one,
//! `num_buffers` = chains used) and puts them on the used ring together,
//! each with the bytes written to it. When the queue runs dry first, the
//! gathered chains stay in `rx_chains`, unused, and the frame waits (see
//! the module's back-pressure notes) for the driver's next kick. A frame
//! that a whole queue of chains cannot hold (the driver cannot have more
//! outstanding) is dropped; the chains serve the next frames.

use std::io::{self, Read};
use std::sync::atomic::Ordering;

use virtio_bindings::bindings::virtio_net::{
    VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
};
use virtio_queue::QueueT;

use super::{
    bit, count, Backend, DeviceError, Net, QueueCtx, ETH_HLEN, MAX_PACKET, RX_BUDGET, RX_CHAIN_MAX,
    RX_QUEUE, VNET_HDR_LEN,
};

/// Checks the header the kernel put before a received frame against the
/// receive offloads `tun` (`TUN_F_*`) and rewrites it for the guest.
/// Without `TUN_F_CSUM` the driver did not negotiate `GUEST_CSUM`, and the
/// header must be all zero (virtio 1.2 5.1.6.4.1); `num_buffers` is left
/// for the caller.
pub(super) fn rx_header(tun: u32, hdr: &mut [u8]) -> Result<(), &'static str> {
    let (flags, gso) = (hdr[0], hdr[1]);
    if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM as u8 != 0 && tun & libc::TUN_F_CSUM == 0 {
        return Err("frame with a partial checksum the guest did not negotiate");
    }
    let ecn = gso & VIRTIO_NET_HDR_GSO_ECN as u8 != 0;
    let needed = match u32::from(gso & !(VIRTIO_NET_HDR_GSO_ECN as u8)) {
        VIRTIO_NET_HDR_GSO_NONE if !ecn => 0,
        VIRTIO_NET_HDR_GSO_TCPV4 => libc::TUN_F_TSO4,
        VIRTIO_NET_HDR_GSO_TCPV6 => libc::TUN_F_TSO6,
        _ => return Err("frame with a GSO type the device does not offer"),
    } | if ecn { libc::TUN_F_TSO_ECN } else { 0 };
    if tun & needed != needed {
        return Err("frame with segmentation the guest did not negotiate");
    }
    if tun & libc::TUN_F_CSUM == 0 {
        hdr[..VNET_HDR_LEN].fill(0);
    } else {
        hdr[0] &= (VIRTIO_NET_HDR_F_NEEDS_CSUM | VIRTIO_NET_HDR_F_DATA_VALID) as u8;
    }
    Ok(())
}

/// Whether a receive chain can be used now.
enum Gather {
    /// `rx_chains` holds enough for the pending frame (without
    /// `MRG_RXBUF`: one chain, which may still be too small).
    Ready,
    /// The queue is empty: wait for the driver.
    Wait,
    /// No queue of chains can hold the frame.
    TooBig,
}

impl Net {
    /// Whether the driver negotiated mergeable receive buffers.
    fn mergeable(&self) -> bool {
        self.acked & bit(VIRTIO_NET_F_MRG_RXBUF) != 0
    }

    /// Reads one frame from the backend into `rx_buf`.
    pub(super) fn read_backend(&mut self) -> Backend {
        loop {
            match (&self.backend).read(&mut self.rx_buf) {
                // A TAP never reads as empty: the peer of a test socket closed.
                Ok(0) => {
                    log::warn!("virtio-net {}: the backend closed", self.tap_name);
                    return Backend::Gone;
                }
                Ok(n) => return Backend::Frame(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Backend::Empty,
                Err(e) => {
                    count(
                        &self.counters.rx_backend_errors,
                        format_args!("{}: read failed: {e}", self.tap_name),
                    );
                    return Backend::Gone;
                }
            }
        }
    }

    /// Checks a frame of `n` bytes just read, and rewrites its header for
    /// the guest.
    fn accept_rx(&mut self, n: usize) -> Result<(), &'static str> {
        if n < VNET_HDR_LEN + ETH_HLEN {
            return Err("frame shorter than an Ethernet header");
        }
        if n > MAX_PACKET {
            return Err("frame longer than the device supports");
        }
        rx_header(self.rx_offloads, &mut self.rx_buf[..VNET_HDR_LEN])
    }

    /// Reads and drops frames while the driver cannot take them.
    pub(super) fn drop_rx(&mut self) {
        if self.rx_pending.take().is_some() {
            self.counters.rx_not_ready.fetch_add(1, Ordering::Relaxed);
        }
        for _ in 0..RX_BUDGET {
            match self.read_backend() {
                Backend::Frame(_) => {
                    self.counters.rx_not_ready.fetch_add(1, Ordering::Relaxed);
                }
                Backend::Empty => return,
                Backend::Gone => return self.disarm(),
            }
        }
    }

    /// Moves frames from the backend to the receive queue while there are
    /// frames and buffers.
    pub(super) fn rx(&mut self, ctx: &mut QueueCtx) -> Result<(), DeviceError> {
        if !ctx.ready(RX_QUEUE) {
            self.drop_rx();
            return Ok(());
        }
        let mut reads = 0;
        loop {
            let n = match self.rx_pending {
                Some(n) => n,
                None => {
                    if reads == RX_BUDGET {
                        // Still armed: the device thread comes back.
                        break;
                    }
                    reads += 1;
                    match self.read_backend() {
                        Backend::Frame(n) => {
                            if let Err(why) = self.accept_rx(n) {
                                count(
                                    &self.counters.rx_invalid,
                                    format_args!("{}: {n}-byte {why}", self.tap_name),
                                );
                                continue;
                            }
                            self.rx_pending = Some(n);
                            n
                        }
                        Backend::Empty => break,
                        Backend::Gone => {
                            self.disarm();
                            break;
                        }
                    }
                }
            };
            match self.gather(ctx, n)? {
                Gather::Ready if !self.rx_limiter.consume((n - VNET_HDR_LEN) as u64, 1) => {
                    // Over the limit: keep the frame and its chains, stop
                    // watching the TAP until the limiter's timer fires.
                    self.disarm();
                    self.counters.rx_throttled.fetch_add(1, Ordering::Relaxed);
                    ctx.throttled.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Gather::Ready => self.deliver(ctx, n)?,
                Gather::Wait => {
                    // No buffer: keep the frame, stop watching the TAP
                    // until the driver kicks the receive queue.
                    self.disarm();
                    self.counters.rx_parked.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Gather::TooBig => {
                    self.rx_pending = None;
                    count(
                        &self.counters.rx_too_big,
                        format_args!(
                            "{}-byte frame dropped: larger than a queue of receive buffers",
                            n - VNET_HDR_LEN
                        ),
                    );
                }
            }
        }
        ctx.notify(RX_QUEUE)
    }

    /// Takes receive chains until `rx_chains` can hold a frame of `n`
    /// bytes. Refused chains are returned at once.
    fn gather(&mut self, ctx: &mut QueueCtx, n: usize) -> Result<Gather, DeviceError> {
        let merge = self.mergeable();
        let size = ctx
            .queues
            .get(RX_QUEUE)
            .map_or(0, |q| usize::from(q.size()));
        loop {
            if !merge && !self.rx_chains.is_empty() {
                return Ok(Gather::Ready);
            }
            if merge {
                let cap: u64 = self.rx_chains.iter().map(|c| c.writable_len()).sum();
                if cap >= n as u64 {
                    return Ok(Gather::Ready);
                }
                // The driver cannot have more descriptors outstanding than
                // the queue size (buffers of indirect tables count too, so
                // this may give up early, never wait forever).
                let descs: usize = self.rx_chains.iter().map(|c| c.writable.len()).sum();
                if descs >= size {
                    return Ok(Gather::TooBig);
                }
            }
            let chain = match ctx.pop(RX_QUEUE, RX_CHAIN_MAX) {
                Ok(Some(c)) => c,
                Ok(None) => {
                    if !ctx.enable_notification(RX_QUEUE)? {
                        return Ok(Gather::Wait);
                    }
                    continue;
                }
                Err(e) => {
                    count(
                        &self.counters.rx_bad_chains,
                        format_args!("receive chain refused: {e}"),
                    );
                    continue;
                }
            };
            let why = if !chain.readable.is_empty() {
                Some("with device-readable buffers")
            } else if merge && chain.writable_len() < VNET_HDR_LEN as u64 {
                Some("smaller than the header")
            } else {
                None
            };
            if let Some(why) = why {
                count(
                    &self.counters.rx_bad_chains,
                    format_args!("receive chain {why}"),
                );
                ctx.add_used(RX_QUEUE, chain.head, 0)?;
                continue;
            }
            self.rx_chains.push_back(chain);
        }
    }

    /// Writes the pending frame of `n` bytes into the chains [`Net::gather`]
    /// collected and puts them on the used ring.
    fn deliver(&mut self, ctx: &mut QueueCtx, n: usize) -> Result<(), DeviceError> {
        self.rx_pending = None;
        if !self.mergeable() {
            let Some(chain) = self.rx_chains.pop_front() else {
                return Ok(());
            };
            let cap = chain.writable_len();
            if n as u64 > cap {
                count(
                    &self.counters.rx_too_big,
                    format_args!(
                        "{}-byte frame dropped: larger than the guest's {cap}-byte buffer",
                        n - VNET_HDR_LEN
                    ),
                );
                return ctx.add_used(RX_QUEUE, chain.head, 0);
            }
            self.rx_buf[10..12].copy_from_slice(&1u16.to_le_bytes());
            let len = match chain.write_at(ctx.mem, 0, &self.rx_buf[..n]) {
                Ok(()) => {
                    self.count_rx(n);
                    n as u32
                }
                Err(e) => {
                    count(
                        &self.counters.rx_bad_chains,
                        format_args!("receive chain not writable: {e}"),
                    );
                    0
                }
            };
            return ctx.add_used(RX_QUEUE, chain.head, len);
        }
        // How many chains, and how much goes in each.
        let mut fill = Vec::new();
        let mut left = n as u64;
        for c in &self.rx_chains {
            if left == 0 {
                break;
            }
            let k = c.writable_len().min(left);
            fill.push(k as usize);
            left -= k;
        }
        debug_assert_eq!(left, 0, "gather() collected enough");
        // At most a queue's worth of chains: fits in u16.
        let buffers = fill.len() as u16;
        self.rx_buf[10..12].copy_from_slice(&buffers.to_le_bytes());
        let mut off = 0;
        let mut ok = true;
        let chains: Vec<_> = self.rx_chains.drain(..fill.len()).collect();
        for (c, &k) in chains.iter().zip(&fill) {
            if let Err(e) = c.write_at(ctx.mem, 0, &self.rx_buf[off..off + k]) {
                count(
                    &self.counters.rx_bad_chains,
                    format_args!("receive chain not writable: {e}"),
                );
                ok = false;
                break;
            }
            off += k;
        }
        if ok {
            self.count_rx(n);
        }
        // On a failure the driver gets every chain back empty, which it
        // takes as a dropped frame.
        for (c, &k) in chains.iter().zip(&fill) {
            ctx.add_used(RX_QUEUE, c.head, if ok { k as u32 } else { 0 })?;
        }
        Ok(())
    }

    fn count_rx(&self, n: usize) {
        self.counters.rx_frames.fetch_add(1, Ordering::Relaxed);
        self.counters
            .rx_bytes
            .fetch_add((n - VNET_HDR_LEN) as u64, Ordering::Relaxed);
    }
}
