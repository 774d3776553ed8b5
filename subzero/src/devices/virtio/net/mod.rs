//! virtio-net on a host TAP device.
//!
//! Two queues: receive (0, host to guest) and transmit (1, guest to host).
//! Every frame travels behind the 12-byte virtio-net header, which the TAP
//! (`IFF_VNET_HDR`) uses too, so checksum and segmentation offloads pass
//! through it unchanged.
//!
//! # Offloads
//!
//! Besides `VIRTIO_NET_F_MAC` and `VIRTIO_NET_F_STATUS` the device offers
//! ([`OFFLOAD_FEATURES`]):
//! - transmit: `CSUM`, `HOST_TSO4`, `HOST_TSO6`, `HOST_ECN`. The guest's
//!   header (partial checksum, GSO type and size) goes to the TAP as is; the
//!   kernel validates it, and a header it refuses costs the frame only
//!   (counted in `tx_backend_errors`). A header asking for an offload the
//!   driver did not negotiate is dropped before (`tx.rs`).
//! - receive: `GUEST_CSUM`, `GUEST_TSO4`, `GUEST_TSO6`, `GUEST_ECN`. On
//!   activation the TAP is told (`TUNSETOFFLOAD`) which of them the kernel
//!   may use; a reset turns them off. The kernel's header is kept (only
//!   `num_buffers` is set), after checking it uses no more than that.
//! - `MRG_RXBUF`: a frame may span several receive chains (`rx.rs`).
//!
//! Every frame is checked rather than trusted. A bad transmit chain (device-
//! writable buffers, outside guest memory, a loop, a frame without an
//! Ethernet header or over [`MAX_FRAME`] bytes, an offload not negotiated)
//! is returned with length 0 and counted in [`NetCounters`]; only a broken
//! ring puts the device in DEVICE_NEEDS_RESET.
//!
//! # Receive back-pressure
//!
//! The device thread does not watch the TAP directly but an epoll instance
//! the device owns ([`VirtioDevice::event_fds`] returns it). The TAP is in
//! that inner epoll's interest list, level-triggered, only while the device
//! wants frames: an epoll fd is readable exactly when one of its members
//! is. When the guest has no receive buffer left, the device keeps the frame
//! it already read, removes the TAP from its epoll, and asks the driver for a
//! notification; the device thread then sleeps however many frames wait in
//! the TAP (the kernel queues them, and drops past the TAP's `txqueuelen`,
//! like a NIC with a full ring). The driver's next kick of the receive queue
//! puts the TAP back, delivers the held frame first, and reads on.
//!
//! Before the driver is ready (or while the device needs a reset, or if the
//! receive queue is not set up) frames are read and dropped, so the TAP
//! neither wakes the device thread in a loop nor delivers stale frames later.

#[cfg(test)]
mod inplace_tests;
mod mac;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod rate_tests;
mod rx;
pub mod tap;
#[cfg(test)]
mod tests;
mod tx;

use std::collections::VecDeque;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_bindings::bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::{iov, types, DescChain, DeviceError, QueueCtx, VirtioDevice};
use crate::devices::rate_limiter::{RateLimiter, RateLimiterConfig};
use mac::{check_mac, random_mac};
pub use mac::{format_mac, parse_mac};
pub use tap::Tap;

/// Size of the virtio-net header before every frame (virtio 1.x: with
/// `num_buffers`).
pub const VNET_HDR_LEN: usize = 12;
/// Largest frame (without the header) the device passes either way.
pub const MAX_FRAME: usize = 65550;
/// Largest header plus frame.
pub const MAX_PACKET: usize = VNET_HDR_LEN + MAX_FRAME;
/// Length of an Ethernet header: the shortest frame worth sending.
const ETH_HLEN: usize = 14;
/// Receive queue index.
pub const RX_QUEUE: usize = 0;
/// Transmit queue index.
pub const TX_QUEUE: usize = 1;
/// Size of both queues.
const QUEUE_SIZE: u16 = 256;
/// Frames read from the backend per call before the device thread gets to
/// serve other devices (the TAP stays watched, so it comes back).
const RX_BUDGET: usize = 256;
/// Largest receive chain accepted; only the first [`MAX_PACKET`] bytes are
/// ever written.
const RX_CHAIN_MAX: u64 = u32::MAX as u64;
/// Token of the device's host-side source that holds the TAP.
const RX_TOKEN: usize = 0;
/// Token of the receive rate limiter's timer.
const RX_TIMER: usize = 1;
/// Token of the transmit rate limiter's timer.
const TX_TIMER: usize = 2;

