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
/// Request type: the guest no longer needs these sectors.
pub const T_DISCARD: u32 = virtio_bindings::bindings::virtio_blk::VIRTIO_BLK_T_DISCARD;
/// Request type: make these sectors read back as zeroes.
pub const T_WRITE_ZEROES: u32 = virtio_bindings::bindings::virtio_blk::VIRTIO_BLK_T_WRITE_ZEROES;

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
/// Length of one discard / write-zeroes segment (sector le64,
/// num_sectors le32, flags le32).
pub const SEGMENT_LEN: u64 = 16;
/// Most sectors one discard or write-zeroes segment may cover (config
/// `max_discard_sectors`, `max_write_zeroes_sectors`): 4 GiB.
pub const MAX_RANGE_SECTORS: u32 = 1 << 23;
/// The segment flag that lets write-zeroes deallocate the range.
pub const FLAG_UNMAP: u32 = 1;
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
    /// Give `sectors` sectors from `sector` back (one segment).
    Discard {
        /// First sector.
        sector: u64,
        /// Number of sectors, at most [`MAX_RANGE_SECTORS`].
        sectors: u64,
    },
    /// Make `sectors` sectors from `sector` read back as zeroes.
    WriteZeroes {
        /// First sector.
        sector: u64,
        /// Number of sectors, at most [`MAX_RANGE_SECTORS`].
        sectors: u64,
        /// The driver allows deallocating the range.
        unmap: bool,
    },
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
    /// A discard or write-zeroes request that is not exactly one segment.
    #[error("{0} bytes of segments; the device takes exactly one 16-byte segment")]
    Segments(u64),
    /// A segment with flags the request type does not allow.
    #[error("segment flags {0:#x} are not supported for this request")]
    SegmentFlags(u32),
    /// A segment longer than the device announced.
    #[error("segment of {0} sectors is longer than the limit of {MAX_RANGE_SECTORS}")]
    SegmentTooLong(u32),
}

impl RequestError {
    /// The status to report, `None` when the chain has no room for one.
    pub fn status(&self) -> Option<u8> {
        match self {
            RequestError::NoStatus => None,
            RequestError::Unsupported(_) | RequestError::SegmentFlags(_) => Some(S_UNSUPP),
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
        T_DISCARD | T_WRITE_ZEROES => {
            if readonly {
                return Err(RequestError::ReadOnly);
            }
            parse_segment(mem, chain, kind, capacity_sectors)
        }
        other => Err(RequestError::Unsupported(other)),
    }
}

/// The one segment of a discard or write-zeroes request, after the header.
fn parse_segment(
    mem: &GuestMemoryMmap,
    chain: &DescChain,
    kind: u32,
    capacity: u64,
) -> Result<Request, RequestError> {
    let data = chain.readable_len() - HEADER_LEN;
    if data != SEGMENT_LEN {
        return Err(RequestError::Segments(data));
    }
    let mut seg = [0u8; SEGMENT_LEN as usize];
    chain
        .read_at(mem, HEADER_LEN, &mut seg)
        .map_err(RequestError::Header)?;
    let [s0, s1, s2, s3, s4, s5, s6, s7, n0, n1, n2, n3, f0, f1, f2, f3] = seg;
    let sector = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);
    let num = u32::from_le_bytes([n0, n1, n2, n3]);
    let flags = u32::from_le_bytes([f0, f1, f2, f3]);
    // Discard has no flags; write-zeroes has only UNMAP (virtio 1.2, 5.2.6.2).
    let allowed = if kind == T_WRITE_ZEROES {
        FLAG_UNMAP
    } else {
        0
    };
    if flags & !allowed != 0 {
        return Err(RequestError::SegmentFlags(flags));
    }
    if num > MAX_RANGE_SECTORS {
        return Err(RequestError::SegmentTooLong(num));
    }
    let sectors = u64::from(num);
    match sector.checked_add(sectors) {
        Some(end) if end <= capacity => {}
        _ => {
            return Err(RequestError::OutOfRange {
                sector,
                sectors,
                capacity,
            })
        }
    }
    Ok(if kind == T_DISCARD {
        Request::Discard { sector, sectors }
    } else {
        Request::WriteZeroes {
            sector,
            sectors,
            unmap: flags & FLAG_UNMAP != 0,
        }
    })
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
