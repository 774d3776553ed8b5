//! HTTP/1.1 requests and responses on a stream, with bounds on everything a
//! client sends. Parsing is `httparse`'s (small, no allocation, the parser
//! under hyper); this file adds framing: Content-Length bodies,
//! `Expect: 100-continue`, keep-alive and pipelining.

use std::io::{self, Read, Write};

/// Largest request head (request line and headers).
pub const MAX_HEAD: usize = 16 << 10;
/// Largest body, as Firecracker's default `--http-api-max-payload-size`.
pub const MAX_BODY: usize = 51_200;
/// Most headers in one request.
const MAX_HEADERS: usize = 32;

/// One request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// GET, PUT, PATCH, ...
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The body (empty when there is none).
    pub body: Vec<u8>,
    /// Whether the client wants the connection kept open.
    pub keep_alive: bool,
}

/// Why no request could be read.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// The client closed the connection between requests.
    Closed,
    /// The request is malformed; answer 400 and close.
    Bad(String),
    /// The request or its body is too large; answer 413 and close.
    TooLarge(String),
    /// The connection failed or timed out.
    Io(io::ErrorKind),
}

/// One response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// JSON body, if any.
    pub body: Option<String>,
}

impl Response {
    /// A status with no body.
    pub fn empty(status: u16) -> Response {
        Response { status, body: None }
    }

    /// A status with a JSON body.
    pub fn json(status: u16, body: String) -> Response {
        Response {
            status,
            body: Some(body),
        }
    }

    /// An error with Firecracker's body, `{"fault_message": "..."}`.
    pub fn fault(status: u16, message: &str) -> Response {
        Response::json(
            status,
            serde_json::json!({ "fault_message": message }).to_string(),
        )
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Payload Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Reads requests from one connection, keeping bytes that arrive past the
/// end of one request for the next (pipelining).
pub struct Connection<S> {
    stream: S,
    buf: Vec<u8>,
}

fn header_text(h: &httparse::Header<'_>) -> String {
    String::from_utf8_lossy(h.value).trim().to_ascii_lowercase()
}

impl<S: Read + Write> Connection<S> {
    /// A connection on `stream`.
    pub fn new(stream: S) -> Self {
        Connection {
            stream,
            buf: Vec::new(),
        }
    }

    /// The stream back.
    pub fn into_inner(self) -> S {
        self.stream
    }

    /// Reads more bytes; `Ok(false)` at end of stream.
    fn fill(&mut self) -> Result<bool, ReadError> {
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk) {
            Ok(0) => Ok(false),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(true),
            Err(e) => Err(ReadError::Io(e.kind())),
        }
    }

    /// The next request.
    pub fn read_request(&mut self) -> Result<Request, ReadError> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&self.buf) {
                Ok(httparse::Status::Complete(head_len)) => {
                    let method = req.method.unwrap_or_default().to_string();
                    let target = req.path.unwrap_or_default();
                    let path = target.split('?').next().unwrap_or_default().to_string();
                    let mut length = 0usize;
                    let mut keep_alive = req.version == Some(1);
                    let mut expect_continue = false;
                    for h in req.headers.iter() {
                        let name = h.name.to_ascii_lowercase();
                        match name.as_str() {
                            "content-length" => {
                                length = header_text(h).parse().map_err(|_| {
                                    ReadError::Bad("Content-Length is not a number".into())
                                })?;
                            }
                            "transfer-encoding" => {
                                return Err(ReadError::Bad(
                                    "chunked bodies are not accepted: send Content-Length".into(),
                                ))
                            }
                            "connection" => match header_text(h).as_str() {
                                "close" => keep_alive = false,
                                "keep-alive" => keep_alive = true,
                                _ => {}
                            },
                            "expect" => expect_continue = header_text(h) == "100-continue",
                            _ => {}
                        }
                    }
                    if length > MAX_BODY {
                        return Err(ReadError::TooLarge(format!(
                            "the body is {length} bytes; at most {MAX_BODY} are accepted"
                        )));
                    }
                    if expect_continue && self.buf.len() < head_len + length {
                        self.stream
                            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                            .map_err(|e| ReadError::Io(e.kind()))?;
                    }
                    while self.buf.len() < head_len + length {
                        if !self.fill()? {
                            return Err(ReadError::Bad(
                                "the connection closed before the whole body arrived".into(),
                            ));
                        }
                    }
                    let body = self.buf[head_len..head_len + length].to_vec();
                    self.buf.drain(..head_len + length);
                    return Ok(Request {
                        method,
                        path,
                        body,
                        keep_alive,
                    });
                }
                Ok(httparse::Status::Partial) => {
                    if self.buf.len() > MAX_HEAD {
                        return Err(ReadError::TooLarge(format!(
                            "the request head is over {MAX_HEAD} bytes"
                        )));
                    }
                    let empty = self.buf.is_empty();
                    if !self.fill()? {
                        return Err(if empty {
                            ReadError::Closed
                        } else {
                            ReadError::Bad("the connection closed mid-request".into())
                        });
                    }
                }
                Err(e) => return Err(ReadError::Bad(format!("not an HTTP/1.1 request: {e}"))),
            }
        }
    }

    /// Writes `resp`; `keep_alive` false adds `Connection: close`.
    pub fn write_response(&mut self, resp: &Response, keep_alive: bool) -> io::Result<()> {
        let mut out = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
        out.push_str("Server: Subzero\r\n");
        if !keep_alive {
            out.push_str("Connection: close\r\n");
        }
        match &resp.body {
            Some(body) => {
                out.push_str("Content-Type: application/json\r\n");
                out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
                out.push_str(body);
            }
            None if resp.status == 204 => out.push_str("\r\n"),
            None => out.push_str("Content-Length: 0\r\n\r\n"),
        }
        self.stream.write_all(out.as_bytes())?;
        self.stream.flush()
    }
}

#[cfg(test)]
mod tests;
