//! `lab-peer`: the lab's small network and disk helper, built static and put
//! in both L1 and L2, because busybox has no AF_VSOCK or Unix-socket client
//! and no random-read benchmark.
//!
//! ```text
//! lab-peer gen SEED BYTES                 the test payload stream (see payload.rs) to stdout
//! lab-peer listen ADDR [--timeout SECS] [--bytes N]   accept one connection
//! lab-peer connect ADDR [--retry SECS] [--bytes N]
//! lab-peer rand read|write PATH SECS [--qd N]   4 KiB O_DIRECT I/O at random offsets, N at once
//! lab-peer seq read|write PATH BYTES      1 MiB O_DIRECT sequential I/O (+ fdatasync)
//! lab-peer http SOCK METHOD PATH [BODY] [--watch FILE]   one HTTP/1.1 request on a Unix socket
//! lab-peer vmm OUT SOCK -- CMD [ARG...]   start an API VMM; time until `GET /` answers
//! ```
//!
//! `http` and `vmm` are the API benchmark's stopwatch (curl's own start in
//! L1, a dynamic binary under an emulated CPU, would be most of what it
//! measures). `http` prints the response body to stdout and
//! `lab-peer: METHOD PATH: status S in T s` to stderr; it exits 0 for a 2xx
//! status. With `--watch FILE` it then waits for FILE (a VMM's console) to
//! grow past its size when the request was sent and adds `; FILE grew after
//! T s` (from the request). `vmm` spawns CMD (stdin /dev/null, stdout to
//! OUT, stderr to OUT.err), sends `GET /` on SOCK until one is answered 200,
//! prints `<pid> <seconds from spawn>` and exits, leaving CMD running.
//!
//! ADDR: `tcp:IP:PORT`, `vsock:CID:PORT` (listen: `vsock:PORT`), `unix:PATH`,
//! or `vsock-uds:PATH:PORT` (connect only): a Unix socket served by a VMM
//! with Firecracker's vsock convention; `CONNECT PORT\n` is sent and the
//! `OK ...` reply printed to stderr.
//!
//! Both `listen` and `connect` copy stdin to the socket and the socket to
//! stdout at the same time (`--bytes N`: only the first N bytes of stdin).
//! The connecting side half-closes when its stdin ends; the listening side half-closes only once its
//! stdin is sent *and* it has read the peer's end of stream and written it
//! all to stdout. So when `connect` returns, the listener has everything:
//! a guest can power off right after. Each side then prints one summary line
//! (bytes each way, time from connection to both ends closed, MiB/s) to
//! stderr.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use subzero_lab::payload::{parse_bytes, Payload};

fn usage() -> ExitCode {
    eprintln!(
        "usage: lab-peer gen SEED BYTES\n       lab-peer listen ADDR [--timeout SECS] [--bytes N]\n       \
         lab-peer connect ADDR [--retry SECS] [--bytes N]\n       \
         lab-peer rand read|write PATH SECS [--qd N]\n       \
         lab-peer seq read|write PATH BYTES\n       \
         lab-peer http SOCK METHOD PATH [BODY] [--watch FILE]\n       \
         lab-peer vmm OUT SOCK -- CMD [ARG...]\n\
         ADDR: tcp:IP:PORT | vsock:CID:PORT | vsock:PORT (listen) | unix:PATH | vsock-uds:PATH:PORT"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let res = match args.first().map(String::as_str) {
        Some("gen") if args.len() == 3 => gen(&args[1], &args[2]),
        Some("listen") if args.len() >= 2 => listen(&args[1], &args[2..]),
        Some("connect") if args.len() >= 2 => connect(&args[1], &args[2..]),
        Some("rand") if args.len() >= 4 => rand(&args[1], &args[2], &args[3], &args[4..]),
        Some("seq") if args.len() == 4 => seq(&args[1], &args[2], &args[3]),
        Some("http") if args.len() >= 4 => http(&args[1..]),
        Some("vmm") if args.len() >= 5 && args[3] == "--" => vmm(&args[1], &args[2], &args[4..]),
        _ => return usage(),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lab-peer: {e}");
            ExitCode::FAILURE
        }
    }
}

