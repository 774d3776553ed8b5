//! The device against real Unix sockets on the host side and the test
//! driver as the guest.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use vm_memory::{Bytes, GuestAddress};

use super::packet::{op, shutdown, Header, Packet, HDR_LEN, HOST_CID, TYPE_STREAM};
use super::{Vsock, VsockError};
use crate::devices::virtio::mmio::regs;
use crate::devices::virtio::testing::{TestDriver, D, DATA, QSIZE};

const CID: u64 = 3;
/// Each rx buffer gets a 64 KiB slot from DATA; tx buffers come after.
const RX_SLOT: u64 = 0x1_0000;
const TX_BASE: u64 = DATA + 0x10_0000;
const TX_END: u64 = 15 << 20;

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("subzero-vsock-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir(&p).unwrap();
        TempDir(p)
    }
    fn sock(&self) -> PathBuf {
        self.0.join("v.sock")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The guest side: the test driver plus rx buffer bookkeeping.
struct Guest {
    d: TestDriver,
    rx_addr: HashMap<u16, u64>,
    rx_posted: u64,
    rx_seen: usize,
    rx_len: u32,
    tx_next: u64,
}

impl Guest {
    /// A device for `path`, driver ready, four 4 KiB rx buffers posted.
    fn new(path: &Path) -> Self {
        let mut g = Guest::inactive(path);
        g.d.setup(|_, max| max.min(QSIZE));
        g.post_rx(4);
        g
    }

    fn inactive(path: &Path) -> Self {
        let v = Vsock::new(CID, path).unwrap();
        Guest {
            d: TestDriver::raw(Box::new(v)),
            rx_addr: HashMap::new(),
            rx_posted: 0,
            rx_seen: 0,
            rx_len: 4096,
            tx_next: TX_BASE,
        }
    }

    fn post_rx(&mut self, n: usize) {
        for _ in 0..n {
            let addr = DATA + (self.rx_posted % u64::from(QSIZE)) * RX_SLOT;
            self.rx_posted += 1;
            let head = self.d.add_chain(0, &[(addr, self.rx_len, true)]);
            self.rx_addr.insert(head, addr);
        }
        self.d.kick(0);
    }

    /// Packets the device put in rx buffers since the last call; every
    /// used buffer is replaced.
    fn recv(&mut self) -> Vec<Packet> {
        let used = self.d.used(0);
        let fresh = &used[self.rx_seen..];
        self.rx_seen = used.len();
        let mut out = Vec::new();
        for &(head, len) in fresh {
            if len == 0 {
                continue;
            }
            let addr = self.rx_addr[&(head as u16)];
            let mut hb = [0u8; HDR_LEN];
            self.d.mem.read_slice(&mut hb, GuestAddress(addr)).unwrap();
            let hdr = Header::from_bytes(&hb);
            let mut data = vec![0u8; len as usize - HDR_LEN];
            let at = GuestAddress(addr + HDR_LEN as u64);
            self.d.mem.read_slice(&mut data, at).unwrap();
            assert_eq!(hdr.len as usize, data.len());
            out.push(Packet { hdr, data });
        }
        if !fresh.is_empty() {
            self.post_rx(fresh.len());
        }
        out
    }

    /// Sends `bytes` as one tx chain cut into descriptors of `split` lengths
    /// (the rest in a last one).
    fn send_raw(&mut self, bytes: &[u8], split: &[usize]) {
        if self.tx_next + bytes.len() as u64 + 64 > TX_END {
            self.tx_next = TX_BASE;
        }
        let base = self.tx_next;
        self.tx_next += bytes.len() as u64 + 64;
        self.d.mem.write_slice(bytes, GuestAddress(base)).unwrap();
        let mut descs: Vec<D> = Vec::new();
        let mut at = 0usize;
        for &n in split {
            descs.push((base + at as u64, n as u32, false));
            at += n;
        }
        if at < bytes.len() || descs.is_empty() {
            descs.push((base + at as u64, (bytes.len() - at) as u32, false));
        }
        self.d.add_chain(1, &descs);
        self.d.kick(1);
    }

    fn send(&mut self, hdr: Header, data: &[u8]) {
        let mut b = hdr.to_bytes().to_vec();
        b.extend_from_slice(data);
        self.send_raw(&b, &[]);
    }

    /// The device thread noticed the host sockets.
    fn pump(&mut self) {
        self.d.source(0);
    }

    /// Whether the device's epoll fd would wake the device thread.
    fn wakes(&self) -> bool {
        let fd = self.d.with_device(|d| d.event_fds()[0]);
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: `p` is one valid pollfd and the timeout is zero.
        let n = unsafe { libc::poll(&mut p, 1, 0) };
        n == 1
    }
}

/// A guest packet header to the host.
fn hdr(op: u16, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        type_: TYPE_STREAM,
        op,
        buf_alloc: 64 << 10,
        ..Header::default()
    }
}