/// Feature bit `b` as a mask.
const fn bit(b: u32) -> u64 {
    1 << b
}

/// The offload features the device offers on top of MAC and STATUS.
pub const OFFLOAD_FEATURES: u64 = bit(VIRTIO_NET_F_CSUM)
    | bit(VIRTIO_NET_F_GUEST_CSUM)
    | bit(VIRTIO_NET_F_GUEST_TSO4)
    | bit(VIRTIO_NET_F_GUEST_TSO6)
    | bit(VIRTIO_NET_F_GUEST_ECN)
    | bit(VIRTIO_NET_F_HOST_TSO4)
    | bit(VIRTIO_NET_F_HOST_TSO6)
    | bit(VIRTIO_NET_F_HOST_ECN)
    | bit(VIRTIO_NET_F_MRG_RXBUF);

/// The TAP's receive offloads (`TUN_F_*`) matching the features the driver
/// accepted. The kernel wants `TUN_F_CSUM` under any TSO flag and a TSO
/// flag under `TUN_F_TSO_ECN`, and so does the virtio spec of the matching
/// features: a driver that acked them without their prerequisites gets less.
pub fn tun_offloads(acked: u64) -> u32 {
    let has = |b: u32| acked & bit(b) != 0;
    if !has(VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut f = libc::TUN_F_CSUM;
    if has(VIRTIO_NET_F_GUEST_TSO4) {
        f |= libc::TUN_F_TSO4;
    }
    if has(VIRTIO_NET_F_GUEST_TSO6) {
        f |= libc::TUN_F_TSO6;
    }
    if has(VIRTIO_NET_F_GUEST_ECN) && f & (libc::TUN_F_TSO4 | libc::TUN_F_TSO6) != 0 {
        f |= libc::TUN_F_TSO_ECN;
    }
    f
}

/// Sets the backend's receive offloads (`TUN_F_*` flags): `TUNSETOFFLOAD`
/// on a TAP ([`tap::set_offload`]); tests record the calls.
pub type SetOffload = Box<dyn FnMut(BorrowedFd, u32) -> io::Result<()> + Send>;

/// Why a network device could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The TUN/TAP driver is not available.
    #[error("/dev/net/tun does not exist or has no driver: load the tun module (modprobe tun)")]
    NoTunDevice,
    /// Not allowed to create or attach to the TAP.
    #[error(
        "not allowed to open TAP device {0:?}: creating one needs CAP_NET_ADMIN; \
         or create it beforehand with `ip tuntap add {0} mode tap user $USER` \
         (and make sure /dev/net/tun is readable and writable)"
    )]
    Permission(String),
    /// The name does not fit in IFNAMSIZ.
    #[error("TAP device name {0:?} is too long: at most 15 bytes (IFNAMSIZ)")]
    NameTooLong(String),
    /// The kernel would refuse the name.
    #[error("invalid TAP device name {0:?}: it must be non-empty, without '/', ':' or spaces")]
    InvalidName(String),
    /// Someone else has the (single-queue) TAP open.
    #[error("TAP device {0:?} is busy: another process has it open")]
    Busy(String),
    /// The name belongs to something that is not a single-queue TAP.
    #[error(
        "{0:?} exists but cannot be opened as a single-queue TAP device \
         (is it a TUN, a multi-queue TAP, or another kind of interface?)"
    )]
    NotTap(String),
    /// Another system call failed.
    #[error("TAP device {name:?}: {what}: {source}")]
    Io {
        /// The TAP.
        name: String,
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Not a MAC address.
    #[error("invalid MAC address {mac:?}: {reason}")]
    InvalidMac {
        /// What was given.
        mac: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Counters of one network device, readable while the VM runs.
#[derive(Debug, Default)]
pub struct NetCounters {
    /// Frames sent to the host.
    pub tx_frames: AtomicU64,
    /// Bytes sent to the host (frames, without the virtio-net header).
    pub tx_bytes: AtomicU64,
    /// Transmit chains refused: malformed, device-writable buffers, a frame
    /// without an Ethernet header or too long, offloads not negotiated.
    pub tx_invalid: AtomicU64,
    /// Frames dropped because the TAP could not take them now (EAGAIN).
    pub tx_backend_drops: AtomicU64,
    /// Frames the TAP refused (e.g. EIO while the interface is down).
    pub tx_backend_errors: AtomicU64,
    /// Frames delivered to the guest.
    pub rx_frames: AtomicU64,
    /// Of those, frames read straight into the guest's buffers (no copy).
    pub rx_in_place: AtomicU64,
    /// Bytes delivered to the guest (frames, without the header).
    pub rx_bytes: AtomicU64,
    /// Frames dropped because they did not fit the guest's buffer (without
    /// `MRG_RXBUF`) or a whole queue of buffers (with it).
    pub rx_too_big: AtomicU64,
    /// Frames from the host the device cannot deliver: shorter than an
    /// Ethernet header, longer than [`MAX_FRAME`], or with an offload the
    /// driver did not negotiate.
    pub rx_invalid: AtomicU64,
    /// Frames dropped because the driver was not ready for them.
    pub rx_not_ready: AtomicU64,
    /// Receive chains refused (malformed, or with device-readable buffers).
    pub rx_bad_chains: AtomicU64,
    /// Times the device stopped reading the TAP for lack of receive buffers.
    pub rx_parked: AtomicU64,
    /// Read errors from the TAP.
    pub rx_backend_errors: AtomicU64,
    /// Failed attempts to set the TAP's offloads.
    pub offload_errors: AtomicU64,
    /// Times the receive rate limiter held a frame back.
    pub rx_throttled: AtomicU64,
    /// Times the transmit rate limiter held a frame back.
    pub tx_throttled: AtomicU64,
}

/// Adds one to `c`; logs the first occurrence as a warning and later ones
/// at debug level, so a misbehaving guest cannot flood the log.
fn count(c: &AtomicU64, what: fmt::Arguments) {
    if c.fetch_add(1, Ordering::Relaxed) == 0 {
        log::warn!("virtio-net: {what} (further ones are only counted)");
    } else {
        log::debug!("virtio-net: {what}");
    }
}

/// What a read from the backend gave.
enum Backend {
    /// A frame of this many bytes (header included) is in the rx buffer,
    /// or in the receive chains (`rx_in_place`).
    Frame(usize),
    /// Nothing to read now.
    Empty,
    /// The backend is gone or broken; stop watching it.
    Gone,
}

/// The virtio network device.
pub struct Net {
    backend: File,
    /// The device's event source: holds the backend while it is armed.
    epoll: Epoll,
    armed: bool,
    mac: [u8; 6],
    tap_name: String,
    /// One frame from the backend, header first. One byte longer than
    /// [`MAX_PACKET`] to notice a longer frame.
    rx_buf: Box<[u8]>,
    /// Length of the frame waiting for a receive buffer (or for the rate
    /// limiter): in `rx_buf`, or, with `rx_in_place`, already in the
    /// buffers of `rx_chains`.
    rx_pending: Option<usize>,
    /// The pending frame was read straight into `rx_chains`.
    rx_in_place: bool,
    /// Receive chains taken from the queue but not used yet: with
    /// `MRG_RXBUF`, the ones gathered for a frame larger than the chains
    /// available so far. The driver sees them as outstanding.
    rx_chains: VecDeque<DescChain>,
    /// Features the driver accepted (0 until activation and after a reset).
    acked: u64,
    /// The receive offloads (`TUN_F_*`) the TAP was told it may use.
    rx_offloads: u32,
    set_offload: SetOffload,
    counters: Arc<NetCounters>,
    /// Bytes and frames to the guest.
    rx_limiter: RateLimiter,
    /// Bytes and frames from the guest.
    tx_limiter: RateLimiter,
}

impl fmt::Debug for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Net")
            .field("tap", &self.tap_name)
            .field("mac", &format_mac(&self.mac))
            .field("armed", &self.armed)
            .field("rx_pending", &self.rx_pending)
            .field("rx_chains", &self.rx_chains.len())
            .field("acked", &format_args!("{:#x}", self.acked))
            .field("rx_offloads", &self.rx_offloads)
            .finish()
    }
}

