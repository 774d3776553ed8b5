//! virtio-blk requests: a checked descriptor chain turned into a typed
//! request, without touching the disk or a queue.
//!
//! Layout (virtio 1.x section 5.2.6): a 16-byte header (type le32,
//! reserved le32, sector le64) in the device-readable buffers, then the
//! data (device-readable for a write, device-writable for a read), then
//! the status byte: the last device-writable byte of the chain.

use vm_memory::GuestMemoryMmap;

use crate::devices::virtio::{ChainError, DescChain};

/// Request type: read sectors into the guest.
pub const T_IN: u32 = virtio_bindings::bindings::virtio_blk::VIRTIO_BLK_T_IN;
/// Request type: write sectors from the guest.
pub const T_OUT: u32 = virtio_bindings::bindings::virtio_blk::VIRTIO_BLK_T_OUT;
/// Request type: make earlier writes durable.
pub const T_FLUSH: u32 = virtio_bindings::bindings::virtio_blk::VIRTIO_BLK_T_FLUSH;
/// Request type: the device's serial.
pub const T_GET_ID: u32 = virtio_bindings::bindings::virtio_blk::VIRTIO_BLK_T_GET_ID;

/// Status: success.
pub const S_OK: u8 = virtio_bindings::bindings::virtio_blk::VIRTIO_BLK_S_OK as u8;
/// Status: the request failed.
pub const S_IOERR: u8 = virtio_bindings::bindings::virtio_blk::VIRTIO_BLK_S_IOERR as u8;
/// Status: the request type is not supported.
pub const S_UNSUPP: u8 = virtio_bindings::bindings::virtio_blk::VIRTIO_BLK_S_UNSUPP as u8;

/// Sector size of the protocol (and the only block size offered).
pub const SECTOR_SIZE: u64 = 512;
/// Length of the request header.
pub const HEADER_LEN: u64 = 16;
/// Largest data transfer of one request.
pub const MAX_DATA: u64 = 16 << 20;
/// Length of the serial returned by GET_ID.
pub const ID_BYTES: usize = virtio_bindings::bindings::virtio_blk::VIRTIO_BLK_ID_BYTES as usize;

/// A well-formed request. Data offsets are relative to the start of the
/// readable buffers (writes) or of the writable buffers (reads).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Read `len` bytes from `sector` into the writable buffers, from offset 0.
    In {
        /// First sector.
        sector: u64,
        /// Bytes, a multiple of [`SECTOR_SIZE`], at most [`MAX_DATA`].
        len: u64,
    },
    /// Write the `len` readable bytes after the header to `sector`.
    Out {
        /// First sector.
        sector: u64,
        /// Bytes, a multiple of [`SECTOR_SIZE`], at most [`MAX_DATA`].
        len: u64,
    },
    /// Make the writes so far durable.
    Flush,
    /// Write the serial into the writable buffers, before the status byte.
    GetId,
}

/// Why a request is refused. Each maps to a status byte, except
/// [`RequestError::NoStatus`]: that chain goes back with nothing written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The chain has no device-writable byte to hold the status.
    #[error("no device-writable byte for the status")]
    NoStatus,
    /// The device-readable part is shorter than the header.
    #[error("header of {0} bytes, shorter than 16")]
    ShortHeader(u64),
    /// The header could not be read from guest memory.
    #[error("cannot read the header: {0}")]
    Header(ChainError),
    /// Data buffers of the wrong direction for the request type.
    #[error("{0}")]
    WrongDirection(&'static str),
    /// The data length is not a whole number of sectors.
    #[error("data length {0} is not a multiple of 512")]
    Unaligned(u64),
    /// The data length is above [`MAX_DATA`].
    #[error("data length {0} is above the limit of {MAX_DATA} bytes")]
    TooLong(u64),
    /// The request reaches past the last sector.
    #[error("{sectors} sectors from sector {sector} reach past the end of the disk ({capacity} sectors)")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Number of sectors.
        sectors: u64,
        /// Disk size in sectors.
        capacity: u64,
    },
    /// A write to a read-only disk.
    #[error("write to a read-only disk")]
    ReadOnly,
    /// A request type the device does not implement.
    #[error("unsupported request type {0}")]
    Unsupported(u32),
}

impl RequestError {
    /// The status to report, `None` when the chain has no room for one.
    pub fn status(&self) -> Option<u8> {
        match self {
            RequestError::NoStatus => None,
            RequestError::Unsupported(_) => Some(S_UNSUPP),
            _ => Some(S_IOERR),
        }
    }
}

/// Parses the request carried by `chain` for a disk of `capacity_sectors`.
/// Reads only the header from guest memory; never does I/O.
pub fn parse_request(
    mem: &GuestMemoryMmap,
    chain: &DescChain,
    capacity_sectors: u64,
    readonly: bool,
) -> Result<Request, RequestError> {
    let writable = chain.writable_len();
    if writable == 0 {
        return Err(RequestError::NoStatus);
    }
    let readable = chain.readable_len();
    if readable < HEADER_LEN {
        return Err(RequestError::ShortHeader(readable));
    }
    let mut header = [0u8; HEADER_LEN as usize];
    chain
        .read_at(mem, 0, &mut header)
        .map_err(RequestError::Header)?;
    let [t0, t1, t2, t3, _, _, _, _, s0, s1, s2, s3, s4, s5, s6, s7] = header;
    let kind = u32::from_le_bytes([t0, t1, t2, t3]);
    let sector = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);
    match kind {
        T_IN => {
            if readable > HEADER_LEN {
                return Err(RequestError::WrongDirection(
                    "read request with device-readable data buffers",
                ));
            }
            // The status byte is the last writable byte; the rest is data.
            let len = writable - 1;
            check_range(sector, len, capacity_sectors)?;
            Ok(Request::In { sector, len })
        }
        T_OUT => {
            if readonly {
                return Err(RequestError::ReadOnly);
            }
            if writable > 1 {
                return Err(RequestError::WrongDirection(
                    "write request with device-writable data buffers",
                ));
            }
            let len = readable - HEADER_LEN;
            check_range(sector, len, capacity_sectors)?;
            Ok(Request::Out { sector, len })
        }
        T_FLUSH => Ok(Request::Flush),
        T_GET_ID => Ok(Request::GetId),
        other => Err(RequestError::Unsupported(other)),
    }
}

/// Checks that `len` bytes from `sector` are whole sectors inside the disk.
fn check_range(sector: u64, len: u64, capacity: u64) -> Result<(), RequestError> {
    if len % SECTOR_SIZE != 0 {
        return Err(RequestError::Unaligned(len));
    }
    if len > MAX_DATA {
        return Err(RequestError::TooLong(len));
    }
    let sectors = len / SECTOR_SIZE;
    match sector.checked_add(sectors) {
        Some(end) if end <= capacity => Ok(()),
        _ => Err(RequestError::OutOfRange {
            sector,
            sectors,
            capacity,
        }),
    }
}
