//! perf_event_open on tracepoints, for the calling thread only, with one
//! mmap ring buffer that every event of the thread writes into.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{fence, Ordering};

use perf_event_open_sys::bindings::{
    perf_event_attr, perf_event_header, perf_event_mmap_page, PERF_FLAG_FD_CLOEXEC,
    PERF_RECORD_LOST, PERF_RECORD_SAMPLE, PERF_SAMPLE_RAW, PERF_SAMPLE_TIME, PERF_TYPE_TRACEPOINT,
};

/// Data pages tried first for a ring (4 MiB), halved while the kernel
/// refuses (perf's mlock limit for unprivileged users is 516 KiB).
pub const RING_PAGES: usize = 1024;
const MIN_PAGES: usize = 8;

/// One record taken from a ring.
#[derive(Debug, PartialEq, Eq)]
pub enum Record<'a> {
    /// A tracepoint hit: its time (ns, perf's clock) and raw data.
    Sample {
        /// Nanoseconds on perf's clock.
        time: u64,
        /// The tracepoint's raw record (common fields first).
        raw: &'a [u8],
    },
    /// The kernel dropped this many records: the ring was full.
    Lost(u64),
}

/// The tracepoints `ids` of the calling thread, and their shared ring.
pub struct Ring {
    fds: Vec<OwnedFd>,
    base: *mut u8,
    len: usize,
    data_offset: usize,
    data_size: usize,
    scratch: Vec<u8>,
}

// SAFETY: the mapping belongs to the Ring alone and is only touched
// through &mut self; the kernel writes it concurrently whatever thread
// reads it.
unsafe impl Send for Ring {}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory effects.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 {
        n as usize
    } else {
        4096
    }
}