fn rw(src_port: u32, dst_port: u32, data: &[u8]) -> Header {
    Header {
        len: data.len() as u32,
        ..hdr(op::RW, src_port, dst_port)
    }
}

fn read_n(s: &mut UnixStream, n: usize) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = vec![0u8; n];
    s.read_exact(&mut b).unwrap();
    b
}

/// The host side was closed (or shut for writing) by the device.
fn at_eof(s: &mut UnixStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 64];
    matches!(s.read(&mut b), Ok(0) | Err(_))
}

fn nothing_to_read(s: &mut UnixStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let r = s.read(&mut [0u8; 64]);
    s.set_nonblocking(false).unwrap();
    matches!(r, Err(e) if e.kind() == ErrorKind::WouldBlock)
}

/// Opens a host-initiated connection to guest `port` and has the guest
/// accept it with `buf_alloc`; returns the socket and the host port.
fn host_connect(g: &mut Guest, path: &Path, port: u32, buf_alloc: u32) -> (UnixStream, u32) {
    let mut s = UnixStream::connect(path).unwrap();
    s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
    g.pump();
    let p = g.recv();
    assert_eq!(p.len(), 1, "{p:?}");
    let req = p[0].hdr;
    assert_eq!(
        (req.op, req.type_, req.dst_port),
        (op::REQUEST, TYPE_STREAM, port)
    );
    assert_eq!((req.src_cid, req.dst_cid), (HOST_CID, CID));
    assert!(req.src_port >= 1 << 30, "{req:?}");
    assert_eq!(req.buf_alloc, 256 << 10);
    let local = req.src_port;
    g.send(
        Header {
            buf_alloc,
            ..hdr(op::RESPONSE, port, local)
        },
        &[],
    );
    assert_eq!(
        read_n(&mut s, format!("OK {local}\n").len()),
        format!("OK {local}\n").as_bytes()
    );
    (s, local)
}

/// The guest connects from `gport` to host port `hport`, where `lst` listens.
fn guest_connect(
    g: &mut Guest,
    lst: &UnixListener,
    gport: u32,
    hport: u32,
    buf: u32,
) -> UnixStream {
    g.send(
        Header {
            buf_alloc: buf,
            ..hdr(op::REQUEST, gport, hport)
        },
        &[],
    );
    let p = g.recv();
    assert_eq!(p.len(), 1, "{p:?}");
    let h = p[0].hdr;
    assert_eq!(
        (h.op, h.src_port, h.dst_port, h.dst_cid),
        (op::RESPONSE, hport, gport, CID)
    );
    lst.accept().unwrap().0
}

fn listen_at(path: &Path, port: u32) -> UnixListener {
    UnixListener::bind(format!("{}_{port}", path.display())).unwrap()
}

#[test]
fn host_connect_then_data_flows_both_ways() {
    let dir = TempDir::new();
    let mut g = Guest::new(&dir.sock());
    let (mut s, local) = host_connect(&mut g, &dir.sock(), 5000, 64 << 10);

    s.write_all(b"hello").unwrap();
    g.pump();
    let p = g.recv();
    assert_eq!(p.len(), 1);
    assert_eq!(
        (p[0].hdr.op, p[0].hdr.src_port, p[0].hdr.dst_port),
        (op::RW, local, 5000)
    );
    assert_eq!(p[0].data, b"hello");
    assert_eq!(p[0].hdr.buf_alloc, 256 << 10);

    g.send(rw(5000, local, b"world"), b"world");
    assert_eq!(read_n(&mut s, 5), b"world");

    // A second connection gets its own host port.
    let (_s2, local2) = host_connect(&mut g, &dir.sock(), 5000, 64 << 10);
    assert_ne!(local, local2);
    assert!(!g.d.needs_reset());
}

