use super::*;
use proptest::prelude::*;

/// A stream that hands out its input `chunk` bytes at a time.
struct Mock {
    input: Vec<u8>,
    at: usize,
    chunk: usize,
    output: Vec<u8>,
}

impl Mock {
    fn new(input: &[u8], chunk: usize) -> Self {
        Mock {
            input: input.to_vec(),
            at: 0,
            chunk,
            output: Vec::new(),
        }
    }
}

impl Read for Mock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.chunk).min(self.input.len() - self.at);
        buf[..n].copy_from_slice(&self.input[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl Write for Mock {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

const PUT: &[u8] =
    b"PUT /boot-source HTTP/1.1\r\nHost: localhost\r\nContent-Length: 13\r\n\r\n{\"a\": \"b c\"}\n";

#[test]
fn a_request_is_read_whole_even_one_byte_at_a_time() {
    for chunk in [1, 7, 4096] {
        let mut c = Connection::new(Mock::new(PUT, chunk));
        let r = c.read_request().unwrap();
        assert_eq!(
            (r.method.as_str(), r.path.as_str()),
            ("PUT", "/boot-source")
        );
        assert_eq!(r.body, b"{\"a\": \"b c\"}\n");
        assert!(r.keep_alive);
        assert_eq!(c.read_request(), Err(ReadError::Closed));
    }
}

#[test]
fn pipelined_requests_are_read_in_turn() {
    let mut input = PUT.to_vec();
    input.extend_from_slice(b"GET /?x=1 HTTP/1.1\r\nConnection: close\r\n\r\n");
    let mut c = Connection::new(Mock::new(&input, 4096));
    assert_eq!(c.read_request().unwrap().path, "/boot-source");
    let r = c.read_request().unwrap();
    assert_eq!((r.path.as_str(), r.keep_alive), ("/", false));
}

#[test]
fn bad_requests_get_their_reason() {
    let read = |input: &[u8]| Connection::new(Mock::new(input, 4096)).read_request();
    assert!(matches!(
        read(b"\x00\x01garbage\r\n\r\n"),
        Err(ReadError::Bad(_))
    ));
    assert!(matches!(
        read(b"PUT / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc"),
        Err(ReadError::Bad(m)) if m.contains("before the whole body")
    ));
    assert!(matches!(
        read(b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
        Err(ReadError::Bad(m)) if m.contains("chunked")
    ));
    assert!(matches!(
        read(b"PUT / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"),
        Err(ReadError::TooLarge(_))
    ));
    assert!(matches!(
        read(b"GET / HTTP/1.1\r\nHost: x"),
        Err(ReadError::Bad(_))
    ));
    let mut huge = b"GET / HTTP/1.1\r\nX: ".to_vec();
    huge.resize(MAX_HEAD + 100, b'a');
    assert!(matches!(read(&huge), Err(ReadError::TooLarge(_))));
}

#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let input = b"PUT /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}";
    // The head arrives first: the body comes only after the 100.
    let mut c = Connection::new(Mock::new(input, 60));
    let r = c.read_request().unwrap();
    assert_eq!(r.body, b"{}");
    assert!(String::from_utf8_lossy(&c.stream.output).starts_with("HTTP/1.1 100 Continue"));
}

#[test]
fn responses_have_firecrackers_shape() {
    let mut c = Connection::new(Mock::new(b"", 1));
    c.write_response(&Response::fault(400, "bad \"thing\""), false)
        .unwrap();
    let out = String::from_utf8(c.stream.output.clone()).unwrap();
    assert!(out.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{out}");
    assert!(out.contains("Connection: close\r\n"));
    assert!(
        out.ends_with("\r\n\r\n{\"fault_message\":\"bad \\\"thing\\\"\"}"),
        "{out}"
    );
    c.stream.output.clear();
    c.write_response(&Response::empty(204), true).unwrap();
    assert_eq!(
        String::from_utf8(c.stream.output.clone()).unwrap(),
        "HTTP/1.1 204 No Content\r\nServer: Subzero\r\n\r\n"
    );
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_and_stay_bounded(data in proptest::collection::vec(any::<u8>(), 0..2048), chunk in 1usize..64) {
        let mut c = Connection::new(Mock::new(&data, chunk));
        for _ in 0..8 {
            match c.read_request() {
                Ok(r) => prop_assert!(r.body.len() <= MAX_BODY),
                Err(_) => break,
            }
        }
    }
}