type Res<T> = Result<T, String>;

fn gen(seed: &str, bytes: &str) -> Res<()> {
    let seed: u64 = seed.parse().map_err(|_| format!("bad seed {seed:?}"))?;
    let mut left = parse_bytes(bytes).ok_or_else(|| format!("bad byte count {bytes:?}"))?;
    let mut p = Payload::new(seed);
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = io::stdout().lock();
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        p.fill(&mut buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| format!("stdout: {e}"))?;
        left -= n as u64;
    }
    out.flush().map_err(|e| format!("stdout: {e}"))
}

/// `--name VALUE` options.
fn options(rest: &[String], known: &[&str]) -> Res<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut it = rest.iter();
    while let Some(k) = it.next() {
        let name = k.strip_prefix("--").filter(|n| known.contains(n));
        let name = name.ok_or_else(|| format!("unknown option {k:?}"))?;
        let v = it.next().ok_or_else(|| format!("{k} needs a value"))?;
        out.push((name.to_string(), v.clone()));
    }
    Ok(out)
}

fn secs(v: &str) -> Res<Duration> {
    v.parse::<f64>()
        .ok()
        .filter(|s| *s >= 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("bad number of seconds {v:?}"))
}

fn byte_count(v: &str) -> Res<u64> {
    parse_bytes(v).ok_or_else(|| format!("bad byte count {v:?}"))
}

fn last_os_error(what: &str) -> String {
    format!("{what}: {}", io::Error::last_os_error())
}

fn cvt(r: libc::c_int, what: &str) -> Res<libc::c_int> {
    if r < 0 {
        Err(last_os_error(what))
    } else {
        Ok(r)
    }
}

fn socket(domain: libc::c_int) -> Res<OwnedFd> {
    // SAFETY: plain socket(2); the returned fd is owned by the OwnedFd.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    cvt(fd, "socket")?;
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A socket address in the forms `lab-peer` accepts.
enum Addr {
    Tcp(std::net::SocketAddr),
    Vsock { cid: u32, port: u32 },
    Unix(String),
    VsockUds { path: String, port: u32 },
}

fn parse_addr(s: &str, listening: bool) -> Res<Addr> {
    let bad = || format!("bad address {s:?}");
    let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
    match kind {
        "tcp" => rest.parse().map(Addr::Tcp).map_err(|_| bad()),
        "vsock" => {
            let (cid, port) = match rest.split_once(':') {
                Some((c, p)) => (c.parse().map_err(|_| bad())?, p),
                None if listening => (u32::MAX, rest),
                None => return Err(bad()),
            };
            Ok(Addr::Vsock {
                cid,
                port: port.parse().map_err(|_| bad())?,
            })
        }
        "unix" => Ok(Addr::Unix(rest.to_string())),
        "vsock-uds" if !listening => {
            let (path, port) = rest.rsplit_once(':').ok_or_else(bad)?;
            Ok(Addr::VsockUds {
                path: path.to_string(),
                port: port.parse().map_err(|_| bad())?,
            })
        }
        _ => Err(bad()),
    }
}

fn vsock_addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain old data; all-zero is a valid value.
    let mut a: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    a.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    a.svm_cid = cid;
    a.svm_port = port;
    a
}

fn vsock_socket(cid: u32, port: u32, listen: bool) -> Res<OwnedFd> {
    let fd = socket(libc::AF_VSOCK)?;
    let a = vsock_addr(cid, port);
    let p = &a as *const libc::sockaddr_vm as *const libc::sockaddr;
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    if listen {
        // SAFETY: `p` points to a valid sockaddr_vm of `len` bytes.
        cvt(unsafe { libc::bind(fd.as_raw_fd(), p, len) }, "bind")?;
        // SAFETY: listen(2) on our own socket.
        cvt(unsafe { libc::listen(fd.as_raw_fd(), 1) }, "listen")?;
    } else {
        // SAFETY: `p` points to a valid sockaddr_vm of `len` bytes.
        cvt(unsafe { libc::connect(fd.as_raw_fd(), p, len) }, "connect")?;
    }
    Ok(fd)
}

