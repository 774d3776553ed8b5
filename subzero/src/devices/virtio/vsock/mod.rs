//! virtio-vsock with a host Unix-socket backend, in the Firecracker
//! convention:
//!
//! - Host to guest: a host program connects to `uds_path` and sends
//!   `CONNECT <port>\n`; once the guest accepts, it reads `OK <host port>\n`
//!   and the socket carries the stream.
//! - Guest to host: a guest connection to CID 2 port `P` is connected to
//!   the Unix socket `<uds_path>_P`.
//!
//! [`packet`] is the wire header, [`conn`] one connection (state, buffers,
//! credit), [`muxer`] the host sockets and routing; this module serves the
//! queues: rx (0) carries packets to the guest, tx (1) from it, and the
//! event queue (2) carries the TRANSPORT_RESET event a restored VM gets
//! (its connections' host ends did not survive the snapshot).

pub mod conn;
pub mod muxer;
pub mod packet;
#[cfg(test)]
mod tests;

use std::io;
use std::os::fd::RawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use super::{types, DescChain, DeviceError, QueueCtx, VirtioDevice};
use conn::MAX_PKT;
use muxer::{connect_nonblocking, Muxer};
use packet::{Header, HDR_LEN};

/// Queue indices.
const RXQ: usize = 0;
const TXQ: usize = 1;
const EVQ: usize = 2;
/// virtio_vsock_event.id of a transport reset (virtio 1.2, 5.10.6.7).
const VIRTIO_VSOCK_EVENT_TRANSPORT_RESET: u32 = 0;
/// Queue size.
const QUEUE_SIZE: u16 = 256;
/// Longest descriptor chain accepted on either queue.
const MAX_CHAIN: u64 = 1 << 20;

/// Why the vsock device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// CIDs 0, 1 and 2 are reserved; `u32::MAX` means "any".
    #[error(
        "vsock guest CID {0} is not usable: 0, 1 and 2 are reserved and CIDs \
         must fit in 32 bits; choose a CID from 3 to 4294967294"
    )]
    BadCid(u64),
    /// Another program listens on the socket path.
    #[error(
        "vsock socket {0}: another program is listening there; stop it or \
         choose another path"
    )]
    InUse(PathBuf),
    /// Something other than a socket is at the path.
    #[error(
        "vsock socket {0}: the path exists and is not a socket, so it will not \
         be removed; delete it yourself or choose another path"
    )]
    NotSocket(PathBuf),
    /// The stale socket at the path could not be checked or removed.
    #[error("vsock socket {path}: cannot replace the stale socket there: {source}")]
    Stale {
        /// The socket path.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// bind(2) failed.
    #[error(
        "vsock socket {path}: cannot listen there: {source}; check that the \
         directory exists and is writable and the path is under 100 bytes"
    )]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// The epoll instance could not be set up.
    #[error("vsock: cannot set up epoll: {0}")]
    Epoll(io::Error),
}

/// The vsock device.
pub struct Vsock {
    guest_cid: u64,
    muxer: Muxer,
    /// The tx queue may hold chains not yet served (kicked, or stalled
    /// while control packets wait for rx buffers).
    tx_pending: bool,
    /// The socket we bound: path, device and inode (to remove it on drop).
    bound: (PathBuf, u64, u64),
    /// A restored VM's driver must drop its connections: a
    /// TRANSPORT_RESET event waits for an event-queue buffer.
    reset_event_pending: bool,
    /// Descriptor chains refused as malformed.
    pub bad_chains: u64,
}

/// Binds `path`, replacing a stale socket nobody listens on.
fn bind(path: &Path) -> Result<UnixListener, VsockError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => match connect_nonblocking(path) {
            Ok(_) => return Err(VsockError::InUse(path.to_owned())),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(VsockError::InUse(path.to_owned()))
            }
            Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
                std::fs::remove_file(path).map_err(|source| VsockError::Stale {
                    path: path.to_owned(),
                    source,
                })?;
            }
            Err(source) => {
                return Err(VsockError::Stale {
                    path: path.to_owned(),
                    source,
                })
            }
        },
        Ok(_) => return Err(VsockError::NotSocket(path.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(VsockError::Bind {
                path: path.to_owned(),
                source,
            })
        }
    }
    UnixListener::bind(path).map_err(|source| VsockError::Bind {
        path: path.to_owned(),
        source,
    })
}

