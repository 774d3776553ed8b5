//! Receive: frames from the TAP to the guest's receive chains.
//!
//! When the chains taken from the queue can hold the largest frame (the
//! usual case: a Linux driver keeps the queue full), the frame is read
//! straight into them with one `readv` ([`Net::read_in_place`]); otherwise
//! it is read into the device's buffer first and copied once chains for it
//! arrive, which the rules below describe.
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

use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;

use virtio_bindings::bindings::virtio_net::{
    VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_HDR_F_DATA_VALID, VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
};
use virtio_queue::QueueT;
use vm_memory::{GuestMemoryMmap, Permissions};

use super::{
    bit, count, iov, rx_queue, Backend, DescChain, DeviceError, Net, QueueCtx, ETH_HLEN,
    MAX_PACKET, RX_BUDGET, RX_CHAIN_MAX, VNET_HDR_LEN,
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
    pub(super) fn read_backend(&mut self, p: usize) -> Backend {
        loop {
            let pair = &mut self.pairs[p];
            match (&pair.backend).read(&mut pair.rx_buf) {
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
    /// the guest (in the first receive chain, for a frame read in place).
    fn accept_rx(&mut self, p: usize, mem: &GuestMemoryMmap, n: usize) -> Result<(), &'static str> {
        if n < VNET_HDR_LEN + ETH_HLEN {
            return Err("frame shorter than an Ethernet header");
        }
        if n > MAX_PACKET {
            return Err("frame longer than the device supports");
        }
        if !self.pairs[p].rx_in_place {
            return rx_header(self.rx_offloads, &mut self.pairs[p].rx_buf[..VNET_HDR_LEN]);
        }
        let first = self.pairs[p].rx_chains.front().ok_or("no receive chain")?;
        let mut hdr = [0u8; VNET_HDR_LEN];
        read_writable(mem, first, &mut hdr).map_err(|_| "receive chain not readable back")?;
        rx_header(self.rx_offloads, &mut hdr)?;
        first
            .write_at(mem, 0, &hdr)
            .map_err(|_| "receive chain not writable")
    }

    /// Reads one frame from the backend straight into receive chains, if
    /// the chains taken (plus what the queue has now) can hold the largest
    /// frame. `None`: they cannot, use [`Net::read_backend`]. Chains it
    /// takes for a read that finds no frame go back on the ring, and so do
    /// all it took when one of them is refused, so that what the driver
    /// sees is the same as through [`Net::read_backend`].
    pub(super) fn read_in_place(
        &mut self,
        p: usize,
        ctx: &mut QueueCtx,
    ) -> Result<Option<Backend>, DeviceError> {
        const WANT: u64 = MAX_PACKET as u64 + 1;
        let merge = self.mergeable();
        let mut taken = 0usize;
        let give_back = |net: &mut Net, ctx: &mut QueueCtx, taken: usize, extra: usize| {
            for _ in 0..taken {
                net.pairs[p].rx_chains.pop_back();
            }
            for _ in 0..taken + extra {
                ctx.undo_pop(rx_queue(p));
            }
        };
        loop {
            let cap: u64 = self.pairs[p]
                .rx_chains
                .iter()
                .map(|c| c.writable_len())
                .sum();
            if cap >= WANT {
                break;
            }
            if !merge && !self.pairs[p].rx_chains.is_empty() {
                give_back(self, ctx, taken, 0);
                return Ok(None);
            }
            match ctx.pop(rx_queue(p), RX_CHAIN_MAX) {
                Ok(Some(c)) if refused_rx_chain(&c, merge).is_none() => {
                    self.pairs[p].rx_chains.push_back(c);
                    taken += 1;
                }
                Ok(Some(_)) => {
                    // Refused the way read_backend's path refuses it.
                    give_back(self, ctx, taken, 1);
                    return Ok(None);
                }
                Ok(None) => {
                    give_back(self, ctx, taken, 0);
                    return Ok(None);
                }
                Err(e) => {
                    // pop() already returned it to the driver.
                    count(
                        &self.counters.rx_bad_chains,
                        format_args!("receive chain refused: {e}"),
                    );
                }
            }
        }
        let result = self.readv_chains(p, ctx.mem, WANT);
        if !matches!(result, Some(Backend::Frame(_))) {
            give_back(self, ctx, taken, 0);
        }
        Ok(result)
    }

    /// One `readv` of up to `want` bytes from the backend into the
    /// chains in `rx_chains`; `None` if they do not make an iovec array.
    fn readv_chains(&mut self, p: usize, mem: &GuestMemoryMmap, want: u64) -> Option<Backend> {
        let mut iovs = Vec::new();
        let mut left = want;
        for c in &self.pairs[p].rx_chains {
            if left == 0 {
                break;
            }
            let k = c.writable_len().min(left);
            iovs.extend(
                iov::iovecs(mem, &c.writable, 0, k, Permissions::Write)
                    .ok()?
                    .0,
            );
            left -= k;
        }
        if iovs.len() > iov::IOV_MAX {
            return None;
        }
        loop {
            // SAFETY: the iovecs point into the receive chains' buffers,
            // which were checked to lie in guest memory and stay mapped for
            // the call; readv writes only through them.
            let n = unsafe {
                libc::readv(
                    self.pairs[p].backend.as_raw_fd(),
                    iovs.as_ptr(),
                    iovs.len() as libc::c_int,
                )
            };
            let e = match usize::try_from(n) {
                Ok(0) => {
                    log::warn!("virtio-net {}: the backend closed", self.tap_name);
                    return Some(Backend::Gone);
                }
                Ok(n) => {
                    self.pairs[p].rx_in_place = true;
                    return Some(Backend::Frame(n));
                }
                Err(_) => io::Error::last_os_error(),
            };
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Some(Backend::Empty),
                _ => {
                    count(
                        &self.counters.rx_backend_errors,
                        format_args!("{}: read failed: {e}", self.tap_name),
                    );
                    return Some(Backend::Gone);
                }
            }
        }
    }

    /// Reads and drops frames while the driver cannot take them.
    pub(super) fn drop_rx(&mut self, p: usize) {
        if self.pairs[p].rx_pending.take().is_some() {
            self.counters.rx_not_ready.fetch_add(1, Ordering::Relaxed);
        }
        self.pairs[p].rx_in_place = false;
        for _ in 0..RX_BUDGET {
            match self.read_backend(p) {
                Backend::Frame(_) => {
                    self.counters.rx_not_ready.fetch_add(1, Ordering::Relaxed);
                }
                Backend::Empty => return,
                Backend::Gone => return self.disarm(p),
            }
        }
    }

    /// Moves frames from the backend to the receive queue while there are
    /// frames and buffers.
    pub(super) fn rx(&mut self, p: usize, ctx: &mut QueueCtx) -> Result<(), DeviceError> {
        if !ctx.ready(rx_queue(p)) {
            self.drop_rx(p);
            return Ok(());
        }
        let mut reads = 0;
        loop {
            let n = match self.pairs[p].rx_pending {
                Some(n) => n,
                None => {
                    if reads == RX_BUDGET {
                        // Still armed: the device thread comes back.
                        break;
                    }
                    reads += 1;
                    let got = match self.read_in_place(p, ctx)? {
                        Some(got) => got,
                        None => self.read_backend(p),
                    };
                    match got {
                        Backend::Frame(n) => {
                            if let Err(why) = self.accept_rx(p, ctx.mem, n) {
                                self.pairs[p].rx_in_place = false;
                                count(
                                    &self.counters.rx_invalid,
                                    format_args!("{}: {n}-byte {why}", self.tap_name),
                                );
                                continue;
                            }
                            self.pairs[p].rx_pending = Some(n);
                            n
                        }
                        Backend::Empty => break,
                        Backend::Gone => {
                            self.disarm(p);
                            break;
                        }
                    }
                }
            };
            match self.gather(p, ctx, n)? {
                Gather::Ready if !self.rx_limiter.consume((n - VNET_HDR_LEN) as u64, 1) => {
                    // Over the limit: keep the frame and its chains, stop
                    // watching the TAP until the limiter's timer fires.
                    self.disarm(p);
                    self.counters.rx_throttled.fetch_add(1, Ordering::Relaxed);
                    ctx.throttled.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Gather::Ready => self.deliver(p, ctx, n)?,
                Gather::Wait => {
                    // No buffer: keep the frame, stop watching the TAP
                    // until the driver kicks the receive queue.
                    self.disarm(p);
                    self.counters.rx_parked.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Gather::TooBig => {
                    self.pairs[p].rx_pending = None;
                    self.pairs[p].rx_in_place = false;
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
        ctx.notify(rx_queue(p))
    }

    /// Takes receive chains until `rx_chains` can hold a frame of `n`
    /// bytes. Refused chains are returned at once.
    fn gather(&mut self, p: usize, ctx: &mut QueueCtx, n: usize) -> Result<Gather, DeviceError> {
        let merge = self.mergeable();
        let size = ctx
            .queues
            .get(rx_queue(p))
            .map_or(0, |q| usize::from(q.size()));
        loop {
            if !merge && !self.pairs[p].rx_chains.is_empty() {
                return Ok(Gather::Ready);
            }
            if merge {
                let cap: u64 = self.pairs[p]
                    .rx_chains
                    .iter()
                    .map(|c| c.writable_len())
                    .sum();
                if cap >= n as u64 {
                    return Ok(Gather::Ready);
                }
                // The driver cannot have more descriptors outstanding than
                // the queue size (buffers of indirect tables count too, so
                // this may give up early, never wait forever).
                let descs: usize = self.pairs[p]
                    .rx_chains
                    .iter()
                    .map(|c| c.writable.len())
                    .sum();
                if descs >= size {
                    return Ok(Gather::TooBig);
                }
            }
            let chain = match ctx.pop(rx_queue(p), RX_CHAIN_MAX) {
                Ok(Some(c)) => c,
                Ok(None) => {
                    if !ctx.enable_notification(rx_queue(p))? {
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
            if let Some(why) = refused_rx_chain(&chain, merge) {
                count(
                    &self.counters.rx_bad_chains,
                    format_args!("receive chain {why}"),
                );
                ctx.add_used(rx_queue(p), chain.head, 0)?;
                continue;
            }
            self.pairs[p].rx_chains.push_back(chain);
        }
    }

    /// Writes the pending frame of `n` bytes into the chains [`Net::gather`]
    /// collected and puts them on the used ring.
    fn deliver(&mut self, p: usize, ctx: &mut QueueCtx, n: usize) -> Result<(), DeviceError> {
        self.pairs[p].rx_pending = None;
        if std::mem::take(&mut self.pairs[p].rx_in_place) {
            return self.deliver_in_place(p, ctx, n);
        }
        if !self.mergeable() {
            let Some(chain) = self.pairs[p].rx_chains.pop_front() else {
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
                return ctx.add_used(rx_queue(p), chain.head, 0);
            }
            self.pairs[p].rx_buf[10..12].copy_from_slice(&1u16.to_le_bytes());
            let len = match chain.write_at(ctx.mem, 0, &self.pairs[p].rx_buf[..n]) {
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
            return ctx.add_used(rx_queue(p), chain.head, len);
        }
        let fill = fill_sizes(&self.pairs[p].rx_chains, n);
        debug_assert_eq!(fill.iter().sum::<usize>(), n, "gather() collected enough");
        // At most a queue's worth of chains: fits in u16.
        let buffers = fill.len() as u16;
        self.pairs[p].rx_buf[10..12].copy_from_slice(&buffers.to_le_bytes());
        let mut off = 0;
        let mut ok = true;
        let chains: Vec<_> = self.pairs[p].rx_chains.drain(..fill.len()).collect();
        for (c, &k) in chains.iter().zip(&fill) {
            if let Err(e) = c.write_at(ctx.mem, 0, &self.pairs[p].rx_buf[off..off + k]) {
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
            ctx.add_used(rx_queue(p), c.head, if ok { k as u32 } else { 0 })?;
        }
        Ok(())
    }

    /// Puts the chains holding a frame of `n` bytes read in place on the
    /// used ring, with `num_buffers` set in its header.
    fn deliver_in_place(
        &mut self,
        p: usize,
        ctx: &mut QueueCtx,
        n: usize,
    ) -> Result<(), DeviceError> {
        let fill = fill_sizes(&self.pairs[p].rx_chains, n);
        let chains: Vec<_> = self.pairs[p].rx_chains.drain(..fill.len()).collect();
        let buffers = (fill.len() as u16).to_le_bytes();
        let ok = match chains.first() {
            Some(first) => first.write_at(ctx.mem, 10, &buffers).is_ok(),
            None => false,
        };
        if ok {
            self.count_rx(n);
            self.counters.rx_in_place.fetch_add(1, Ordering::Relaxed);
        } else {
            count(
                &self.counters.rx_bad_chains,
                format_args!("receive chain not writable"),
            );
        }
        for (c, k) in chains.iter().zip(fill) {
            ctx.add_used(rx_queue(p), c.head, if ok { k as u32 } else { 0 })?;
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

/// Why a receive chain cannot be used, if it cannot.
fn refused_rx_chain(chain: &DescChain, merge: bool) -> Option<&'static str> {
    if !chain.readable.is_empty() {
        Some("with device-readable buffers")
    } else if merge && chain.writable_len() < VNET_HDR_LEN as u64 {
        Some("smaller than the header")
    } else {
        None
    }
}

/// Copies the first `out.len()` bytes of `chain`'s writable buffers back.
fn read_writable(
    mem: &GuestMemoryMmap,
    chain: &DescChain,
    out: &mut [u8],
) -> Result<(), vm_memory::GuestMemoryError> {
    use vm_memory::Bytes;
    let mut done = 0;
    for b in &chain.writable {
        if done == out.len() {
            break;
        }
        let n = (b.len as usize).min(out.len() - done);
        mem.read_slice(&mut out[done..done + n], b.addr)?;
        done += n;
    }
    Ok(())
}

/// How many bytes of an `n`-byte frame go in each of `chains`, in order:
/// as much as each holds, until the frame is placed.
fn fill_sizes(chains: &VecDeque<DescChain>, n: usize) -> Vec<usize> {
    let mut fill = Vec::new();
    let mut left = n as u64;
    for c in chains {
        if left == 0 {
            break;
        }
        let k = c.writable_len().min(left);
        fill.push(k as usize);
        left -= k;
    }
    fill
}