/// Waits up to `timeout` for a connection on `listener` and accepts it.
fn accept(listener: &OwnedFd, timeout: Option<Duration>) -> Res<OwnedFd> {
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as i32);
    // SAFETY: one valid pollfd.
    let n = cvt(unsafe { libc::poll(&mut pfd, 1, ms) }, "poll")?;
    if n == 0 {
        return Err(format!(
            "no connection within {:.0}s",
            timeout.unwrap_or_default().as_secs_f64()
        ));
    }
    // SAFETY: accept4 with null address pointers is allowed.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    };
    cvt(fd, "accept")?;
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn listen(addr: &str, rest: &[String]) -> Res<()> {
    let mut timeout = None;
    let mut limit = None;
    for (k, v) in options(rest, &["timeout", "bytes"])? {
        match k.as_str() {
            "timeout" => timeout = Some(secs(&v)?),
            _ => limit = Some(byte_count(&v)?),
        }
    }
    let conn: OwnedFd = match parse_addr(addr, true)? {
        Addr::Tcp(a) => {
            let l = std::net::TcpListener::bind(a).map_err(|e| format!("bind {a}: {e}"))?;
            accept(&OwnedFd::from(l), timeout)?
        }
        Addr::Unix(p) => {
            let _ = std::fs::remove_file(&p);
            let l =
                std::os::unix::net::UnixListener::bind(&p).map_err(|e| format!("bind {p}: {e}"))?;
            accept(&OwnedFd::from(l), timeout)?
        }
        Addr::Vsock { cid, port } => accept(&vsock_socket(cid, port, true)?, timeout)?,
        Addr::VsockUds { .. } => return Err("vsock-uds: is for connect only".into()),
    };
    transfer(addr, conn, true, limit)
}