impl Vsock {
    /// A device for guest `guest_cid`, listening on `uds_path`.
    pub fn new(guest_cid: u64, uds_path: &Path) -> Result<Vsock, VsockError> {
        if !(3..u64::from(u32::MAX)).contains(&guest_cid) {
            return Err(VsockError::BadCid(guest_cid));
        }
        let listener = bind(uds_path)?;
        let bind_err = |source| VsockError::Bind {
            path: uds_path.to_owned(),
            source,
        };
        let meta = std::fs::symlink_metadata(uds_path).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        if uds_path.as_os_str().len() + 11 >= 108 {
            log::warn!(
                "vsock socket {}: path too long for guest connections to <path>_<port>",
                uds_path.display()
            );
        }
        let muxer = Muxer::new(guest_cid, uds_path, listener).map_err(VsockError::Epoll)?;
        Ok(Vsock {
            guest_cid,
            muxer,
            tx_pending: false,
            reset_event_pending: false,
            bound: (uds_path.to_owned(), meta.dev(), meta.ino()),
            bad_chains: 0,
        })
    }

    /// Serves the tx queue until it is empty or control packets back up.
    fn process_tx(&mut self, ctx: &mut QueueCtx) -> Result<(), DeviceError> {
        loop {
            ctx.disable_notification(TXQ)?;
            loop {
                if self.muxer.backlogged() {
                    // Resumed by fill_rx once the guest takes the backlog.
                    return ctx.notify(TXQ);
                }
                let chain = match ctx.pop(TXQ, MAX_CHAIN) {
                    Ok(Some(c)) => c,
                    Ok(None) => break,
                    Err(e) => {
                        log::debug!("virtio-vsock: tx: {e}");
                        self.bad_chains += 1;
                        continue;
                    }
                };
                self.tx_packet(ctx, &chain);
                ctx.add_used(TXQ, chain.head, 0)?;
            }
            if !ctx.enable_notification(TXQ)? {
                break;
            }
        }
        self.tx_pending = false;
        ctx.notify(TXQ)
    }

    /// One packet from the guest: header (possibly split across
    /// descriptors), then `len` bytes of payload.
    fn tx_packet(&mut self, ctx: &QueueCtx, chain: &DescChain) {
        let avail = chain.readable_len();
        let mut hb = [0u8; HDR_LEN];
        if avail < HDR_LEN as u64 || chain.read_at(ctx.mem, 0, &mut hb).is_err() {
            self.bad_chains += 1;
            return;
        }
        let hdr = Header::from_bytes(&hb);
        let len = u64::from(hdr.len);
        if len > MAX_PKT as u64 || len > avail - HDR_LEN as u64 {
            return self.muxer.bad_packet(&hdr);
        }
        let mut data = Vec::new();
        if hdr.op == packet::op::RW {
            data.resize(hdr.len as usize, 0);
            if chain.read_at(ctx.mem, HDR_LEN as u64, &mut data).is_err() {
                return self.muxer.bad_packet(&hdr);
            }
        }
        self.muxer.guest_packet(&hdr, &data);
    }

