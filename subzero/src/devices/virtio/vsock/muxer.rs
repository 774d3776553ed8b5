//! The host side: the listening socket, every connection's host socket,
//! one epoll instance watching them all, and the routing of guest packets.
//!
//! The device thread watches only the epoll fd (level-triggered). Each
//! host socket is registered with exactly the events its connection can
//! act on now ([`Conn::interest`]) and removed when there are none, so a
//! connection waiting for guest credit or for the guest's answer never
//! wakes the thread, not even for a hang-up.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::conn::{Conn, Reset, State};
use super::packet::{op, Header, Packet, HOST_CID, TYPE_STREAM};

/// Most connections at once (each may buffer up to 320 KiB).
pub const MAX_CONNS: usize = 256;
/// Control packets (RSTs) waiting for rx buffers beyond which the tx
/// queue is no longer served, so a guest cannot make us queue without bound.
const CTRL_MAX: usize = 256;
/// First port handed out to host-initiated connections.
const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// Epoll token of the listening socket; connections count from 1.
const LISTENER: u64 = 0;

/// Connects to the Unix socket at `path` without blocking (a full backlog
/// fails with `WouldBlock` instead of waiting).
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    let mut addr = libc::sockaddr_un {
        sun_family: libc::AF_UNIX as libc::sa_family_t,
        sun_path: [0; 108],
    };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long or contains NUL",
        ));
    }
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: socket(2) takes no pointers; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a freshly created socket nobody else owns.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is an initialized sockaddr_un and `len` does not
    // exceed its size; the result is checked.
    let r = unsafe {
        libc::connect(
            owned.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(owned))
}

/// The host side of the device.
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    listener_parked: bool,
    epoll: Epoll,
    conns: HashMap<u64, Conn>,
    /// (host port, guest port) to connection token.
    keys: HashMap<(u32, u32), u64>,
    next_token: u64,
    next_port: u32,
    /// Connections that may have a packet for the guest, in turn.
    ready: VecDeque<u64>,
    /// Packets (RSTs) not tied to a live connection.
    ctrl: VecDeque<Header>,
    /// Guest packets dropped or refused.
    pub bad_packets: u64,
}