/// Connects to a Firecracker-style vsock Unix socket and does the
/// `CONNECT <port>` handshake; returns the `OK ...` line.
fn vsock_uds(path: &str, port: u32) -> Res<(OwnedFd, String)> {
    let s = std::os::unix::net::UnixStream::connect(path)
        .map_err(|e| format!("connect {path}: {e}"))?;
    let mut f = File::from(OwnedFd::from(s));
    f.write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|e| format!("{path}: sending CONNECT: {e}"))?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match f.read(&mut b) {
            Ok(0) => {
                return Err(format!(
                    "{path}: connection closed after CONNECT {port} (got {:?})",
                    String::from_utf8_lossy(&line)
                ))
            }
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) if line.len() < 128 => line.push(b[0]),
            Ok(_) => return Err(format!("{path}: reply line too long")),
            Err(e) => return Err(format!("{path}: reading the reply: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&line).into_owned();
    if !line.starts_with("OK ") {
        return Err(format!("{path}: CONNECT {port} answered {line:?}"));
    }
    Ok((OwnedFd::from(f), line))
}

fn connect(addr: &str, rest: &[String]) -> Res<()> {
    let mut retry = Duration::ZERO;
    let mut limit = None;
    for (k, v) in options(rest, &["retry", "bytes"])? {
        match k.as_str() {
            "retry" => retry = secs(&v)?,
            _ => limit = Some(byte_count(&v)?),
        }
    }
    let target = parse_addr(addr, false)?;
    let deadline = Instant::now() + retry;
    let mut attempts = 0u32;
    let conn = loop {
        attempts += 1;
        let r: Res<OwnedFd> = match &target {
            Addr::Tcp(a) => std::net::TcpStream::connect(a)
                .map(OwnedFd::from)
                .map_err(|e| format!("connect {a}: {e}")),
            Addr::Unix(p) => std::os::unix::net::UnixStream::connect(p)
                .map(OwnedFd::from)
                .map_err(|e| format!("connect {p}: {e}")),
            Addr::Vsock { cid, port } => vsock_socket(*cid, *port, false),
            Addr::VsockUds { path, port } => vsock_uds(path, *port).map(|(fd, ok)| {
                eprintln!("lab-peer: {ok}");
                fd
            }),
        };
        match r {
            Ok(fd) => break fd,
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("{e} (after {attempts} attempts)"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    transfer(addr, conn, false, limit)
}

fn shutdown_write(fd: &OwnedFd) {
    // SAFETY: shutdown(2) on a socket we own.
    unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_WR) };
}

fn mib_s(bytes: u64, t: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / t.as_secs_f64().max(1e-9)
}

/// Copies stdin to `conn` and `conn` to stdout concurrently (see the module
/// docs for when each side half-closes), then prints a summary to stderr.
fn transfer(addr: &str, conn: OwnedFd, listener: bool, limit: Option<u64>) -> Res<()> {
    let t0 = Instant::now();
    let conn = std::sync::Arc::new(conn);
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let rx_conn = conn.clone();
    let receiver = std::thread::spawn(move || -> Res<(u64, ())> {
        let mut sock = File::from(rx_conn.try_clone().map_err(|e| format!("dup: {e}"))?);
        let mut out = io::stdout().lock();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        loop {
            match sock.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    out.write_all(&buf[..n])
                        .map_err(|e| format!("stdout: {e}"))?;
                    total += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("receiving: {e}")),
            }
        }
        out.flush().map_err(|e| format!("stdout: {e}"))?;
        let _ = done_tx.send(());
        Ok((total, ()))
    });
    let mut sock = File::from(conn.try_clone().map_err(|e| format!("dup: {e}"))?);
    let mut input = io::stdin().lock();
    let mut buf = vec![0u8; 256 * 1024];
    let mut sent = 0u64;
    let mut send_err = None;
    while limit.is_none_or(|l| sent < l) {
        let want = limit.map_or(buf.len() as u64, |l| (l - sent).min(buf.len() as u64));
        match input.read(&mut buf[..want as usize]) {
            Ok(0) => break,
            Ok(n) => {
                if let Err(e) = sock.write_all(&buf[..n]) {
                    send_err = Some(format!("sending: {e}"));
                    break;
                }
                sent += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                send_err = Some(format!("stdin: {e}"));
                break;
            }
        }
    }
    if listener {
        // Half-close only once everything from the peer is on stdout.
        let _ = done_rx.recv();
    }
    shutdown_write(&conn);
    let received = receiver
        .join()
        .map_err(|_| "receiver thread panicked".to_string())?;
    let (got, _) = received?;
    let t = t0.elapsed();
    eprintln!(
        "lab-peer: {addr}: sent {sent} bytes, received {got} bytes in {:.3}s ({:.1} MiB/s)",
        t.as_secs_f64(),
        mib_s(sent + got, t),
    );
    match send_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// 4 KiB O_DIRECT reads or writes at random aligned offsets of `path` for
/// `secs`, from `--qd N` threads (default 1), each with one request in
/// flight, so the device sees up to N at once. A write run ends with
/// fdatasync, inside the measured time.
fn rand(dir: &str, path: &str, secs_arg: &str, rest: &[String]) -> Res<()> {
    use std::io::Seek;
    use std::os::unix::fs::OpenOptionsExt;
    let write = match dir {
        "read" => false,
        "write" => true,
        _ => return Err(format!("rand {dir:?}: read or write")),
    };
    let dur = secs(secs_arg)?;
    let mut qd = 1u64;
    for (_, v) in options(rest, &["qd"])? {
        qd = v
            .parse()
            .ok()
            .filter(|n| (1..=256).contains(n))
            .ok_or_else(|| format!("bad --qd {v:?}: 1 to 256"))?;
    }
    let f = std::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|e| format!("{path}: {e}"))?;
    let size = (&f)
        .seek(io::SeekFrom::End(0))
        .map_err(|e| format!("{path}: {e}"))?;
    let blocks = size / 4096;
    if blocks == 0 {
        return Err(format!("{path} is smaller than 4 KiB"));
    }
    let t0 = Instant::now();
    let counts: Vec<Res<u64>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..qd)
            .map(|i| {
                let f = &f;
                s.spawn(move || rand_worker(f, path, write, blocks, size + i, t0 + dur))
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|_| Err("a thread panicked".into())))
            .collect()
    });
    let mut ops = 0;
    for c in counts {
        ops += c?;
    }
    if write {
        f.sync_data()
            .map_err(|e| format!("{path}: fdatasync: {e}"))?;
    }
    let t = t0.elapsed();
    println!(
        "rand {dir} {path}: {ops} {dir}s of 4096 bytes at qd {qd} in {:.3}s: {:.0} IOPS",
        t.as_secs_f64(),
        ops as f64 / t.as_secs_f64()
    );
    Ok(())
}