/// Opens tracepoint `id` for the calling thread, on any CPU.
pub fn open_tracepoint(id: u64, wakeup_bytes: u32) -> io::Result<OwnedFd> {
    // SAFETY: an all-zero perf_event_attr is the documented "nothing set"
    // value; the fields that matter are set below.
    let mut attr: perf_event_attr = unsafe { std::mem::zeroed() };
    attr.type_ = PERF_TYPE_TRACEPOINT;
    attr.size = std::mem::size_of::<perf_event_attr>() as u32;
    attr.config = id;
    attr.sample_period = 1;
    attr.sample_type = (PERF_SAMPLE_TIME | PERF_SAMPLE_RAW) as u64;
    attr.set_watermark(1);
    attr.wakeup_watermark = wakeup_bytes;
    // SAFETY: attr is initialized and outlives the call; pid 0 and cpu -1
    // ask for this thread on any CPU; no group.
    let fd = unsafe {
        perf_event_open_sys::perf_event_open(&mut attr, 0, -1, -1, PERF_FLAG_FD_CLOEXEC as _)
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Ring {
    /// Opens each of `ids` for the calling thread, all writing into one
    /// ring of up to [`RING_PAGES`] data pages.
    pub fn open(ids: &[u64]) -> io::Result<Ring> {
        let page = page_size();
        let mut pages = RING_PAGES;
        loop {
            match Ring::open_with(ids, page, pages) {
                Err(e)
                    if pages > MIN_PAGES
                        && matches!(e.raw_os_error(), Some(libc::EPERM | libc::ENOMEM)) =>
                {
                    pages /= 2
                }
                r => return r,
            }
        }
    }

    fn open_with(ids: &[u64], page: usize, pages: usize) -> io::Result<Ring> {
        let data = page * pages;
        let mut fds = Vec::with_capacity(ids.len());
        for id in ids {
            fds.push(open_tracepoint(*id, (data / 4) as u32)?);
        }
        let leader = fds
            .first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no tracepoints"))?
            .as_raw_fd();
        let len = page * (pages + 1);
        // SAFETY: a new shared mapping of the leader's ring; the kernel
        // checks the size (1 + 2^n pages).
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                leader,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut ring = Ring {
            fds: Vec::new(),
            base: base.cast(),
            len,
            data_offset: page,
            data_size: data,
            scratch: Vec::new(),
        };
        for fd in &fds[1..] {
            // SAFETY: both descriptors are ours; SET_OUTPUT sends this
            // event's records to the leader's ring.
            let r = unsafe { perf_event_open_sys::ioctls::SET_OUTPUT(fd.as_raw_fd(), leader) };
            if r < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        ring.fds = fds;
        // Newer kernels say where the data area is.
        let meta = ring.meta();
        // SAFETY: the first page is the kernel's perf_event_mmap_page.
        let (off, size) = unsafe {
            (
                std::ptr::addr_of!((*meta).data_offset).read_volatile(),
                std::ptr::addr_of!((*meta).data_size).read_volatile(),
            )
        };
        if size != 0 && off as usize + size as usize <= len && size.is_power_of_two() {
            ring.data_offset = off as usize;
            ring.data_size = size as usize;
        }
        Ok(ring)
    }

    fn meta(&self) -> *mut perf_event_mmap_page {
        self.base.cast()
    }

    /// The descriptor to poll: readable when a quarter of the ring is full.
    pub fn fd(&self) -> RawFd {
        self.fds.first().map(AsRawFd::as_raw_fd).unwrap_or(-1)
    }

    /// Takes every record written so far, in order.
    pub fn drain(&mut self, mut each: impl FnMut(Record<'_>)) {
        let meta = self.meta();
        // SAFETY: the mmap page's head is written by the kernel; read it
        // once, then fence so the records it covers are visible.
        let head = unsafe { std::ptr::addr_of!((*meta).data_head).read_volatile() };
        fence(Ordering::Acquire);
        // SAFETY: data_tail is ours to read and write.
        let mut tail = unsafe { std::ptr::addr_of!((*meta).data_tail).read_volatile() };
        let hdr = std::mem::size_of::<perf_event_header>();
        while head.wrapping_sub(tail) >= hdr as u64 {
            let mut h = [0u8; 8];
            self.copy_out(tail, &mut h);
            let size = u16::from_ne_bytes([h[6], h[7]]) as usize;
            let kind = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]);
            if size < hdr || head.wrapping_sub(tail) < size as u64 {
                // A corrupt header: drop everything up to head.
                tail = head;
                break;
            }
            let mut buf = std::mem::take(&mut self.scratch);
            buf.resize(size, 0);
            self.copy_out(tail, &mut buf);
            if let Some(r) = parse(kind, &buf[hdr..]) {
                each(r);
            }
            self.scratch = buf;
            tail = tail.wrapping_add(size as u64);
        }
        fence(Ordering::SeqCst);
        // SAFETY: tells the kernel the records up to `tail` are consumed.
        unsafe { std::ptr::addr_of_mut!((*meta).data_tail).write_volatile(tail) };
    }

    /// Copies `out.len()` bytes of the data area from ring position `pos`,
    /// wrapping at its end.
    fn copy_out(&self, pos: u64, out: &mut [u8]) {
        let size = self.data_size;
        let start = (pos as usize) & (size - 1);
        let first = out.len().min(size - start);
        // SAFETY: start + first <= size and the data area is
        // [data_offset, data_offset + size) of the live mapping; the
        // second part wraps to the area's start and is shorter than it.
        unsafe {
            let data = self.base.add(self.data_offset);
            std::ptr::copy_nonoverlapping(data.add(start), out.as_mut_ptr(), first);
            std::ptr::copy_nonoverlapping(data, out.as_mut_ptr().add(first), out.len() - first);
        }
    }
}

/// A record's body (after its header) for the sample format this module
/// asks for: time, then the raw size and data.
fn parse(kind: u32, body: &[u8]) -> Option<Record<'_>> {
    let u64_at = |o: usize| Some(u64::from_ne_bytes(body.get(o..o + 8)?.try_into().ok()?));
    match kind {
        PERF_RECORD_SAMPLE => {
            let time = u64_at(0)?;
            let size = u32::from_ne_bytes(body.get(8..12)?.try_into().ok()?) as usize;
            let raw = body.get(12..12usize.checked_add(size)?)?;
            Some(Record::Sample { time, raw })
        }
        PERF_RECORD_LOST => Some(Record::Lost(u64_at(8)?)),
        _ => None,
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping made in open_with, once.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sample_and_lost_bodies() {
        let mut body = 77u64.to_ne_bytes().to_vec();
        body.extend(3u32.to_ne_bytes());
        body.extend([1, 2, 3, 0, 0, 0, 0, 0]);
        assert_eq!(
            parse(PERF_RECORD_SAMPLE, &body),
            Some(Record::Sample {
                time: 77,
                raw: &[1, 2, 3]
            })
        );
        let mut lost = 5u64.to_ne_bytes().to_vec();
        lost.extend(9u64.to_ne_bytes());
        assert_eq!(parse(PERF_RECORD_LOST, &lost), Some(Record::Lost(9)));
        // A raw size past the record's end, or a short body: nothing.
        let mut bad = 1u64.to_ne_bytes().to_vec();
        bad.extend(1000u32.to_ne_bytes());
        assert_eq!(parse(PERF_RECORD_SAMPLE, &bad), None);
        assert_eq!(parse(PERF_RECORD_SAMPLE, &[0; 4]), None);
        assert_eq!(parse(42, &body), None);
    }
}
