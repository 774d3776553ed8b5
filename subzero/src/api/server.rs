//! The API socket: an accept thread and a thread per connection (at most
//! [`MAX_CONNECTIONS`]). Each request is routed, handed to the VMM's event
//! loop over a channel (with an eventfd to wake it), and answered.

use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

use super::http::{Connection, ReadError, Response};
use super::routes::{respond, route};
use crate::files::{bind_socket, BoundSocket};
use crate::seccomp::ThreadKind;
use crate::vmm::actions::{ActionError, VmmAction, VmmResult};
use crate::vmm::event_loop::Requests;

/// Connections served at once; more are answered 503 and closed.
pub const MAX_CONNECTIONS: usize = 16;
/// A connection idle this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// An action and where to send its answer.
pub type Envelope = (VmmAction, mpsc::Sender<VmmResult>);

/// Binds the API socket `path` (see [`crate::files::bind_socket`]: a live
/// owner's socket is never taken).
pub fn bind(path: &Path) -> io::Result<(UnixListener, BoundSocket)> {
    bind_socket(path, "--api-sock")
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
            crate::seccomp::enter_or_exit(ThreadKind::Api);
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
                            crate::seccomp::enter_inherited(ThreadKind::Api);
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