/// One `rand` thread: 4 KiB requests at offsets from the generator seeded
/// with `seed`, one after the other until `end`; the number done.
fn rand_worker(
    f: &File,
    path: &str,
    write: bool,
    blocks: u64,
    seed: u64,
    end: Instant,
) -> Res<u64> {
    use std::os::unix::fs::FileExt;
    let mut aligned = Aligned::new(4096)?;
    let buf = aligned.buf();
    let mut rng = Payload::new(seed);
    rng.fill(buf);
    let mut r = [0u8; 8];
    let mut ops = 0u64;
    while Instant::now() < end {
        rng.fill(&mut r);
        let off = (u64::from_le_bytes(r) % blocks) * 4096;
        let res = if write {
            f.write_all_at(buf, off)
        } else {
            f.read_exact_at(buf, off)
        };
        res.map_err(|e| {
            format!(
                "{path}: 4 KiB {} at {off}: {e}",
                if write { "pwrite" } else { "pread" }
            )
        })?;
        ops += 1;
    }
    Ok(ops)
}

/// A 4096-aligned buffer for O_DIRECT.
struct Aligned {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl Aligned {
    fn new(len: usize) -> Res<Self> {
        let layout = std::alloc::Layout::from_size_align(len, 4096).map_err(|e| e.to_string())?;
        // SAFETY: callers ask for non-zero sizes.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err("out of memory".into());
        }
        Ok(Aligned { ptr, layout })
    }

    fn buf(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is a live allocation of `layout.size()` bytes owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// Sequential O_DIRECT reads or writes of 1 MiB blocks from offset 0; a
/// write ends with fdatasync, inside the measured time.
fn seq(dir: &str, path: &str, bytes: &str) -> Res<()> {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    const BLOCK: u64 = 1 << 20;
    let total = byte_count(bytes)?;
    let write = match dir {
        "read" => false,
        "write" => true,
        _ => return Err(format!("seq {dir:?}: read or write")),
    };
    let f = std::fs::OpenOptions::new()
        .read(!write)
        .write(write)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|e| format!("{path}: {e}"))?;
    let mut buf = Aligned::new(BLOCK as usize)?;
    Payload::new(total).fill(buf.buf());
    let t0 = Instant::now();
    let mut off = 0;
    while off < total {
        let n = (total - off).min(BLOCK) as usize;
        let r = if write {
            f.write_all_at(&buf.buf()[..n], off)
        } else {
            f.read_exact_at(&mut buf.buf()[..n], off)
        };
        r.map_err(|e| format!("{path}: {dir} at {off}: {e}"))?;
        off += n as u64;
    }
    if write {
        f.sync_data()
            .map_err(|e| format!("{path}: fdatasync: {e}"))?;
    }
    let t = t0.elapsed();
    println!(
        "seq {dir} {path}: {total} bytes in {:.3}s: {:.1} MiB/s",
        t.as_secs_f64(),
        mib_s(total, t)
    );
    Ok(())
}

/// One HTTP/1.1 request on the Unix socket `sock`: the status and body of
/// the answer.
fn http_request(sock: &str, method: &str, path: &str, body: &str) -> Res<(u16, String)> {
    let mut s = std::os::unix::net::UnixStream::connect(sock)
        .map_err(|e| format!("connect {sock}: {e}"))?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(300)));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .map_err(|e| format!("{sock}: sending: {e}"))?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut buf) {
            Ok(0) => return Err(format!("{sock}: closed before a full answer")),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("{sock}: reading: {e}")),
        }
    };
    let head = String::from_utf8_lossy(&got[..head_end]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{sock}: bad status line in {head:?}"))?;
    let len: usize = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    while got.len() < head_end + len {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("{sock}: reading the body: {e}")),
        }
    }
    let end = got.len().min(head_end + len);
    Ok((
        status,
        String::from_utf8_lossy(&got[head_end..end]).into_owned(),
    ))
}

