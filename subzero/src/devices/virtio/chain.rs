//! Descriptor chains checked before a device touches them.
//!
//! The guest writes the descriptor table, so every chain is suspect. A
//! [`DescChain`] is made only from a chain that ends, whose buffers all lie
//! in guest memory, whose device-readable buffers come before its
//! device-writable ones, and whose total length is bounded. The addresses
//! are copied out, so the guest changing the table afterwards has no effect.

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

/// Why a chain was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The chain has no descriptors (or its table could not be read).
    #[error("empty descriptor chain")]
    Empty,
    /// The chain did not end within the queue size: a loop, or a chain
    /// longer than the queue.
    #[error("descriptor chain does not end within the queue size (a loop?)")]
    Unterminated,
    /// A buffer lies (partly) outside guest memory.
    #[error("descriptor buffer {addr:#x}+{len:#x} is outside guest memory")]
    OutOfMemory {
        /// Buffer address.
        addr: u64,
        /// Buffer length.
        len: u32,
    },
    /// A device-readable buffer follows a device-writable one.
    #[error("device-readable descriptor after a device-writable one")]
    WrongOrder,
    /// The buffers add up to more than the device accepts.
    #[error("descriptor chain of {0} bytes is longer than the device accepts")]
    TooLong(u64),
    /// The device needs a buffer the chain lacks, or of another direction.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// The chain is shorter than the request it claims to carry.
    #[error("request runs past the end of its buffers")]
    Short,
}

/// One buffer of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buf {
    /// Guest-physical address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
}

/// A validated descriptor chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescChain {
    /// Head index, to return the chain on the used ring.
    pub head: u16,
    /// Device-readable buffers, in order.
    pub readable: Vec<Buf>,
    /// Device-writable buffers, in order.
    pub writable: Vec<Buf>,
}

impl DescChain {
    /// Validates a chain already read from the table (the last descriptor
    /// the iterator yielded still has NEXT set if the chain did not end);
    /// its buffers may add up to at most `max_len` bytes.
    pub fn from_descriptors(
        mem: &GuestMemoryMmap,
        head: u16,
        descs: &[Descriptor],
        max_len: u64,
    ) -> Result<Self, ChainError> {
        let last = descs.last().ok_or(ChainError::Empty)?;
        if last.has_next() {
            return Err(ChainError::Unterminated);
        }
        let mut out = DescChain {
            head,
            readable: Vec::new(),
            writable: Vec::new(),
        };
        let mut total: u64 = 0;
        for d in descs {
            total += u64::from(d.len());
            if total > max_len {
                return Err(ChainError::TooLong(total));
            }
            let access = if d.is_write_only() {
                Permissions::Write
            } else {
                Permissions::Read
            };
            if d.len() > 0 && !GuestMemory::check_range(mem, d.addr(), d.len() as usize, access) {
                return Err(ChainError::OutOfMemory {
                    addr: d.addr().0,
                    len: d.len(),
                });
            }
            let buf = Buf {
                addr: d.addr(),
                len: d.len(),
            };
            if d.is_write_only() {
                out.writable.push(buf);
            } else if out.writable.is_empty() {
                out.readable.push(buf);
            } else {
                return Err(ChainError::WrongOrder);
            }
        }
        Ok(out)
    }

    /// Total length of the device-readable buffers.
    pub fn readable_len(&self) -> u64 {
        self.readable.iter().map(|b| u64::from(b.len)).sum()
    }

    /// Total length of the device-writable buffers.
    pub fn writable_len(&self) -> u64 {
        self.writable.iter().map(|b| u64::from(b.len)).sum()
    }

    /// Copies readable bytes starting `offset` bytes into the readable
    /// buffers into `out`, which must fit.
    pub fn read_at(
        &self,
        mem: &GuestMemoryMmap,
        offset: u64,
        out: &mut [u8],
    ) -> Result<(), ChainError> {
        copy(&self.readable, offset, out.len(), |addr, range| {
            mem.read_slice(&mut out[range], addr)
        })
    }

    /// Copies `data` into the writable buffers, starting `offset` bytes in.
    pub fn write_at(
        &self,
        mem: &GuestMemoryMmap,
        offset: u64,
        data: &[u8],
    ) -> Result<(), ChainError> {
        copy(&self.writable, offset, data.len(), |addr, range| {
            mem.write_slice(&data[range], addr)
        })
    }
}