#[test]
fn bytes_sent_with_the_connect_line_reach_the_guest() {
    let dir = TempDir::new();
    let mut g = Guest::new(&dir.sock());
    let mut s = UnixStream::connect(dir.sock()).unwrap();
    s.write_all(b"CONNECT 7\r\nearly").unwrap();
    g.pump();
    let req = g.recv()[0].hdr;
    assert_eq!((req.op, req.dst_port), (op::REQUEST, 7));
    g.send(hdr(op::RESPONSE, 7, req.src_port), &[]);
    let ok = format!("OK {}\n", req.src_port);
    assert_eq!(read_n(&mut s, ok.len()), ok.as_bytes());
    let p = g.recv();
    assert_eq!((p[0].hdr.op, &p[0].data[..]), (op::RW, &b"early"[..]));
}

#[test]
fn guest_rst_closes_the_host_connection() {
    let dir = TempDir::new();
    let mut g = Guest::new(&dir.sock());
    let mut s = UnixStream::connect(dir.sock()).unwrap();
    s.write_all(b"CONNECT 6000\n").unwrap();
    g.pump();
    let req = g.recv()[0].hdr;
    g.send(hdr(op::RST, 6000, req.src_port), &[]);
    assert!(at_eof(&mut s));
    assert!(g.recv().is_empty(), "no answer to an RST");
}

#[test]
fn bad_connect_lines_close_the_host_connection() {
    let dir = TempDir::new();
    let mut g = Guest::new(&dir.sock());
    let long = [b'7'; 40];
    for line in [&b"HELLO 5\n"[..], b"CONNECT x\n", b"CONNECT 5 6\n", &long] {
        let mut s = UnixStream::connect(dir.sock()).unwrap();
        s.write_all(line).unwrap();
        g.pump();
        g.pump();
        assert!(at_eof(&mut s), "{line:?}");
    }
    // A host that hangs up mid-line is forgotten too.
    let mut s = UnixStream::connect(dir.sock()).unwrap();
    s.write_all(b"CONN").unwrap();
    g.pump();
    s.shutdown(Shutdown::Write).unwrap();
    g.pump();
    assert!(at_eof(&mut s));
    assert!(g.recv().is_empty());
    assert!(!g.wakes());
    assert!(!g.d.needs_reset());
}

#[test]
fn guest_connects_to_a_host_listener_and_both_sides_shut_down() {
    let dir = TempDir::new();
    let mut g = Guest::new(&dir.sock());
    let lst = listen_at(&dir.sock(), 5000);
    let mut s = guest_connect(&mut g, &lst, 1234, 5000, 64 << 10);

    s.write_all(b"ping").unwrap();
    g.pump();
    let p = g.recv();
    assert_eq!(
        (p[0].hdr.op, p[0].hdr.src_port, &p[0].data[..]),
        (op::RW, 5000, &b"ping"[..])
    );
    g.send(rw(1234, 5000, b"pong"), b"pong");
    assert_eq!(read_n(&mut s, 4), b"pong");

    // Host EOF: the guest hears SHUTDOWN(SEND), but may still send.
    s.shutdown(Shutdown::Write).unwrap();
    g.pump();
    let p = g.recv();
    assert_eq!(p.len(), 1);
    assert_eq!(
        (p[0].hdr.op, p[0].hdr.flags),
        (op::SHUTDOWN, shutdown::SEND)
    );
    g.send(rw(1234, 5000, b"late"), b"late");
    assert_eq!(read_n(&mut s, 4), b"late");

    // The guest closes: RST, and the host socket is closed.
    g.send(
        Header {
            flags: shutdown::BOTH,
            ..hdr(op::SHUTDOWN, 1234, 5000)
        },
        &[],
    );
    let p = g.recv();
    assert_eq!(p.len(), 1);
    assert_eq!((p[0].hdr.op, p[0].hdr.dst_port), (op::RST, 1234));
    assert!(at_eof(&mut s));
    assert!(!g.d.needs_reset());
}

