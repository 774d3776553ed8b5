//! A minimal blocking client for an API socket: one request per
//! connection. Used by `subzero bench api` and by the tests; it speaks to
//! Subzero and to Firecracker alike.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Largest response read.
const MAX_RESPONSE: u64 = 1 << 20;

/// Sends `method path` with a JSON `body` (empty for none) and returns the
/// status and the response body.
pub fn request(sock: &Path, method: &str, path: &str, body: &str) -> io::Result<(u16, String)> {
    let mut s = UnixStream::connect(sock)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Accept: application/json\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    // Read the head, then as much body as Content-Length says: not every
    // server closes the connection after its answer (Firecracker does not).
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        if out.len() as u64 > MAX_RESPONSE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "response head too long",
            ));
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "no response"));
        }
        out.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&out[..head_end]).into_owned();
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not an HTTP response: {head:?}"),
        )
    };
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(bad)?;
    let length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<u64>().ok())
        .unwrap_or(0)
        .min(MAX_RESPONSE) as usize;
    while out.len() < head_end + length {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&chunk[..n]);
    }
    let end = out.len().min(head_end + length);
    let body = String::from_utf8_lossy(&out[head_end..end]);
    Ok((status, body.to_string()))
}

/// Like [`request`], but an answer other than 2xx is an error carrying the
/// status and the body.
pub fn expect_ok(sock: &Path, method: &str, path: &str, body: &str) -> io::Result<String> {
    match request(sock, method, path, body)? {
        (200..=299, text) => Ok(text),
        (status, text) => Err(io::Error::other(format!(
            "{method} {path}: HTTP {status}: {text}"
        ))),
    }
}