/// Sets O_NONBLOCK on `fd`.
fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL reads the flags of `fd`, which the caller owns; no
    // memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above; F_SETFL takes the flags by value.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl Net {
    /// Opens (creating it if absent) the TAP device `tap`; MAC defaults to
    /// a random locally administered unicast address.
    pub fn open(tap: &str, mac: Option<[u8; 6]>) -> Result<Net, NetError> {
        let t = Tap::open(tap)?;
        let name = t.name().to_string();
        let set_offload: SetOffload = Box::new(tap::set_offload);
        Net::with_backend(OwnedFd::from(t), &name, mac, set_offload)
    }

    /// A device on `fd`, which must carry one frame per read and write,
    /// each behind a 12-byte virtio-net header (a TAP with `IFF_VNET_HDR`,
    /// or a datagram socket in tests). It is made non-blocking.
    /// `set_offload` sets its receive offloads.
    pub(crate) fn with_backend(
        fd: OwnedFd,
        name: &str,
        mac: Option<[u8; 6]>,
        set_offload: SetOffload,
    ) -> Result<Net, NetError> {
        let io_err = |what: &'static str, source: io::Error| NetError::Io {
            name: name.to_string(),
            what,
            source,
        };
        let mac = match mac {
            Some(m) => {
                check_mac(&m).map_err(|reason| NetError::InvalidMac {
                    mac: format_mac(&m),
                    reason,
                })?;
                m
            }
            None => random_mac().map_err(|e| io_err("cannot draw a random MAC address", e))?,
        };
        set_nonblocking(fd.as_raw_fd()).map_err(|e| io_err("cannot make it non-blocking", e))?;
        let epoll = Epoll::new().map_err(|e| io_err("cannot create an epoll instance", e))?;
        let limiter = || {
            RateLimiter::new(&RateLimiterConfig::default())
                .map_err(|e| io_err("cannot create a timerfd for a rate limiter", e))
        };
        let mut net = Net {
            backend: File::from(fd),
            epoll,
            armed: false,
            mac,
            tap_name: name.to_string(),
            rx_buf: vec![0u8; MAX_PACKET + 1].into_boxed_slice(),
            rx_pending: None,
            rx_in_place: false,
            rx_chains: VecDeque::new(),
            acked: 0,
            rx_offloads: 0,
            set_offload,
            counters: Arc::default(),
            rx_limiter: limiter()?,
            tx_limiter: limiter()?,
        };
        net.arm()
            .map_err(|e| io_err("cannot watch it with epoll", e))?;
        Ok(net)
    }

    /// Limits bytes and frames per second to the guest (`rx`) and from it
    /// (`tx`).
    pub fn set_rate_limiters(&mut self, rx: &RateLimiterConfig, tx: &RateLimiterConfig) {
        self.rx_limiter.update(rx);
        self.tx_limiter.update(tx);
    }

    /// The device's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The host TAP's name.
    pub fn tap_name(&self) -> &str {
        &self.tap_name
    }

    /// The device's counters (shared: they stay readable once the device
    /// is handed to the transport).
    pub fn counters(&self) -> Arc<NetCounters> {
        self.counters.clone()
    }

    /// Watches the backend again.
    fn arm(&mut self) -> io::Result<()> {
        if !self.armed {
            let ev = EpollEvent::new(EventSet::IN, RX_TOKEN as u64);
            self.epoll
                .ctl(ControlOperation::Add, self.backend.as_raw_fd(), ev)?;
            self.armed = true;
        }
        Ok(())
    }

    /// [`Net::arm`] from a place that cannot fail: an error (which would
    /// take a kernel out of memory) is logged.
    fn rearm(&mut self) {
        if let Err(e) = self.arm() {
            log::error!("virtio-net {}: cannot watch the TAP: {e}", self.tap_name);
        }
    }

    /// Stops watching the backend, so its readiness no longer wakes the
    /// device thread.
    fn disarm(&mut self) {
        if self.armed {
            let fd = self.backend.as_raw_fd();
            if let Err(e) = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default())
            {
                log::error!(
                    "virtio-net {}: cannot stop watching the TAP: {e}",
                    self.tap_name
                );
            }
            self.armed = false;
        }
    }

    /// Sets the TAP's receive offloads to `flags` (`TUN_F_*`). If that
    /// fails the device assumes none: frames with offloads the kernel
    /// still sends are then dropped, not passed to a driver that may not
    /// expect them.
    fn offload(&mut self, flags: u32) {
        match (self.set_offload)(self.backend.as_fd(), flags) {
            Ok(()) => self.rx_offloads = flags,
            Err(e) => {
                self.rx_offloads = 0;
                count(
                    &self.counters.offload_errors,
                    format_args!("{}: cannot set offloads {flags:#x}: {e}", self.tap_name),
                );
            }
        }
    }

    /// Bytes of the configuration space: MAC, then status.
    fn config(&self) -> [u8; 8] {
        let mut c = [0u8; 8];
        c[..6].copy_from_slice(&self.mac);
        c[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        c
    }
}