fn file_len(path: &str) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// Blocks until `path` is longer than `len` (inotify, so the wait takes no
/// CPU from the VM on L1's one CPU), for at most `limit`.
fn wait_growth(path: &str, len: u64, limit: Duration) -> Res<()> {
    // SAFETY: plain inotify_init1(2); the fd is owned below.
    let fd = cvt(
        unsafe { libc::inotify_init1(libc::IN_CLOEXEC) },
        "inotify_init1",
    )?;
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let c = std::ffi::CString::new(path).map_err(|_| format!("bad path {path:?}"))?;
    // SAFETY: a valid NUL-terminated path and our inotify fd.
    let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), c.as_ptr(), libc::IN_MODIFY) };
    cvt(wd, &format!("inotify_add_watch {path}"))?;
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 4096];
    while file_len(path) <= len {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "{path} did not grow within {:.0}s",
                limit.as_secs_f64()
            ));
        }
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().min(1000) as i32;
        // SAFETY: one valid pollfd.
        cvt(unsafe { libc::poll(&mut pfd, 1, ms) }, "poll")?;
        if pfd.revents & libc::POLLIN != 0 {
            // SAFETY: reading events into our own buffer.
            unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        }
    }
    Ok(())
}

fn http(args: &[String]) -> Res<()> {
    let (sock, method, path) = (&args[0], &args[1], &args[2]);
    let mut rest = &args[3..];
    let mut body = "";
    if rest.first().is_some_and(|a| !a.starts_with("--")) {
        body = &rest[0];
        rest = &rest[1..];
    }
    let watch = options(rest, &["watch"])?.pop().map(|(_, v)| v);
    let before = watch.as_deref().map(file_len);
    let t0 = Instant::now();
    let (status, answer) = http_request(sock, method, path, body)?;
    let took = t0.elapsed();
    println!("{answer}");
    let mut line = format!(
        "lab-peer: {method} {path}: status {status} in {:.4}s",
        took.as_secs_f64()
    );
    if let (Some(file), Some(len)) = (&watch, before) {
        match wait_growth(file, len, Duration::from_secs(60)) {
            Ok(()) => line.push_str(&format!(
                "; {file} grew after {:.4}s",
                t0.elapsed().as_secs_f64()
            )),
            Err(e) => line.push_str(&format!("; {e}")),
        }
    }
    eprintln!("{line}");
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("{method} {path} answered {status}: {answer}"))
    }
}

fn vmm(out: &str, sock: &str, cmd: &[String]) -> Res<()> {
    let stdout = File::create(out).map_err(|e| format!("{out}: {e}"))?;
    let err_path = format!("{out}.err");
    let stderr = File::create(&err_path).map_err(|e| format!("{err_path}: {e}"))?;
    let t0 = Instant::now();
    let mut child = std::process::Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(std::process::Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("spawning {}: {e}", cmd[0]))?;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        if let Ok((200, body)) = http_request(sock, "GET", "/", "") {
            println!("{} {:.4}", child.id(), t0.elapsed().as_secs_f64());
            eprintln!(
                "lab-peer: {} pid {}: GET / answered after {:.4}s ({attempts} attempts): {body}",
                cmd[0],
                child.id(),
                t0.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "{} exited ({status}) before its API answered",
                cmd[0]
            ));
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            return Err(format!(
                "{}: no answer to GET / on {sock} within 30s",
                cmd[0]
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}
