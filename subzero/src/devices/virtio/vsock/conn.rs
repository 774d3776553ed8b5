//! One connection between a host Unix socket and a guest vsock port: its
//! state, both directions' buffers and the credit accounting.
//!
//! Guest to host: RW payloads go straight to the host socket; what it
//! cannot take yet waits in `to_host`, at most [`BUF_ALLOC`] bytes, which is
//! the receive buffer we advertise. `fwd_cnt` counts the guest bytes written
//! to the host socket, so the guest's credit is exactly our free space.
//!
//! Host to guest: the host socket is read only as far as the guest has
//! credit (`peer_buf_alloc - (tx_cnt - peer_fwd_cnt)`), into `staged`, which
//! the rx path turns into RW packets. With no credit the socket is not
//! read (nor watched), so nothing spins while the guest catches up.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use vmm_sys_util::epoll::EventSet;

use super::packet::{op, shutdown, Header, Packet, HOST_CID, TYPE_STREAM};

/// Receive buffer we advertise per connection (`buf_alloc`): the bound on
/// guest data waiting for the host socket.
pub const BUF_ALLOC: u32 = 256 << 10;
/// Largest RW payload we send or accept.
pub const MAX_PKT: usize = 64 << 10;
/// Host bytes read ahead for the guest, at most.
const STAGE_MAX: usize = 64 << 10;
/// Send a credit update once this much was forwarded since the last
/// header we sent (below [`BUF_ALLOC`], so a stalled guest always hears).
const CREDIT_THRESHOLD: u32 = BUF_ALLOC / 4;
/// Longest `CONNECT <port>\n` line accepted.
pub const LINE_MAX: usize = 32;

/// Why a connection must be torn down (for the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reset(pub &'static str);

/// Where a connection is in its life.
#[derive(Debug, PartialEq, Eq)]
pub enum State {
    /// Host-initiated: waiting for the host's `CONNECT <port>\n` line.
    AwaitLine(Vec<u8>),
    /// Host-initiated: REQUEST queued or sent, waiting for the guest.
    Requesting,
    /// Open both ways (until shut down).
    Established,
}

/// A connection.
pub struct Conn {
    /// The host side.
    pub stream: UnixStream,
    /// Life-cycle state.
    pub state: State,
    /// Port on the host side (CID 2).
    pub local_port: u32,
    /// Port on the guest side.
    pub peer_port: u32,
    /// Events currently registered with the muxer's epoll (empty: not registered).
    pub registered: EventSet,
    /// Whether the muxer has this connection on its rx list.
    pub queued: bool,

    to_host: VecDeque<u8>,
    /// Leading bytes of `to_host` that are ours (the `OK` line), not guest data.
    uncounted: usize,
    rx_cnt: u32,
    fwd_cnt: u32,
    last_fwd_sent: u32,

    staged: Vec<u8>,
    tx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,

    send_request: bool,
    send_response: bool,
    send_credit_update: bool,
    send_credit_request: bool,
    credit_requested: bool,

    host_eof: bool,
    shutdown_sent: bool,
    guest_shut: u32,
    host_write_shut: bool,
}