    /// Puts pending packets into the guest's rx buffers.
    fn fill_rx(&mut self, ctx: &mut QueueCtx) -> Result<(), DeviceError> {
        if !ctx.ready(RXQ) {
            return Ok(());
        }
        while self.muxer.has_packet() {
            let chain = match ctx.pop(RXQ, MAX_CHAIN) {
                Ok(Some(c)) => c,
                Ok(None) => {
                    // Out of buffers: have the driver kick when it adds some.
                    if ctx.enable_notification(RXQ)? {
                        continue;
                    }
                    break;
                }
                Err(e) => {
                    log::debug!("virtio-vsock: rx: {e}");
                    self.bad_chains += 1;
                    continue;
                }
            };
            let room = chain.writable_len().saturating_sub(HDR_LEN as u64) as usize;
            let mut len = 0;
            if chain.writable_len() >= HDR_LEN as u64 {
                if let Some(p) = self.muxer.next_packet(room) {
                    let ok = chain.write_at(ctx.mem, 0, &p.hdr.to_bytes()).is_ok()
                        && chain.write_at(ctx.mem, HDR_LEN as u64, &p.data).is_ok();
                    if ok {
                        len = (HDR_LEN + p.data.len()) as u32;
                    } else {
                        self.muxer.lost_packet(&p.hdr);
                    }
                }
            } else {
                self.bad_chains += 1;
            }
            ctx.add_used(RXQ, chain.head, len)?;
        }
        ctx.notify(RXQ)
    }

    /// Delivers a pending TRANSPORT_RESET event, if the driver gave an
    /// event buffer.
    fn send_reset_event(&mut self, ctx: &mut QueueCtx) -> Result<(), DeviceError> {
        if !self.reset_event_pending || !ctx.ready(EVQ) {
            return Ok(());
        }
        let chain = match ctx.pop(EVQ, MAX_CHAIN) {
            Ok(Some(chain)) => chain,
            Ok(None) => return Ok(()),
            Err(e) => {
                log::debug!("virtio-vsock: event queue: {e}");
                self.bad_chains += 1;
                return Ok(());
            }
        };
        let event = VIRTIO_VSOCK_EVENT_TRANSPORT_RESET.to_le_bytes();
        let len = if chain.writable_len() >= event.len() as u64
            && chain.write_at(ctx.mem, 0, &event).is_ok()
        {
            self.reset_event_pending = false;
            event.len() as u32
        } else {
            self.bad_chains += 1;
            0
        };
        ctx.add_used(EVQ, chain.head, len)?;
        ctx.notify(EVQ)
    }

    /// Moves packets both ways until nothing more can move.
    fn pump(&mut self, ctx: &mut QueueCtx) -> Result<(), DeviceError> {
        loop {
            let tx = self.tx_pending && ctx.ready(TXQ) && !self.muxer.backlogged();
            if tx {
                self.process_tx(ctx)?;
            }
            self.fill_rx(ctx)?;
            let again = self.tx_pending && ctx.ready(TXQ) && !self.muxer.backlogged();
            if !again {
                return Ok(());
            }
        }
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        // Remove our socket, unless someone replaced it meanwhile.
        let (path, dev, ino) = &self.bound;
        if let Ok(m) = std::fs::symlink_metadata(path) {
            if m.dev() == *dev && m.ino() == *ino {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

impl VirtioDevice for Vsock {
    fn name(&self) -> &str {
        "virtio-vsock"
    }
    fn device_type(&self) -> u32 {
        types::VSOCK
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }
    fn features(&self) -> u64 {
        0
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let cfg = self.guest_cid.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset
                .checked_add(i as u64)
                .and_then(|o| usize::try_from(o).ok());
            *b = at.and_then(|o| cfg.get(o)).copied().unwrap_or(0);
        }
    }
    fn reset(&mut self) {
        self.muxer.reset();
        self.tx_pending = false;
    }
    fn restore_state(&mut self, _state: &serde_json::Value) -> Result<(), DeviceError> {
        self.reset_event_pending = true;
        Ok(())
    }
    fn process_queue(&mut self, q: usize, ctx: &mut QueueCtx) -> Result<(), DeviceError> {
        match q {
            RXQ => {}
            TXQ => self.tx_pending = true,
            // The event queue: buffers stay with us until an event occurs.
            _ => return self.send_reset_event(ctx),
        }
        self.pump(ctx)
    }
    fn event_fds(&self) -> Vec<RawFd> {
        vec![self.muxer.epoll_fd()]
    }
    fn process_event(&mut self, _token: usize, ctx: &mut QueueCtx) -> Result<(), DeviceError> {
        self.muxer.handle_events();
        if ctx.active {
            self.pump(ctx)?;
        }
        Ok(())
    }
}