#[test]
fn guest_half_close_shuts_the_host_side_for_writing() {
    let dir = TempDir::new();
    let mut g = Guest::new(&dir.sock());
    let (mut s, local) = host_connect(&mut g, &dir.sock(), 80, 64 << 10);
    let shut = |flags| Header {
        flags,
        ..hdr(op::SHUTDOWN, 80, local)
    };
    g.send(shut(shutdown::SEND), &[]);
    assert!(at_eof(&mut s));
    // The other direction still works.
    s.write_all(b"reply").unwrap();
    g.pump();
    assert_eq!(g.recv()[0].data, b"reply");
    // The host closes too: SHUTDOWN(SEND), then RST.
    drop(s);
    g.pump();
    let ops: Vec<u16> = g.recv().iter().map(|p| p.hdr.op).collect();
    assert_eq!(ops, [op::SHUTDOWN, op::RST]);
}

#[test]
fn guest_connect_without_a_listener_is_refused() {
    let dir = TempDir::new();
    let mut g = Guest::new(&dir.sock());
    g.send(hdr(op::REQUEST, 1234, 5001), &[]);
    let p = g.recv();
    assert_eq!(p.len(), 1);
    let h = p[0].hdr;
    assert_eq!(
        (h.op, h.src_port, h.dst_port, h.src_cid, h.dst_cid),
        (op::RST, 5001, 1234, 2, CID)
    );
    // A stale socket file nobody listens on is refused the same way.
    drop(listen_at(&dir.sock(), 5002));
    g.send(hdr(op::REQUEST, 1235, 5002), &[]);
    assert_eq!(g.recv()[0].hdr.op, op::RST);
}

#[test]
fn the_guest_gets_no_more_than_its_credit() {
    let dir = TempDir::new();
    let mut g = Guest::new(&dir.sock());
    let lst = listen_at(&dir.sock(), 9);
    let mut s = guest_connect(&mut g, &lst, 40, 9, 16);
    let sent: Vec<u8> = (0..40u8).collect();
    s.write_all(&sent).unwrap();
    let mut got = Vec::new();
    let mut fwd = 0;
    while got.len() < sent.len() {
        g.pump();
        let p = g.recv();
        assert_eq!(p[0].hdr.op, op::RW);
        assert!(p[0].data.len() <= 16);
        got.extend_from_slice(&p[0].data);
        if got.len() < sent.len() {
            // Credit exhausted: the device asks, then waits without spinning.
            assert_eq!(p.len(), 2, "{p:?}");
            assert_eq!(p[1].hdr.op, op::CREDIT_REQUEST);
            g.pump();
            assert!(g.recv().is_empty());
            assert!(!g.wakes());
        }
        fwd += p[0].data.len() as u32;
        g.send(
            Header {
                buf_alloc: 16,
                fwd_cnt: fwd,
                ..hdr(op::CREDIT_UPDATE, 40, 9)
            },
            &[],
        );
    }
    assert_eq!(got, sent);

    // Our side: the guest asks, the device tells what it forwarded.
    g.send(rw(40, 9, b"12345"), b"12345");
    assert_eq!(read_n(&mut s, 5), b"12345");
    g.send(hdr(op::CREDIT_REQUEST, 40, 9), &[]);
    let p = g.recv();
    assert_eq!(p.len(), 1);
    assert_eq!(
        (p[0].hdr.op, p[0].hdr.fwd_cnt, p[0].hdr.buf_alloc),
        (op::CREDIT_UPDATE, 5, 256 << 10)
    );
}