/// Writes to a socket without blocking and without SIGPIPE.
fn send(stream: &UnixStream, data: &[u8]) -> io::Result<usize> {
    // SAFETY: `data` is valid for reads of `data.len()` bytes and the fd is
    // an open socket owned by `stream`; the return value is checked.
    let n = unsafe {
        libc::send(
            stream.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// Parses `CONNECT <port>` (the newline already cut off; a trailing CR allowed).
pub fn parse_connect(line: &[u8]) -> Option<u32> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let rest = std::str::from_utf8(line).ok()?.strip_prefix("CONNECT ")?;
    let port: u32 = rest.trim().parse().ok()?;
    (port != u32::MAX).then_some(port)
}

impl Conn {
    fn with(stream: UnixStream, state: State, local_port: u32, peer_port: u32) -> Self {
        Conn {
            stream,
            state,
            local_port,
            peer_port,
            registered: EventSet::empty(),
            queued: false,
            to_host: VecDeque::new(),
            uncounted: 0,
            rx_cnt: 0,
            fwd_cnt: 0,
            last_fwd_sent: 0,
            staged: Vec::new(),
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            send_request: false,
            send_response: false,
            send_credit_update: false,
            send_credit_request: false,
            credit_requested: false,
            host_eof: false,
            shutdown_sent: false,
            guest_shut: 0,
            host_write_shut: false,
        }
    }

    /// A host connection just accepted (non-blocking stream).
    pub fn from_host(stream: UnixStream) -> Self {
        Conn::with(stream, State::AwaitLine(Vec::new()), 0, 0)
    }

    /// A connection the guest asked for with `req`, connected to the host.
    pub fn from_guest(stream: UnixStream, req: &Header) -> Self {
        let mut c = Conn::with(stream, State::Established, req.dst_port, req.src_port);
        c.update_peer_credit(req);
        c.send_response = true;
        c
    }

    /// Whether the guest has heard of this connection (so it needs an RST).
    pub fn guest_knows(&self) -> bool {
        match self.state {
            State::AwaitLine(_) => false,
            State::Requesting => !self.send_request,
            State::Established => true,
        }
    }

    /// Reads the host's CONNECT line. `Ok(Some(port))` once complete: the
    /// connection then waits to send its REQUEST.
    pub fn read_line(&mut self) -> Result<Option<u32>, Reset> {
        let State::AwaitLine(line) = &mut self.state else {
            return Ok(None);
        };
        let mut buf = [0u8; LINE_MAX];
        let want = LINE_MAX - line.len();
        match (&self.stream).read(&mut buf[..want]) {
            Ok(0) => return Err(Reset("host closed the connection before CONNECT")),
            Ok(n) => line.extend_from_slice(&buf[..n]),
            Err(e) if would_block(&e) => return Ok(None),
            Err(_) => return Err(Reset("host socket read failed")),
        }
        let Some(nl) = line.iter().position(|&b| b == b'\n') else {
            if line.len() >= LINE_MAX {
                return Err(Reset("CONNECT line too long"));
            }
            return Ok(None);
        };
        let port = parse_connect(&line[..nl]).ok_or(Reset("malformed CONNECT line"))?;
        // Bytes after the line are the first data for the guest.
        self.staged = line[nl + 1..].to_vec();
        self.peer_port = port;
        self.state = State::Requesting;
        Ok(Some(port))
    }

    /// Queues the REQUEST to the guest, from host port `local_port`.
    pub fn request(&mut self, local_port: u32) {
        self.local_port = local_port;
        self.send_request = true;
    }

    /// The guest accepted our REQUEST: tell the host program.
    pub fn on_response(&mut self) -> Result<(), Reset> {
        if self.state != State::Requesting || self.send_request {
            return Err(Reset("unexpected RESPONSE"));
        }
        self.state = State::Established;
        let line = format!("OK {}\n", self.local_port);
        self.uncounted = line.len();
        self.to_host.extend(line.as_bytes());
        self.flush()
    }

    /// Takes the credit information of a guest packet for this connection.
    pub fn update_peer_credit(&mut self, hdr: &Header) {
        if hdr.fwd_cnt != self.peer_fwd_cnt {
            self.credit_requested = false;
        }
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = hdr.fwd_cnt;
    }

    /// The guest asked for our credit.
    pub fn on_credit_request(&mut self) {
        self.send_credit_update = true;
    }

    /// Bytes we may still send the guest.
    pub fn credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    fn reading(&self) -> bool {
        self.state == State::Established && !self.host_eof && self.guest_shut & shutdown::RCV == 0
    }

    fn read_allowance(&self) -> usize {
        (self.credit() as usize)
            .saturating_sub(self.staged.len())
            .min(STAGE_MAX.saturating_sub(self.staged.len()))
    }

    /// Reads what the host sent, as far as the guest has credit.
    pub fn read_host(&mut self) -> Result<(), Reset> {
        let room = self.read_allowance();
        if !self.reading() || room == 0 {
            return Ok(());
        }
        let old = self.staged.len();
        self.staged.resize(old + room, 0);
        let r = (&self.stream).read(&mut self.staged[old..]);
        let n = match &r {
            Ok(n) => *n,
            Err(_) => 0,
        };
        self.staged.truncate(old + n);
        match r {
            Ok(0) => self.host_eof = true,
            Ok(_) => {}
            Err(e) if would_block(&e) => {}
            Err(_) => return Err(Reset("host socket read failed")),
        }
        Ok(())
    }

    /// Accounts `n` bytes written to the host socket.
    fn forwarded(&mut self, n: usize) {
        let ours = n.min(self.uncounted);
        self.uncounted -= ours;
        self.fwd_cnt = self.fwd_cnt.wrapping_add((n - ours) as u32);
        if self.fwd_cnt.wrapping_sub(self.last_fwd_sent) >= CREDIT_THRESHOLD {
            self.send_credit_update = true;
        }
    }

    /// Writes buffered guest data to the host socket, as far as it takes it.
    pub fn flush(&mut self) -> Result<(), Reset> {
        while !self.to_host.is_empty() {
            let (front, _) = self.to_host.as_slices();
            match send(&self.stream, front) {
                Ok(0) => break,
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.forwarded(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if would_block(&e) => break,
                Err(_) => return Err(Reset("host socket write failed")),
            }
        }
        if self.to_host.is_empty() && self.guest_shut & shutdown::SEND != 0 && !self.host_write_shut
        {
            self.host_write_shut = true;
            let _ = self.stream.shutdown(Shutdown::Write);
        }
        Ok(())
    }

    /// An RW packet from the guest.
    pub fn recv_rw(&mut self, data: &[u8]) -> Result<(), Reset> {
        if self.state != State::Established {
            return Err(Reset("data on a connection that is not open"));
        }
        if self.guest_shut & shutdown::SEND != 0 {
            return Err(Reset("data after the guest shut down sending"));
        }
        let waiting = self.rx_cnt.wrapping_sub(self.fwd_cnt) as usize;
        if waiting + data.len() > BUF_ALLOC as usize {
            return Err(Reset("guest overran its credit"));
        }
        self.rx_cnt = self.rx_cnt.wrapping_add(data.len() as u32);
        let mut rest = data;
        if self.to_host.is_empty() && !rest.is_empty() {
            match send(&self.stream, rest) {
                Ok(n) => {
                    self.forwarded(n);
                    rest = &rest[n..];
                }
                Err(e) if would_block(&e) => {}
                Err(_) => return Err(Reset("host socket write failed")),
            }
        }
        self.to_host.extend(rest);
        Ok(())
    }

    /// A SHUTDOWN from the guest: shut the host socket down to match.
    pub fn guest_shutdown(&mut self, flags: u32) -> Result<(), Reset> {
        if self.state != State::Established {
            return Err(Reset("SHUTDOWN on a connection that is not open"));
        }
        let new = flags & shutdown::BOTH & !self.guest_shut;
        self.guest_shut |= new;
        if new & shutdown::RCV != 0 {
            self.staged.clear();
            let _ = self.stream.shutdown(Shutdown::Read);
        }
        if new & shutdown::SEND != 0 {
            self.flush()?;
        }
        Ok(())
    }

    /// Both directions are finished: time for the RST.
    pub fn is_done(&self) -> bool {
        self.state == State::Established
            && self.guest_shut & shutdown::SEND != 0
            && self.to_host.is_empty()
            && (self.guest_shut & shutdown::RCV != 0 || self.shutdown_sent)
    }

    /// Which packet the connection would send the guest next.
    fn next_op(&self) -> Option<u16> {
        if self.send_request {
            return Some(op::REQUEST);
        }
        if self.send_response {
            return Some(op::RESPONSE);
        }
        if self.state != State::Established {
            return None;
        }
        if !self.staged.is_empty() && self.credit() > 0 {
            Some(op::RW)
        } else if self.send_credit_update {
            Some(op::CREDIT_UPDATE)
        } else if self.host_eof && self.staged.is_empty() && !self.shutdown_sent {
            Some(op::SHUTDOWN)
        } else if self.send_credit_request && self.credit() == 0 {
            Some(op::CREDIT_REQUEST)
        } else {
            None
        }
    }

    /// Whether there is a packet for the guest.
    pub fn has_packet(&self) -> bool {
        self.next_op().is_some()
    }

    /// A header from this connection to the guest.
    pub fn header(&self, guest_cid: u64, op: u16) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            type_: TYPE_STREAM,
            op,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: self.fwd_cnt,
            ..Header::default()
        }
    }

    /// The next packet for the guest, with at most `max_payload` bytes of data.
    pub fn next_packet(&mut self, guest_cid: u64, max_payload: usize) -> Option<Packet> {
        let op = self.next_op()?;
        let mut hdr = self.header(guest_cid, op);
        let mut data = Vec::new();
        match op {
            op::REQUEST => self.send_request = false,
            op::RESPONSE => self.send_response = false,
            op::RW => {
                let n = self
                    .staged
                    .len()
                    .min(self.credit() as usize)
                    .min(max_payload.min(MAX_PKT));
                if n == 0 {
                    return None;
                }
                data = self.staged.drain(..n).collect();
                hdr.len = n as u32;
                self.tx_cnt = self.tx_cnt.wrapping_add(n as u32);
                if self.credit() == 0 && !self.credit_requested {
                    self.send_credit_request = true;
                }
            }
            op::SHUTDOWN => {
                hdr.flags = shutdown::SEND;
                self.shutdown_sent = true;
            }
            op::CREDIT_REQUEST => {
                self.send_credit_request = false;
                self.credit_requested = true;
            }
            _ => {}
        }
        // Every header carries our fwd_cnt, so it is a credit update too.
        self.send_credit_update = false;
        self.last_fwd_sent = self.fwd_cnt;
        Some(Packet { hdr, data })
    }

    /// The epoll events this connection needs now.
    pub fn interest(&self) -> EventSet {
        let mut ev = EventSet::empty();
        match self.state {
            State::AwaitLine(_) => ev |= EventSet::IN,
            State::Requesting => {}
            State::Established => {
                if self.reading() && self.read_allowance() > 0 {
                    ev |= EventSet::IN;
                }
                if !self.to_host.is_empty() {
                    ev |= EventSet::OUT;
                }
            }
        }
        ev
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_connect_lines() {
        assert_eq!(parse_connect(b"CONNECT 5000"), Some(5000));
        assert_eq!(parse_connect(b"CONNECT 52\r"), Some(52));
        assert_eq!(parse_connect(b"CONNECT  7 "), Some(7));
        for bad in [
            &b"CONNECT"[..],
            b"CONNECT ",
            b"connect 5",
            b"CONNECT -1",
            b"CONNECT 4294967295",
            b"CONNECT 4294967296",
            b"CONNECT 5 6",
            b"CONNECT \xff",
        ] {
            assert_eq!(parse_connect(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn credit_limits_reads_and_packets() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let req = Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 1000,
            dst_port: 2000,
            op: op::REQUEST,
            type_: TYPE_STREAM,
            buf_alloc: 10,
            ..Header::default()
        };
        let mut c = Conn::from_guest(a, &req);
        assert_eq!(c.next_packet(3, 100).unwrap().hdr.op, op::RESPONSE);
        std::io::Write::write_all(&mut b, &[7u8; 25]).unwrap();
        c.read_host().unwrap();
        let p = c.next_packet(3, 4).unwrap();
        assert_eq!((p.hdr.op, p.data.len()), (op::RW, 4));
        let p = c.next_packet(3, 100).unwrap();
        assert_eq!((p.hdr.op, p.data.len(), c.credit()), (op::RW, 6, 0));
        c.read_host().unwrap();
        let p = c.next_packet(3, 100).unwrap();
        assert_eq!(p.hdr.op, op::CREDIT_REQUEST);
        assert!(c.next_packet(3, 100).is_none());
        assert!(!c.interest().contains(EventSet::IN));
        c.update_peer_credit(&Header {
            buf_alloc: 10,
            fwd_cnt: 10,
            ..req
        });
        assert!(c.interest().contains(EventSet::IN));
        c.read_host().unwrap();
        assert_eq!(c.next_packet(3, 100).unwrap().data.len(), 10);
    }
}