/// Walks `bufs` from byte `offset` for `len` bytes, calling `f` with each
/// guest address and the matching range of the caller's buffer.
fn copy<F>(bufs: &[Buf], offset: u64, len: usize, mut f: F) -> Result<(), ChainError>
where
    F: FnMut(GuestAddress, std::ops::Range<usize>) -> Result<(), vm_memory::GuestMemoryError>,
{
    let mut skip = offset;
    let mut done = 0usize;
    for b in bufs {
        if done == len {
            break;
        }
        let blen = u64::from(b.len);
        if skip >= blen {
            skip -= blen;
            continue;
        }
        let n = ((blen - skip) as usize).min(len - done);
        let addr = b.addr.checked_add(skip).ok_or(ChainError::Short)?;
        f(addr, done..done + n).map_err(|_| ChainError::OutOfMemory {
            addr: addr.0,
            len: n as u32,
        })?;
        done += n;
        skip = 0;
    }
    if done == len {
        Ok(())
    } else {
        Err(ChainError::Short)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};

    pub(crate) fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    pub(crate) fn desc(addr: u64, len: u32, write: bool, next: Option<u16>) -> Descriptor {
        let mut flags = 0u16;
        if write {
            flags |= VRING_DESC_F_WRITE as u16;
        }
        if next.is_some() {
            flags |= VRING_DESC_F_NEXT as u16;
        }
        Descriptor::new(addr, len, flags, next.unwrap_or(0))
    }

    #[test]
    fn accepts_a_well_formed_chain_and_copies_across_buffers() {
        let m = mem();
        let d = [
            desc(0x1000, 4, false, Some(1)),
            desc(0x2000, 4, false, Some(2)),
            desc(0x3000, 8, true, None),
        ];
        let c = DescChain::from_descriptors(&m, 7, &d, 1 << 20).unwrap();
        assert_eq!((c.head, c.readable_len(), c.writable_len()), (7, 8, 8));
        m.write_slice(b"abcd", GuestAddress(0x1000)).unwrap();
        m.write_slice(b"efgh", GuestAddress(0x2000)).unwrap();
        let mut out = [0u8; 6];
        c.read_at(&m, 1, &mut out).unwrap();
        assert_eq!(&out, b"bcdefg");
        c.write_at(&m, 2, b"XYZ").unwrap();
        let mut back = [0u8; 3];
        m.read_slice(&mut back, GuestAddress(0x3002)).unwrap();
        assert_eq!(&back, b"XYZ");
        assert_eq!(c.write_at(&m, 6, b"XYZ"), Err(ChainError::Short));
    }

    #[test]
    fn refuses_unterminated_outside_backwards_and_long_chains() {
        let m = mem();
        let looped = [
            desc(0x1000, 4, false, Some(0)),
            desc(0x1000, 4, false, Some(0)),
        ];
        assert_eq!(
            DescChain::from_descriptors(&m, 0, &looped, 1 << 20),
            Err(ChainError::Unterminated)
        );
        let outside = [desc((1 << 20) - 2, 4, false, None)];
        assert!(matches!(
            DescChain::from_descriptors(&m, 0, &outside, 1 << 20),
            Err(ChainError::OutOfMemory { .. })
        ));
        let wrapping = [desc(u64::MAX - 1, 4, true, None)];
        assert!(matches!(
            DescChain::from_descriptors(&m, 0, &wrapping, 1 << 20),
            Err(ChainError::OutOfMemory { .. })
        ));
        let backwards = [desc(0x1000, 4, true, Some(1)), desc(0x2000, 4, false, None)];
        assert_eq!(
            DescChain::from_descriptors(&m, 0, &backwards, 1 << 20),
            Err(ChainError::WrongOrder)
        );
        let long = [
            desc(0x1000, 0x8000, false, Some(1)),
            desc(0x9000, 0x8000, true, None),
        ];
        assert_eq!(
            DescChain::from_descriptors(&m, 0, &long, 0xffff),
            Err(ChainError::TooLong(0x10000))
        );
        assert_eq!(
            DescChain::from_descriptors(&m, 0, &[], 1),
            Err(ChainError::Empty)
        );
    }
}
