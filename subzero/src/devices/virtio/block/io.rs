//! Disk I/O straight between the image and guest memory.
//!
//! A request's data buffers become host iovecs pointing into guest RAM
//! ([`iovecs`]), which `preadv`/`pwritev` (or io_uring's READV/WRITEV) use
//! directly: nothing is copied through a buffer of the VMM's.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use vm_memory::{GuestMemoryMmap, Permissions};

use crate::devices::virtio::chain::Buf;
pub use crate::devices::virtio::iov::{IoVecs, IOV_MAX};

/// Which way data moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// From the image into guest memory.
    Read,
    /// From guest memory into the image.
    Write,
}

impl Dir {
    /// How the host touches guest memory: a read from the image fills
    /// guest buffers, a write reads them.
    pub fn access(self) -> Permissions {
        match self {
            Dir::Read => Permissions::Write,
            Dir::Write => Permissions::Read,
        }
    }
}

/// Iovecs for `len` bytes of `bufs` from `offset`, for I/O in direction `dir`.
pub fn iovecs(
    mem: &GuestMemoryMmap,
    bufs: &[Buf],
    offset: u64,
    len: u64,
    dir: Dir,
) -> Result<IoVecs, String> {
    crate::devices::virtio::iov::iovecs(mem, bufs, offset, len, dir.access())
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