#[test]
fn data_for_a_slow_host_is_buffered_and_credit_returns() {
    let dir = TempDir::new();
    let mut g = Guest::new(&dir.sock());
    let lst = listen_at(&dir.sock(), 9);
    let mut s = guest_connect(&mut g, &lst, 41, 9, 64 << 10);
    let chunk = 64 << 10;
    let total = 4 * chunk; // all the credit we advertise
    let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
    let mut updates = Vec::new();
    for c in data.chunks(chunk) {
        g.send(rw(41, 9, c), c);
        updates.extend(g.recv().into_iter().map(|p| (p.hdr.op, p.hdr.fwd_cnt)));
    }

    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    s.set_nonblocking(true).unwrap();
    for _ in 0..1000 {
        match s.read(&mut buf) {
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => assert_eq!(e.kind(), ErrorKind::WouldBlock),
        }
        g.pump();
        updates.extend(g.recv().into_iter().map(|p| (p.hdr.op, p.hdr.fwd_cnt)));
        if got.len() == total {
            break;
        }
    }
    assert!(
        got == data,
        "the host got {} of {total} bytes intact",
        got.len()
    );
    assert!(
        updates.iter().all(|u| u.0 == op::CREDIT_UPDATE),
        "{updates:?}"
    );
    let last = updates.last().expect("a credit update").1 as usize;
    assert!(last >= total - (64 << 10), "{updates:?}");
    g.send(hdr(op::CREDIT_REQUEST, 41, 9), &[]);
    assert_eq!(g.recv()[0].hdr.fwd_cnt as usize, total);
}

#[test]
fn a_guest_overrunning_its_credit_is_reset() {
    let dir = TempDir::new();
    let mut g = Guest::new(&dir.sock());
    let lst = listen_at(&dir.sock(), 9);
    let mut s = guest_connect(&mut g, &lst, 42, 9, 64 << 10);
    let c = vec![1u8; 64 << 10];
    let mut reset = false;
    for _ in 0..64 {
        g.send(rw(42, 9, &c), &c);
        let p = g.recv();
        assert!(p.iter().all(|p| p.hdr.dst_port == 42));
        if p.iter().any(|p| p.hdr.op == op::RST) {
            reset = true;
            break;
        }
        assert!(p.iter().all(|p| p.hdr.op == op::CREDIT_UPDATE), "{p:?}");
    }
    assert!(reset, "the device buffered without bound");
    let mut sink = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert!(s.read_to_end(&mut sink).is_ok(), "the host side is closed");
    assert!(!g.d.needs_reset());
}

#[test]
fn malformed_packets_are_refused_without_breaking_the_device() {
    let dir = TempDir::new();
    let mut g = Guest::new(&dir.sock());
    let lst = listen_at(&dir.sock(), 7);

    // Too short for a header, and an rx buffer too short for one: dropped.
    g.send_raw(&[0u8; 20], &[]);
    assert!(g.recv().is_empty());

    let expect_rst = |g: &mut Guest, h: Header, what: &str| {
        g.send(h, &[]);
        let p = g.recv();
        assert_eq!(p.len(), 1, "{what}: {p:?}");
        assert_eq!(p[0].hdr.op, op::RST, "{what}");
        assert_eq!(
            (p[0].hdr.src_port, p[0].hdr.dst_port),
            (h.dst_port, h.src_port)
        );
        p[0].hdr
    };
    let t = Header {
        type_: 2,
        ..hdr(op::REQUEST, 1, 7)
    };
    expect_rst(&mut g, t, "seqpacket");
    expect_rst(&mut g, hdr(99, 1, 7), "unknown op");
    expect_rst(&mut g, hdr(op::RW, 1, 7), "data for no connection");
    expect_rst(&mut g, hdr(op::RESPONSE, 1, 7), "response to nothing");
    let len = Header {
        len: 100,
        ..hdr(op::RW, 1, 7)
    };
    expect_rst(&mut g, len, "len past the buffer");
    let huge = Header {
        len: u32::MAX,
        ..hdr(op::REQUEST, 1, 7)
    };
    expect_rst(&mut g, huge, "huge len");
    let other = Header {
        dst_cid: 5,
        ..hdr(op::REQUEST, 1, 7)
    };
    assert_eq!(expect_rst(&mut g, other, "other cid").src_cid, 5);

    // Not from our guest, or an RST: no answer.
    let spoof = Header {
        src_cid: 9,
        ..hdr(op::REQUEST, 1, 7)
    };
    g.send(spoof, &[]);
    g.send(hdr(op::RST, 1, 7), &[]);
    assert!(g.recv().is_empty());
    assert!(lst.set_nonblocking(true).is_ok() && lst.accept().is_err());
    lst.set_nonblocking(false).unwrap();

    // A header split over three descriptors, the payload over two.
    let mut s = guest_connect(&mut g, &lst, 2, 7, 64 << 10);
    let mut b = rw(2, 7, b"split!").to_bytes().to_vec();
    b.extend_from_slice(b"split!");
    g.send_raw(&b, &[3, 30, 11, 2]);
    assert_eq!(read_n(&mut s, 6), b"split!");

    // A bad op on a live connection resets it.
    expect_rst(&mut g, hdr(42, 2, 7), "unknown op on a connection");
    assert!(at_eof(&mut s));

    // A tiny rx buffer comes back empty; the packet waits for a good one.
    for port in 10..14 {
        g.send(hdr(op::RW, port, 7), &[]); // four RSTs use up the rx buffers
    }
    g.rx_len = 20;
    g.post_rx(1);
    g.rx_len = 4096;
    g.send(hdr(op::RW, 20, 7), &[]);
    assert_eq!(g.d.used(0).last().unwrap().1, 0);
    assert_eq!(g.recv().len(), 4);
    let p = g.recv();
    assert_eq!((p.len(), p[0].hdr.op, p[0].hdr.dst_port), (1, op::RST, 20));
    assert!(!g.d.needs_reset());
}

