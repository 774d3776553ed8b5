//! The API socket: an accept thread and a thread per connection (at most
//! [`MAX_CONNECTIONS`]). Each request is routed, handed to the VMM's event
//! loop over a channel (with an eventfd to wake it), and answered.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

use super::http::{Connection, ReadError, Response};
use super::routes::{respond, route};
use crate::vmm::actions::{ActionError, VmmAction, VmmResult};
use crate::vmm::event_loop::Requests;

/// Connections served at once; more are answered 503 and closed.
pub const MAX_CONNECTIONS: usize = 16;
/// A connection idle this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// An action and where to send its answer.
pub type Envelope = (VmmAction, mpsc::Sender<VmmResult>);

/// The bound socket; dropping it removes the socket file if it is still
/// the one this process made.
pub struct ApiSocket {
    path: PathBuf,
    ino: u64,
}

impl Drop for ApiSocket {
    fn drop(&mut self) {
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Binds `path`. An existing socket is replaced only when nothing answers
/// on it (a stale socket from a process that died); a live one, or a path
/// that is not a socket, is refused.
pub fn bind(path: &Path) -> io::Result<(UnixListener, ApiSocket)> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket: choose another --api-sock path",
                    path.display()
                ),
            ));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "{} is in use by a running process: stop it or choose another --api-sock path",
                    path.display()
                ),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| io::Error::new(e.kind(), format!("binding {}: {e}", path.display())))?;
    let ino = std::fs::symlink_metadata(path)?.ino();
    Ok((
        listener,
        ApiSocket {
            path: path.to_path_buf(),
            ino,
        },
    ))
}

/// Starts the accept thread on `listener`; returns the VMM's end.
pub fn serve(listener: UnixListener) -> io::Result<Requests> {
    let (tx, rx) = mpsc::channel();
    let wake = EventFd::new(libc::EFD_NONBLOCK)?;
    let waker = Arc::new(wake.try_clone()?);
    let live = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if live.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                    live.fetch_sub(1, Ordering::SeqCst);
                    let mut c = Connection::new(stream);
                    let busy = Response::fault(503, "too many API connections; try again");
                    let _ = c.write_response(&busy, false);
                    continue;
                }
                let (tx, waker, live) = (tx.clone(), waker.clone(), live.clone());
                let spawned =
                    std::thread::Builder::new()
                        .name("api-conn".into())
                        .spawn(move || {
                            serve_connection(stream, &tx, &waker);
                            live.fetch_sub(1, Ordering::SeqCst);
                        });
                if spawned.is_err() {
                    log::warn!("api: cannot start a connection thread");
                }
            }
        })?;
    Ok(Requests { rx, wake })
}

/// Serves one connection until it closes, errs or idles out.
fn serve_connection(stream: UnixStream, to_vmm: &mpsc::Sender<Envelope>, wake: &EventFd) {
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let mut conn = Connection::new(stream);
    loop {
        let req = match conn.read_request() {
            Ok(req) => req,
            Err(ReadError::Closed | ReadError::Io(_)) => return,
            Err(ReadError::Bad(why)) => return refuse(conn, 400, &why),
            Err(ReadError::TooLarge(why)) => return refuse(conn, 413, &why),
        };
        log::debug!("api: {} {}", req.method, req.path);
        let resp = match route(&req) {
            Ok(action) => respond(ask(to_vmm, wake, action)),
            Err(resp) => resp,
        };
        if conn.write_response(&resp, req.keep_alive).is_err() || !req.keep_alive {
            return;
        }
    }
}

/// Answers a request that cannot be read and closes the connection. What
/// the client is still sending is read and dropped first (a bounded amount,
/// for a bounded time), or closing on unread data would reset the
/// connection before the client reads the answer.
fn refuse(mut conn: Connection<UnixStream>, status: u16, why: &str) {
    let _ = conn.write_response(&Response::fault(status, why), false);
    let stream = conn.into_inner();
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = io::copy(&mut io::Read::take(&stream, 1 << 20), &mut io::sink());
}

/// Hands `action` to the VMM and waits for its answer.
fn ask(to_vmm: &mpsc::Sender<Envelope>, wake: &EventFd, action: VmmAction) -> VmmResult {
    let gone = || ActionError::internal("the VMM is shutting down");
    let (tx, rx) = mpsc::channel();
    to_vmm.send((action, tx)).map_err(|_| gone())?;
    wake.write(1).map_err(|_| gone())?;
    rx.recv().map_err(|_| gone())?
}