impl Muxer {
    /// Serves `listener` (non-blocking) for guest `guest_cid`.
    pub fn new(guest_cid: u64, uds_path: &Path, listener: UnixListener) -> io::Result<Self> {
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, LISTENER),
        )?;
        Ok(Muxer {
            guest_cid,
            uds_path: uds_path.to_owned(),
            listener,
            listener_parked: false,
            epoll,
            conns: HashMap::new(),
            keys: HashMap::new(),
            next_token: 1,
            next_port: FIRST_LOCAL_PORT,
            ready: VecDeque::new(),
            ctrl: VecDeque::new(),
            bad_packets: 0,
        })
    }

    /// The fd the device thread watches.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Device reset: drops every connection the guest knows of. Host
    /// connections it has not heard of yet survive, so a host program may
    /// connect before the driver is up.
    pub fn reset(&mut self) {
        let known: Vec<u64> = (self.conns.iter())
            .filter(|(_, c)| c.guest_knows())
            .map(|(&t, _)| t)
            .collect();
        for token in known {
            self.close(token, Reset("device reset"), false);
        }
        self.ctrl.clear();
    }

    /// Serves whatever the host sockets have for us, without blocking.
    pub fn handle_events(&mut self) {
        let mut events = [EpollEvent::default(); 32];
        let n = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(e) => {
                log::warn!("virtio-vsock: epoll_wait: {e}");
                return;
            }
        };
        for ev in &events[..n] {
            match ev.data() {
                LISTENER => self.accept(),
                token => self.conn_event(token),
            }
        }
    }

    fn accept(&mut self) {
        // A bounded batch: the listener is level-triggered, the rest waits.
        for _ in 0..64 {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.conns.len() >= MAX_CONNS {
                        log::warn!("virtio-vsock: {MAX_CONNS} connections open, refusing one");
                        continue;
                    }
                    if let Err(e) = stream.set_nonblocking(true) {
                        log::warn!("virtio-vsock: {e}");
                        continue;
                    }
                    // The CONNECT line is often there already.
                    let token = self.add(Conn::from_host(stream));
                    self.conn_event(token);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR | libc::ECONNABORTED)) => {}
                Err(e) => {
                    // Out of fds, say: stop watching until a connection closes.
                    log::warn!("virtio-vsock: accept on {}: {e}", self.uds_path.display());
                    let _ = self.epoll.ctl(
                        ControlOperation::Delete,
                        self.listener.as_raw_fd(),
                        EpollEvent::default(),
                    );
                    self.listener_parked = true;
                    break;
                }
            }
        }
    }

    fn unpark_listener(&mut self) {
        if self.listener_parked {
            let ev = EpollEvent::new(EventSet::IN, LISTENER);
            if self
                .epoll
                .ctl(ControlOperation::Add, self.listener.as_raw_fd(), ev)
                .is_ok()
            {
                self.listener_parked = false;
            }
        }
    }

    fn add(&mut self, conn: Conn) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        if !matches!(conn.state, State::AwaitLine(_)) {
            self.keys.insert((conn.local_port, conn.peer_port), token);
        }
        self.conns.insert(token, conn);
        token
    }

    fn alloc_port(&mut self) -> Option<u32> {
        for _ in 0..=MAX_CONNS {
            let p = self.next_port;
            self.next_port = if p >= u32::MAX - 1 {
                FIRST_LOCAL_PORT
            } else {
                p + 1
            };
            if !self.keys.keys().any(|&(local, _)| local == p) {
                return Some(p);
            }
        }
        None
    }

    fn conn_event(&mut self, token: u64) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let r = match conn.state {
            State::AwaitLine(_) => match conn.read_line() {
                Ok(Some(port)) => match self.alloc_port() {
                    Some(local) => {
                        if let Some(conn) = self.conns.get_mut(&token) {
                            conn.request(local);
                            self.keys.insert((local, port), token);
                        }
                        Ok(())
                    }
                    None => Err(Reset("no free local port")),
                },
                Ok(None) => Ok(()),
                Err(e) => Err(e),
            },
            State::Requesting => Ok(()),
            State::Established => conn.flush().and_then(|()| conn.read_host()),
        };
        match r {
            Ok(()) => self.after(token),
            Err(e) => self.kill(token, e),
        }
    }

    /// Closes the connection, telling the guest with an RST if it knows it.
    fn kill(&mut self, token: u64, why: Reset) {
        self.close(token, why, true);
    }

    fn close(&mut self, token: u64, why: Reset, rst: bool) {
        let Some(conn) = self.conns.remove(&token) else {
            return;
        };
        log::debug!(
            "virtio-vsock: closing {}:{}: {}",
            conn.local_port,
            conn.peer_port,
            why.0
        );
        if self.keys.get(&(conn.local_port, conn.peer_port)) == Some(&token) {
            self.keys.remove(&(conn.local_port, conn.peer_port));
        }
        if rst && conn.guest_knows() {
            self.ctrl.push_back(conn.header(self.guest_cid, op::RST));
        }
        // Dropping the stream closes it, which also takes it out of the epoll set.
        drop(conn);
        self.unpark_listener();
    }

    /// After any change to a connection: finish it, queue its packets, and
    /// watch its socket for what it can do now.
    fn after(&mut self, token: u64) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        if conn.is_done() {
            return self.kill(token, Reset("both directions shut down"));
        }
        if conn.has_packet() && !conn.queued {
            conn.queued = true;
            self.ready.push_back(token);
        }
        let want = conn.interest();
        if want == conn.registered {
            return;
        }
        let fd = conn.stream.as_raw_fd();
        let r = if conn.registered.is_empty() {
            self.epoll
                .ctl(ControlOperation::Add, fd, EpollEvent::new(want, token))
        } else if want.is_empty() {
            self.epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default())
        } else {
            self.epoll
                .ctl(ControlOperation::Modify, fd, EpollEvent::new(want, token))
        };
        match r {
            Ok(()) => conn.registered = want,
            Err(e) => {
                log::warn!("virtio-vsock: epoll_ctl: {e}");
                self.kill(token, Reset("cannot watch the host socket"));
            }
        }
    }

    fn refuse(&mut self, hdr: &Header) {
        self.bad_packets += 1;
        if hdr.op != op::RST {
            self.ctrl.push_back(hdr.reply_rst());
        }
    }

    /// A guest packet that is malformed (say, longer than its buffers):
    /// reset its connection, or answer RST.
    pub fn bad_packet(&mut self, hdr: &Header) {
        if hdr.src_cid != self.guest_cid {
            self.bad_packets += 1;
            return;
        }
        match self.keys.get(&(hdr.dst_port, hdr.src_port)).copied() {
            Some(token) => {
                self.bad_packets += 1;
                self.kill(token, Reset("malformed packet"));
            }
            None => self.refuse(hdr),
        }
    }

    /// A well-formed packet from the guest; `data` is the RW payload.
    pub fn guest_packet(&mut self, hdr: &Header, data: &[u8]) {
        if hdr.src_cid != self.guest_cid {
            // Not from our guest: there is nobody to answer.
            self.bad_packets += 1;
            return;
        }
        if hdr.dst_cid != HOST_CID || hdr.type_ != TYPE_STREAM {
            return self.refuse(hdr);
        }
        let token = self.keys.get(&(hdr.dst_port, hdr.src_port)).copied();
        let Some(token) = token else {
            match hdr.op {
                op::REQUEST => self.guest_connect(hdr),
                op::RST => {}
                _ => self.refuse(hdr),
            }
            return;
        };
        let Some(conn) = self.conns.get_mut(&token) else {
            self.keys.remove(&(hdr.dst_port, hdr.src_port));
            return self.refuse(hdr);
        };
        conn.update_peer_credit(hdr);
        let r = match hdr.op {
            op::RST => return self.close(token, Reset("guest sent RST"), false),
            op::REQUEST => Err(Reset("REQUEST for an open connection")),
            op::RESPONSE => conn.on_response(),
            op::RW => conn.recv_rw(data),
            op::SHUTDOWN => conn.guest_shutdown(hdr.flags),
            op::CREDIT_UPDATE => Ok(()),
            op::CREDIT_REQUEST => {
                conn.on_credit_request();
                Ok(())
            }
            _ => Err(Reset("unknown operation")),
        };
        match r {
            Ok(()) => self.after(token),
            Err(e) => self.kill(token, e),
        }
    }

    /// The guest connects to host port `req.dst_port`: `<uds_path>_<port>`.
    fn guest_connect(&mut self, req: &Header) {
        if self.conns.len() >= MAX_CONNS {
            log::warn!("virtio-vsock: {MAX_CONNS} connections open, refusing the guest's");
            return self.ctrl.push_back(req.reply_rst());
        }
        let mut path = OsString::from(self.uds_path.as_os_str());
        path.push(format!("_{}", req.dst_port));
        let path = PathBuf::from(path);
        match connect_nonblocking(&path) {
            Ok(stream) => {
                let token = self.add(Conn::from_guest(stream, req));
                self.after(token);
            }
            Err(e) => {
                log::debug!("virtio-vsock: guest connect to {}: {e}", path.display());
                self.ctrl.push_back(req.reply_rst());
            }
        }
    }

    /// Too many control packets wait for rx buffers: stop serving tx.
    pub fn backlogged(&self) -> bool {
        self.ctrl.len() >= CTRL_MAX
    }

    /// Whether a packet waits for the guest. Drops stale rx list entries,
    /// so `true` means [`Muxer::next_packet`] has something to give.
    pub fn has_packet(&mut self) -> bool {
        if !self.ctrl.is_empty() {
            return true;
        }
        while let Some(&token) = self.ready.front() {
            match self.conns.get_mut(&token) {
                Some(c) if c.has_packet() => return true,
                Some(c) => c.queued = false,
                None => {}
            }
            self.ready.pop_front();
        }
        false
    }

    /// The next packet for the guest, payload at most `max_payload` bytes.
    pub fn next_packet(&mut self, max_payload: usize) -> Option<Packet> {
        if let Some(hdr) = self.ctrl.pop_front() {
            return Some(Packet {
                hdr,
                data: Vec::new(),
            });
        }
        // One pass over the ready connections at most: a connection whose
        // data does not fit `max_payload` (e.g. 0 bytes) is re-queued behind
        // the others and must not be retried forever.
        for _ in 0..self.ready.len() {
            let Some(token) = self.ready.pop_front() else {
                break;
            };
            let Some(conn) = self.conns.get_mut(&token) else {
                continue;
            };
            conn.queued = false;
            let p = conn.next_packet(self.guest_cid, max_payload);
            // Re-queues the connection behind the others if it has more.
            self.after(token);
            if p.is_some() {
                return p;
            }
        }
        None
    }

    /// A packet for the guest could not be delivered: its connection is broken.
    pub fn lost_packet(&mut self, hdr: &Header) {
        if let Some(token) = self.keys.get(&(hdr.src_port, hdr.dst_port)).copied() {
            self.kill(token, Reset("could not deliver a packet to the guest"));
        }
    }
}