#[test]
fn connections_wait_for_the_driver_without_spinning() {
    let dir = TempDir::new();
    let mut g = Guest::inactive(&dir.sock());
    let mut s = UnixStream::connect(dir.sock()).unwrap();
    s.write_all(b"CONNECT 22\n").unwrap();
    g.pump();
    assert!(!g.wakes(), "the pending request keeps the thread busy");
    g.d.setup(|_, max| max.min(QSIZE));
    g.post_rx(2);
    let p = g.recv();
    assert_eq!((p[0].hdr.op, p[0].hdr.dst_port), (op::REQUEST, 22));
}

#[test]
fn reset_closes_every_connection() {
    let dir = TempDir::new();
    let mut g = Guest::new(&dir.sock());
    let (mut s, _) = host_connect(&mut g, &dir.sock(), 5, 4096);
    let lst = listen_at(&dir.sock(), 6);
    let mut s2 = guest_connect(&mut g, &lst, 3, 6, 4096);
    assert!(nothing_to_read(&mut s2));
    g.d.write(regs::STATUS, 0);
    assert!(at_eof(&mut s));
    assert!(at_eof(&mut s2));
    assert!(!g.wakes());
}

#[test]
fn device_identity_and_config() {
    let dir = TempDir::new();
    let g = Guest::new(&dir.sock());
    let (ty, sizes, feat, cfg) = g.d.with_device(|d| {
        let mut cfg = [0xffu8; 12];
        d.read_config(0, &mut cfg);
        (
            d.device_type(),
            d.queue_max_sizes().to_vec(),
            d.features(),
            cfg,
        )
    });
    assert_eq!((ty, sizes, feat), (19, vec![256; 3], 0));
    assert_eq!(cfg, [3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let mut hi = [0u8; 4];
    g.d.with_device(|d| d.read_config(4, &mut hi));
    assert_eq!(hi, [0; 4]);
}

#[test]
fn new_checks_the_cid_and_the_socket_path() {
    let dir = TempDir::new();
    let sock = dir.sock();
    for cid in [0, 1, 2, u64::from(u32::MAX)] {
        let e = Vsock::new(cid, &sock).err().expect("reserved cid");
        assert!(matches!(e, VsockError::BadCid(c) if c == cid));
        assert!(e.to_string().contains("choose a CID"), "{e}");
    }

    let missing = dir.0.join("nope/v.sock");
    let e = Vsock::new(3, &missing).err().expect("missing directory");
    assert!(matches!(e, VsockError::Bind { .. }));
    assert!(
        e.to_string().contains(&missing.display().to_string()),
        "{e}"
    );

    let file = dir.0.join("file");
    std::fs::write(&file, b"keep me").unwrap();
    let e = Vsock::new(3, &file).err().expect("regular file");
    assert!(matches!(e, VsockError::NotSocket(_)), "{e}");
    assert!(e.to_string().contains("not a socket"), "{e}");
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");

    let busy = UnixListener::bind(&sock).unwrap();
    let e = Vsock::new(3, &sock).err().expect("in use");
    assert!(matches!(e, VsockError::InUse(_)), "{e}");
    drop(busy); // leaves a stale socket file behind
    assert!(sock.exists());
    let v = Vsock::new(3, &sock).expect("stale socket replaced");
    assert!(UnixStream::connect(&sock).is_ok());
    drop(v);
    assert!(!sock.exists(), "the device removes its socket");
}

#[test]
fn tx_waits_while_answers_back_up_then_resumes() {
    let dir = TempDir::new();
    let mut g = Guest::inactive(&dir.sock());
    g.d.setup(|_, max| max.min(QSIZE));
    // No rx buffers: every refused packet's RST has to wait.
    for port in 0..256 {
        g.send(hdr(op::RW, port, 7), &[]);
    }
    assert_eq!(g.d.used(1).len(), 256);
    for port in 256..259 {
        g.send(hdr(op::RW, port, 7), &[]);
    }
    assert_eq!(g.d.used(1).len(), 256, "tx stops while 256 answers wait");
    g.post_rx(8);
    let mut ports = Vec::new();
    while ports.len() < 259 {
        let p = g.recv();
        assert!(!p.is_empty(), "stalled after {} RSTs", ports.len());
        ports.extend(
            p.iter()
                .map(|p| (p.hdr.op == op::RST).then_some(p.hdr.dst_port)),
        );
    }
    assert_eq!(ports, (0..259).map(Some).collect::<Vec<_>>());
    assert_eq!(g.d.used(1).len(), 259);
    assert!(!g.d.needs_reset());
}

#[test]
fn header_only_rx_buffers_with_host_data_do_not_spin() {
    let dir = TempDir::new();
    let mut g = Guest::inactive(&dir.sock());
    g.rx_len = HDR_LEN as u32; // header only: room for 0 payload bytes
    g.d.setup(|_, max| max.min(QSIZE));
    g.post_rx(4);
    let (mut s, _local) = host_connect(&mut g, &dir.sock(), 5000, 64 << 10);
    s.write_all(b"hello").unwrap();
    let shared = g.d.shared.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut g = g;
        g.pump();
        let _ = tx.send(());
    });
    let hung = rx.recv_timeout(Duration::from_secs(3)).is_err();
    assert!(
        !hung,
        "device thread spins in Muxer::next_packet; lock held: {}",
        shared.device_busy()
    );
}

#[test]
fn a_restored_device_tells_the_driver_its_connections_were_reset() {
    let tmp = TempDir::new();
    let mut g = Guest::new(&tmp.sock());
    let ev_addr = TX_END - 0x1000;
    g.d.mem
        .write_slice(&[0xff; 8], GuestAddress(ev_addr))
        .unwrap();
    let head = g.d.add_chain(2, &[(ev_addr, 8, true)]);
    g.d.kick(2);
    assert!(g.d.used(2).is_empty(), "no event before a restore");
    let saved = g.d.shared.save();
    g.d.replace_transport(Box::new(Vsock::new(CID, &tmp.0.join("w.sock")).unwrap()));
    g.d.shared.restore(&saved).unwrap();
    g.d.worker.handle_activated();
    assert_eq!(g.d.used(2), vec![(u32::from(head), 4)]);
    let mut event = [0u8; 8];
    g.d.mem
        .read_slice(&mut event, GuestAddress(ev_addr))
        .unwrap();
    assert_eq!(
        event,
        [0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff],
        "TRANSPORT_RESET is id 0"
    );
    g.d.kick(2);
    assert_eq!(g.d.used(2).len(), 1, "one event per restore");
}
