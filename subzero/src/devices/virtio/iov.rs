//! Host iovecs into guest memory, for I/O straight between a backend (a
//! disk image, a TAP) and the guest's buffers, with no copy in between.
//!
//! A chain was checked against guest memory when it was popped, and every
//! slice comes from vm-memory, so an iovec never points outside the guest.

use vm_memory::{Address, GuestMemory, GuestMemoryMmap, Permissions};

use super::chain::Buf;

/// Most iovecs one `preadv`/`pwritev` takes (Linux's UIO_MAXIOV).
pub const IOV_MAX: usize = 1024;

/// Host iovecs into guest memory. They are plain addresses: whoever uses
/// them must keep the guest memory mapped until the I/O is over.
#[derive(Debug, Default)]
pub struct IoVecs(pub Vec<libc::iovec>);

// SAFETY: the iovecs are addresses inside guest memory, which is shared by
// every thread of the VMM and stays mapped while a device holds them (the
// device keeps a reference to the memory while I/O is in flight); sending
// the addresses to another thread creates no aliasing the kernel does not
// already allow.
unsafe impl Send for IoVecs {}

impl IoVecs {
    /// Bytes the iovecs cover.
    pub fn len(&self) -> u64 {
        self.0.iter().map(|v| v.iov_len as u64).sum()
    }

    /// Whether they cover nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops the first `n` bytes (after a short transfer).
    pub fn advance(&mut self, mut n: u64) {
        let mut skip = 0;
        for v in &mut self.0 {
            if n == 0 {
                break;
            }
            let len = v.iov_len as u64;
            if n >= len {
                n -= len;
                skip += 1;
            } else {
                // SAFETY: n < iov_len, so the new base stays inside the
                // same guest buffer.
                v.iov_base = unsafe { v.iov_base.cast::<u8>().add(n as usize) }.cast();
                v.iov_len -= n as usize;
                n = 0;
            }
        }
        self.0.drain(..skip);
    }
}

/// Iovecs for `len` bytes of `bufs`, starting `offset` bytes in, through
/// which the host will `access` guest memory (Write: the host fills the
/// buffers). A buffer that spans two memory regions becomes two iovecs.
pub fn iovecs(
    mem: &GuestMemoryMmap,
    bufs: &[Buf],
    offset: u64,
    len: u64,
    access: Permissions,
) -> Result<IoVecs, String> {
    let mut out = Vec::with_capacity(bufs.len());
    let mut skip = offset;
    let mut left = len;
    for b in bufs {
        if left == 0 {
            break;
        }
        let blen = u64::from(b.len);
        if skip >= blen {
            skip -= blen;
            continue;
        }
        let n = (blen - skip).min(left);
        let addr = b
            .addr
            .checked_add(skip)
            .ok_or_else(|| format!("buffer {:#x} wraps around", b.addr.0))?;
        let bad = |e| format!("buffer at {:#x}: {e}", addr.0);
        for slice in GuestMemory::get_slices(mem, addr, n as usize, access).map_err(bad)? {
            let slice = slice.map_err(bad)?;
            out.push(libc::iovec {
                iov_base: slice.ptr_guard_mut().as_ptr().cast(),
                iov_len: slice.len(),
            });
        }
        left -= n;
        skip = 0;
    }
    if left != 0 {
        return Err(format!("the buffers hold {} of {len} bytes", len - left));
    }
    if out.len() > IOV_MAX {
        return Err(format!("{} buffer pieces, more than {IOV_MAX}", out.len()));
    }
    Ok(IoVecs(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    #[test]
    fn iovecs_split_at_region_boundaries_and_skip_the_offset() {
        let mem = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x1000),
            (GuestAddress(0x1000), 0x1000),
        ])
        .unwrap();
        let bufs = [
            Buf {
                addr: GuestAddress(0x0),
                len: 16,
            },
            Buf {
                addr: GuestAddress(0xff0),
                len: 0x20,
            },
        ];
        let mut v = iovecs(&mem, &bufs, 8, 8 + 0x20, Permissions::Write).unwrap();
        let lens: Vec<usize> = v.0.iter().map(|i| i.iov_len).collect();
        assert_eq!(lens, [8, 0x10, 0x10]);
        assert_eq!(v.len(), 0x28);
        v.advance(0x10);
        let lens: Vec<usize> = v.0.iter().map(|i| i.iov_len).collect();
        assert_eq!(
            lens,
            [8, 0x10],
            "advanced past the first and into the second"
        );
        let short = iovecs(&mem, &bufs, 0, 0x40, Permissions::Write).unwrap_err();
        assert!(short.contains("hold 48 of 64"), "{short}");
        let outside = [Buf {
            addr: GuestAddress(0x1ff0),
            len: 0x20,
        }];
        assert!(iovecs(&mem, &outside, 0, 0x20, Permissions::Read).is_err());
    }
}
