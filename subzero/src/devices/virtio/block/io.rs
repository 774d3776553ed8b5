//! Disk I/O straight between the image and guest memory.
//!
//! A request's data buffers become host iovecs pointing into guest RAM
//! ([`iovecs`]), which `preadv`/`pwritev` (or io_uring's READV/WRITEV) use
//! directly: nothing is copied through a buffer of the VMM's. The chain was
//! checked against guest memory when it was popped, and every slice comes
//! from vm-memory, so an iovec never points outside the guest.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use vm_memory::{Address, GuestMemory, GuestMemoryMmap, Permissions};

use crate::devices::virtio::chain::Buf;

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

/// Iovecs for `len` bytes of `bufs`, starting `offset` bytes in, for I/O
/// in direction `dir`. A buffer that spans two memory regions becomes two
/// iovecs.
pub fn iovecs(
    mem: &GuestMemoryMmap,
    bufs: &[Buf],
    offset: u64,
    len: u64,
    dir: Dir,
) -> Result<IoVecs, String> {
    // A read from the image writes guest memory, and a write reads it.
    let access = match dir {
        Dir::Read => Permissions::Write,
        Dir::Write => Permissions::Read,
    };
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

/// Which way data moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// From the image into guest memory.
    Read,
    /// From guest memory into the image.
    Write,
}

/// Moves all of `iovs` at byte `offset` of `file`, retrying short
/// transfers; returns the bytes moved before any error.
pub fn transfer(
    file: &File,
    dir: Dir,
    iovs: &mut IoVecs,
    mut offset: u64,
) -> (u64, io::Result<()>) {
    let mut done = 0;
    while !iovs.0.is_empty() {
        let Ok(off) = libc::off_t::try_from(offset) else {
            return (done, Err(io::Error::from_raw_os_error(libc::EINVAL)));
        };
        let (ptr, cnt) = (iovs.0.as_ptr(), iovs.0.len().min(IOV_MAX) as libc::c_int);
        // SAFETY: the iovecs point into mapped guest memory (see IoVecs),
        // `cnt` of them are valid, and the kernel reads or writes only
        // within them.
        let n = unsafe {
            match dir {
                Dir::Read => libc::preadv(file.as_raw_fd(), ptr, cnt, off),
                Dir::Write => libc::pwritev(file.as_raw_fd(), ptr, cnt, off),
            }
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return (done, Err(e));
        }
        if n == 0 {
            let what = match dir {
                Dir::Read => "the image ended",
                Dir::Write => "the image took no more bytes",
            };
            return (
                done,
                Err(io::Error::new(io::ErrorKind::UnexpectedEof, what)),
            );
        }
        iovs.advance(n as u64);
        done += n as u64;
        offset += n as u64;
    }
    (done, Ok(()))
}

/// `fallocate(2)` on the image.
fn fallocate(file: &File, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    let (Ok(off), Ok(len)) = (libc::off_t::try_from(offset), libc::off_t::try_from(len)) else {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    };
    loop {
        // SAFETY: fallocate takes a descriptor `file` keeps open and two
        // integers; it touches no memory of ours.
        let r = unsafe { libc::fallocate(file.as_raw_fd(), mode, off, len) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Whether an error says the file system cannot do that fallocate mode.
fn unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOSYS))
}

/// VIRTIO_BLK_T_DISCARD: gives the range back to the file system (punches
/// a hole). Where holes are not supported the discard does nothing, which
/// the protocol allows: discarded data may read back as anything.
pub fn discard(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    match fallocate(file, mode, offset, len) {
        Err(e) if unsupported(&e) => Ok(()),
        r => r,
    }
}

/// VIRTIO_BLK_T_WRITE_ZEROES: the range reads back as zeroes afterwards.
/// With `unmap` a hole is punched when the file system can; otherwise the
/// range is zeroed in place (ZERO_RANGE), or, failing that, written.
pub fn write_zeroes(file: &File, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
    const KEEP: libc::c_int = libc::FALLOC_FL_KEEP_SIZE;
    let mut modes = Vec::with_capacity(2);
    if unmap {
        modes.push(libc::FALLOC_FL_PUNCH_HOLE | KEEP);
    }
    modes.push(libc::FALLOC_FL_ZERO_RANGE | KEEP);
    for mode in modes {
        match fallocate(file, mode, offset, len) {
            Err(e) if unsupported(&e) => continue,
            r => return r,
        }
    }
    write_zero_bytes(file, offset, len)
}

/// Writes `len` zero bytes at `offset`, 64 KiB at a time.
fn write_zero_bytes(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    const CHUNK: u64 = 64 << 10;
    let zeroes = vec![0u8; CHUNK.min(len) as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(CHUNK) as usize;
        file.write_all_at(&zeroes[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

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
        let v = iovecs(&mem, &bufs, 8, 8 + 0x20, Dir::Read).unwrap();
        let lens: Vec<usize> = v.0.iter().map(|i| i.iov_len).collect();
        assert_eq!(lens, [8, 0x10, 0x10]);
        assert_eq!(v.len(), 0x28);
        let short = iovecs(&mem, &bufs, 0, 0x40, Dir::Read).unwrap_err();
        assert!(short.contains("hold 48 of 64"), "{short}");
    }

    #[test]
    fn transfer_reads_and_writes_guest_memory_in_place() {
        let dir = std::env::temp_dir().join(format!("sz-io-{}", std::process::id()));
        std::fs::write(&dir, (0..=255u8).cycle().take(8192).collect::<Vec<u8>>()).unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&dir)
            .unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x4000)]).unwrap();
        let bufs = [
            Buf {
                addr: GuestAddress(0x100),
                len: 3,
            },
            Buf {
                addr: GuestAddress(0x2000),
                len: 509,
            },
        ];
        let mut v = iovecs(&mem, &bufs, 0, 512, Dir::Read).unwrap();
        let (n, r) = transfer(&file, Dir::Read, &mut v, 512);
        assert_eq!((n, r.is_ok()), (512, true));
        let mut head = [0u8; 3];
        mem.read_slice(&mut head, GuestAddress(0x100)).unwrap();
        assert_eq!(head, [0, 1, 2], "bytes 512.. of the file");
        mem.write_slice(&[0xaa; 3], GuestAddress(0x100)).unwrap();
        let mut v = iovecs(&mem, &bufs, 0, 512, Dir::Write).unwrap();
        let (n, r) = transfer(&file, Dir::Write, &mut v, 0);
        assert_eq!((n, r.is_ok()), (512, true));
        let back = std::fs::read(&dir).unwrap();
        assert_eq!(&back[..4], &[0xaa, 0xaa, 0xaa, 3]);
        let mut v = iovecs(&mem, &bufs, 0, 512, Dir::Read).unwrap();
        let (n, r) = transfer(&file, Dir::Read, &mut v, 8192 - 100);
        assert_eq!(n, 100, "a read past the end stops there");
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        write_zeroes(&file, 0, 4096, false).unwrap();
        discard(&file, 4096, 4096).unwrap();
        let back = std::fs::read(&dir).unwrap();
        assert_eq!(back.len(), 8192, "the size is kept");
        assert!(back[..4096].iter().all(|b| *b == 0));
        std::fs::remove_file(&dir).unwrap();
    }
}