impl VirtioDevice for Net {
    fn name(&self) -> &str {
        "virtio-net"
    }

    fn device_type(&self) -> u32 {
        types::NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        bit(VIRTIO_NET_F_MAC) | bit(VIRTIO_NET_F_STATUS) | OFFLOAD_FEATURES
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let config = self.config();
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if start < config.len() {
            let n = data.len().min(config.len() - start);
            data[..n].copy_from_slice(&config[start..start + n]);
        }
    }

    fn activate(&mut self, acked_features: u64) -> Result<(), DeviceError> {
        self.acked = acked_features;
        self.rx_chains.clear();
        self.offload(tun_offloads(acked_features));
        self.arm()
            .map_err(|e| DeviceError::Backend(format!("cannot watch the TAP: {e}")))
    }

    fn reset(&mut self) {
        if self.rx_pending.take().is_some() {
            self.counters.rx_not_ready.fetch_add(1, Ordering::Relaxed);
        }
        self.rx_in_place = false;
        self.rx_chains.clear();
        self.acked = 0;
        self.offload(0);
        self.rearm();
    }

    fn process_queue(&mut self, q: usize, ctx: &mut QueueCtx) -> Result<(), DeviceError> {
        match q {
            RX_QUEUE => {
                // New receive buffers: read the TAP again.
                self.rearm();
                self.rx(ctx)
            }
            TX_QUEUE => self.tx(ctx),
            _ => Ok(()),
        }
    }

    fn event_fds(&self) -> Vec<RawFd> {
        vec![
            self.epoll.as_raw_fd(),
            self.rx_limiter.timer_fd(),
            self.tx_limiter.timer_fd(),
        ]
    }

    fn set_rate_limiter(&mut self, queue: usize, cfg: &RateLimiterConfig) -> Result<(), String> {
        match queue {
            RX_QUEUE => self.rx_limiter.update(cfg),
            TX_QUEUE => self.tx_limiter.update(cfg),
            _ => return Err(format!("virtio-net has no queue {queue}")),
        }
        Ok(())
    }

    fn process_event(&mut self, token: usize, ctx: &mut QueueCtx) -> Result<(), DeviceError> {
        match token {
            RX_TOKEN if ctx.active => self.rx(ctx),
            RX_TOKEN => {
                self.drop_rx();
                Ok(())
            }
            RX_TIMER => {
                // The held frame may go now: watch the TAP again and deliver.
                self.rx_limiter.timer_fired();
                self.rearm();
                if ctx.active {
                    self.rx(ctx)?;
                }
                Ok(())
            }
            TX_TIMER => {
                self.tx_limiter.timer_fired();
                if ctx.ready(TX_QUEUE) {
                    self.tx(ctx)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}
