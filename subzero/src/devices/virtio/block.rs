//! virtio-blk: a raw disk image file (or block device) as a guest disk.
//!
//! One request queue, served on the device thread. Each chain is parsed by
//! [`request::parse_request`] and then served with positional I/O through a
//! fixed bounce buffer, so a guest can make the VMM neither allocate nor
//! touch the file beyond the disk it was given. A bad request fails with a
//! status byte and the device goes on.

pub mod request;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_bindings::bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_SIZE_MAX,
};
use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestMemoryMmap};

use super::{types, DescChain, DeviceError, QueueCtx, VirtioDevice};
use crate::devices::rate_limiter::{RateLimiter, RateLimiterConfig};
pub use request::{parse_request, Request, RequestError};
use request::{HEADER_LEN, ID_BYTES, MAX_DATA, SECTOR_SIZE, S_IOERR, S_OK};

/// Queue size.
const QUEUE_SIZE: u16 = 256;
/// Longest chain accepted: the largest transfer plus room for the header,
/// the status byte and a GET_ID buffer. Longer chains are refused unread.
pub const MAX_CHAIN: u64 = MAX_DATA + 4096;
/// Largest data segment the driver may use (config `size_max`). With
/// `seg_max` segments, a request stays below [`MAX_DATA`], so a driver that
/// follows the config never makes a chain the device must refuse.
pub const SIZE_MAX: u32 = 64 << 10;
const _: () = assert!(SIZE_MAX as u64 * (QUEUE_SIZE as u64 - 2) <= MAX_DATA);
/// Size of the bounce buffer between guest memory and the file.
const BOUNCE: usize = 128 << 10;
/// Length of the configuration space served (up to and including blk_size).
const CONFIG_LEN: usize = 24;

/// Why a disk image cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The file does not exist.
    #[error("disk image {}: no such file; check the path", .path.display())]
    NotFound {
        /// The image path.
        path: PathBuf,
    },
    /// The path names a directory.
    #[error("disk image {}: is a directory; give the path of a raw disk image file", .path.display())]
    IsDirectory {
        /// The image path.
        path: PathBuf,
    },
    /// The path names something other than a file or a block device.
    #[error("disk image {}: not a regular file or a block device", .path.display())]
    NotADisk {
        /// The image path.
        path: PathBuf,
    },
    /// The image may be read but not written.
    #[error("disk image {}: cannot be opened for writing ({reason}); attach it with readonly=on, or make it writable", .path.display())]
    WriteDenied {
        /// The image path.
        path: PathBuf,
        /// Why writing is not possible.
        reason: &'static str,
    },
    /// The image may not be read at all.
    #[error("disk image {}: permission denied; check the file's owner and permissions", .path.display())]
    PermissionDenied {
        /// The image path.
        path: PathBuf,
    },
    /// The image holds no data.
    #[error("disk image {}: the file is empty; give it a size first, e.g. `truncate -s 1G {}`", .path.display(), .path.display())]
    Empty {
        /// The image path.
        path: PathBuf,
    },
    /// The image is smaller than one sector.
    #[error("disk image {}: {size} bytes is smaller than one 512-byte sector", .path.display())]
    TooSmall {
        /// The image path.
        path: PathBuf,
        /// Its size in bytes.
        size: u64,
    },
    /// Another process holds a conflicting lock.
    #[error("disk image {}: locked by another user (another VM, or the same image given twice); two writers corrupt an image. Stop the other user, or attach the image with readonly=on everywhere", .path.display())]
    Locked {
        /// The image path.
        path: PathBuf,
    },
    /// The serial given is too long.
    #[error("disk image {}: id {id:?} is {} bytes; virtio-blk allows at most 20", .path.display(), .id.len())]
    IdTooLong {
        /// The image path.
        path: PathBuf,
        /// The id given.
        id: String,
    },
    /// Any other failure of the host.
    #[error("disk image {}: {op}: {source}", .path.display())]
    Io {
        /// The image path.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The error.
        source: io::Error,
    },
}

/// What the device has done, shared with whoever wants to watch it.
#[derive(Debug, Default)]
pub struct BlockStats {
    /// Chains served (including failed ones).
    pub requests: AtomicU64,
    /// Bytes read from the disk into the guest.
    pub bytes_read: AtomicU64,
    /// Bytes written from the guest to the disk.
    pub bytes_written: AtomicU64,
    /// Flush requests.
    pub flushes: AtomicU64,
    /// Requests answered IOERR or UNSUPP.
    pub errors: AtomicU64,
    /// Chains returned unserved (malformed, or no status byte).
    pub bad_chains: AtomicU64,
    /// Times the rate limiter made the queue wait.
    pub throttled: AtomicU64,
}

impl BlockStats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// The block device.
pub struct Block {
    file: File,
    path: PathBuf,
    readonly: bool,
    capacity: u64,
    id: [u8; ID_BYTES],
    bounce: Vec<u8>,
    stats: Arc<BlockStats>,
    limiter: RateLimiter,
}

impl Block {
    /// Opens a raw disk image. `id` is the serial returned by
    /// VIRTIO_BLK_T_GET_ID (max 20 bytes, default: file name truncated).
    pub fn open(path: &Path, readonly: bool, id: Option<String>) -> Result<Block, BlockError> {
        let p = || path.to_path_buf();
        let id = match id {
            Some(id) if id.len() > ID_BYTES => return Err(BlockError::IdTooLong { path: p(), id }),
            Some(id) => id.into_bytes(),
            None => path
                .file_name()
                .map(|n| n.as_encoded_bytes().to_vec())
                .unwrap_or_default(),
        };
        // Look before opening: opening a FIFO would block until a writer comes.
        let mut flags = 0;
        if let Ok(meta) = std::fs::metadata(path) {
            check_kind(path, meta.file_type())?;
            // A host block device is ours alone while the VM runs: O_EXCL
            // fails if it is mounted or another process holds it so.
            if std::os::unix::fs::FileTypeExt::is_block_device(&meta.file_type()) {
                flags |= libc::O_EXCL;
            }
        }
        let file = OpenOptions::new()
            .read(true)
            .write(!readonly)
            .custom_flags(flags)
            .open(path)
            .map_err(|e| open_error(path, readonly, e))?;
        let io_err = |op| {
            move |source| BlockError::Io {
                path: p(),
                op,
                source,
            }
        };
        let meta = file.metadata().map_err(io_err("cannot stat"))?;
        let kind = meta.file_type();
        check_kind(path, kind)?;
        lock(&file, readonly).map_err(|e| {
            if e.kind() == io::ErrorKind::WouldBlock {
                BlockError::Locked { path: p() }
            } else {
                io_err("cannot lock")(e)
            }
        })?;
        let size = if kind.is_file() {
            meta.len()
        } else {
            (&file)
                .seek(SeekFrom::End(0))
                .map_err(io_err("cannot get the size"))?
        };
        if size == 0 {
            return Err(BlockError::Empty { path: p() });
        }
        if size < SECTOR_SIZE {
            return Err(BlockError::TooSmall { path: p(), size });
        }
        if size % SECTOR_SIZE != 0 {
            log::warn!(
                "disk image {}: {size} bytes is not a multiple of 512; the last {} bytes are not visible to the guest",
                path.display(),
                size % SECTOR_SIZE
            );
        }
        let limiter = RateLimiter::new(&RateLimiterConfig::default())
            .map_err(io_err("cannot create a timerfd for its rate limiter"))?;
        let mut serial = [0u8; ID_BYTES];
        let n = id.len().min(ID_BYTES);
        serial[..n].copy_from_slice(&id[..n]);
        Ok(Block {
            file,
            path: p(),
            readonly,
            capacity: size / SECTOR_SIZE,
            id: serial,
            bounce: vec![0; BOUNCE],
            stats: Arc::default(),
            limiter,
        })
    }

    /// Serves from the image at `path` from now on (same mode, same
    /// serial), or, when `path` is the image in use, takes up its new size.
    pub fn swap(&mut self, path: &Path) -> Result<(), BlockError> {
        let same = match (
            std::fs::canonicalize(path),
            std::fs::canonicalize(&self.path),
        ) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if same {
            let size = (&self.file)
                .seek(SeekFrom::End(0))
                .map_err(|source| BlockError::Io {
                    path: path.to_path_buf(),
                    op: "cannot get the size",
                    source,
                })?;
            self.capacity = size / SECTOR_SIZE;
            return Ok(());
        }
        let new = Block::open(path, self.readonly, None)?;
        self.file = new.file;
        self.path = new.path;
        self.capacity = new.capacity;
        log::info!(
            "virtio-blk: now serving {} ({} sectors)",
            self.path.display(),
            self.capacity
        );
        Ok(())
    }

    /// Disk size in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity
    }

    /// Whether the guest may only read.
    pub fn readonly(&self) -> bool {
        self.readonly
    }

    /// The device's counters (they stay valid after the device is handed over).
    pub fn stats(&self) -> Arc<BlockStats> {
        self.stats.clone()
    }

    /// The configuration space (`struct virtio_blk_config` up to blk_size).
    fn config(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[0..8].copy_from_slice(&self.capacity.to_le_bytes());
        c[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        c[12..16].copy_from_slice(&u32::from(QUEUE_SIZE - 2).to_le_bytes());
        // geometry (16..20) stays 0: VIRTIO_BLK_F_GEOMETRY is not offered.
        c[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        c
    }

    /// Limits the disk's bytes and requests per second from now on.
    pub fn set_rate_limiter(&mut self, cfg: &RateLimiterConfig) {
        self.limiter.update(cfg);
    }

    /// Serves one chain, parsed into `request`; returns the number of bytes
    /// written into it.
    fn serve(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: &DescChain,
        request: Result<Request, RequestError>,
    ) -> u32 {
        BlockStats::add(&self.stats.requests, 1);
        let (status, written) = match request {
            Ok(req) => self.execute(mem, chain, req),
            Err(e) => {
                log::debug!("{}: request refused: {e}", self.path.display());
                match e.status() {
                    Some(s) => (s, 0),
                    None => {
                        BlockStats::add(&self.stats.bad_chains, 1);
                        return 0;
                    }
                }
            }
        };
        if status != S_OK {
            BlockStats::add(&self.stats.errors, 1);
        }
        // parse_request made sure there is at least one writable byte.
        let at = chain.writable_len().saturating_sub(1);
        let total = match chain.write_at(mem, at, &[status]) {
            Ok(()) => written + 1,
            Err(e) => {
                log::debug!("{}: cannot write the status: {e}", self.path.display());
                written
            }
        };
        u32::try_from(total).unwrap_or(u32::MAX)
    }

    /// Runs a parsed request: (status, data bytes written into the guest).
    fn execute(&mut self, mem: &GuestMemoryMmap, chain: &DescChain, req: Request) -> (u8, u64) {
        let mut done = 0u64;
        let result = match req {
            Request::In { sector, len } => {
                let r = self.read(mem, chain, sector, len, &mut done);
                BlockStats::add(&self.stats.bytes_read, done);
                r
            }
            Request::Out { sector, len } => {
                let mut copied = 0;
                let r = self.write(mem, chain, sector, len, &mut copied);
                BlockStats::add(&self.stats.bytes_written, copied);
                r
            }
            Request::Flush => {
                BlockStats::add(&self.stats.flushes, 1);
                // Nothing to make durable on a disk the guest cannot write.
                if self.readonly {
                    Ok(())
                } else {
                    self.file.sync_data().map_err(|e| format!("fdatasync: {e}"))
                }
            }
            Request::GetId => {
                let room = chain.writable_len().saturating_sub(1);
                let n = (ID_BYTES as u64).min(room) as usize;
                chain
                    .write_at(mem, 0, &self.id[..n])
                    .map(|()| done = n as u64)
                    .map_err(|e| format!("writing the id: {e}"))
            }
        };
        match result {
            Ok(()) => (S_OK, done),
            Err(e) => {
                log::warn!("{}: {req:?} failed: {e}", self.path.display());
                (request::S_IOERR, done)
            }
        }
    }

    /// Copies `len` bytes from `sector` into the chain's writable buffers;
    /// `done` counts the bytes that reached the guest.
    fn read(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: &DescChain,
        sector: u64,
        len: u64,
        done: &mut u64,
    ) -> Result<(), String> {
        let base = disk_offset(sector)?;
        while *done < len {
            let n = (len - *done).min(BOUNCE as u64) as usize;
            let buf = &mut self.bounce[..n];
            self.file
                .read_exact_at(buf, base + *done)
                .map_err(|e| format!("read at byte {}: {e}", base + *done))?;
            chain
                .write_at(mem, *done, buf)
                .map_err(|e| format!("copy to the guest: {e}"))?;
            *done += n as u64;
        }
        Ok(())
    }

    /// Copies `len` readable bytes after the header to `sector`; `done`
    /// counts the bytes that reached the file.
    fn write(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: &DescChain,
        sector: u64,
        len: u64,
        done: &mut u64,
    ) -> Result<(), String> {
        let base = disk_offset(sector)?;
        while *done < len {
            let n = (len - *done).min(BOUNCE as u64) as usize;
            let buf = &mut self.bounce[..n];
            chain
                .read_at(mem, HEADER_LEN + *done, buf)
                .map_err(|e| format!("copy from the guest: {e}"))?;
            self.file
                .write_all_at(buf, base + *done)
                .map_err(|e| format!("write at byte {}: {e}", base + *done))?;
            *done += n as u64;
        }
        Ok(())
    }
}

/// Byte offset of `sector`. parse_request bounds the sector by the disk
/// size, so this fails only if that check is broken.
fn disk_offset(sector: u64) -> Result<u64, String> {
    sector
        .checked_mul(SECTOR_SIZE)
        .ok_or_else(|| format!("sector {sector} is out of range"))
}

/// Accepts regular files and block devices.
fn check_kind(path: &Path, kind: std::fs::FileType) -> Result<(), BlockError> {
    if kind.is_dir() {
        Err(BlockError::IsDirectory {
            path: path.to_path_buf(),
        })
    } else if kind.is_file() || kind.is_block_device() {
        Ok(())
    } else {
        Err(BlockError::NotADisk {
            path: path.to_path_buf(),
        })
    }
}

/// Takes an advisory lock on the whole image without waiting: shared for
/// a read-only disk, exclusive otherwise.
fn lock(file: &File, readonly: bool) -> io::Result<()> {
    let op = if readonly {
        libc::LOCK_SH
    } else {
        libc::LOCK_EX
    };
    // SAFETY: flock only takes a descriptor, which `file` keeps open for
    // the duration of the call; it reads or writes no memory of ours.
    let r = unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Turns a failed open(2) into a message saying what to do.
fn open_error(path: &Path, readonly: bool, e: io::Error) -> BlockError {
    let path_buf = path.to_path_buf();
    match e.kind() {
        io::ErrorKind::NotFound => BlockError::NotFound { path: path_buf },
        io::ErrorKind::IsADirectory => BlockError::IsDirectory { path: path_buf },
        io::ErrorKind::ReadOnlyFilesystem if !readonly => BlockError::WriteDenied {
            path: path_buf,
            reason: "it is on a read-only file system",
        },
        io::ErrorKind::PermissionDenied => {
            if !readonly && File::open(path).is_ok() {
                BlockError::WriteDenied {
                    path: path_buf,
                    reason: "you may read it but not write it",
                }
            } else {
                BlockError::PermissionDenied { path: path_buf }
            }
        }
        _ => BlockError::Io {
            path: path_buf,
            op: "cannot open",
            source: e,
        },
    }
}

/// For a chain the device refused: writes IOERR into the last byte of its
/// last device-writable buffer (where the driver reads the status), so the
/// driver never mistakes a stale status byte for success. Returns the used
/// length: 1 if the status was written.
fn fail_status(mem: &GuestMemoryMmap, descs: &[Descriptor]) -> u32 {
    let status = descs
        .iter()
        .rev()
        .find(|d| d.is_write_only() && d.len() > 0)
        .and_then(|d| d.addr().checked_add(u64::from(d.len()) - 1));
    match status {
        Some(at) if mem.write_obj(S_IOERR, at).is_ok() => 1,
        _ => 0,
    }
}

impl VirtioDevice for Block {
    fn name(&self) -> &str {
        "virtio-blk"
    }
    fn device_type(&self) -> u32 {
        types::BLOCK
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        let mut f = (1 << VIRTIO_BLK_F_FLUSH)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_SIZE_MAX)
            | (1 << VIRTIO_BLK_F_BLK_SIZE);
        if self.readonly {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        f
    }
    fn swap_backing(&mut self, path: &Path) -> Result<(), String> {
        self.swap(path).map_err(|e| e.to_string())
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = self.config();
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i as u64)
                .and_then(|at| usize::try_from(at).ok())
                .and_then(|at| config.get(at).copied())
                .unwrap_or(0);
        }
    }

    fn set_rate_limiter(&mut self, _queue: usize, cfg: &RateLimiterConfig) -> Result<(), String> {
        Block::set_rate_limiter(self, cfg);
        Ok(())
    }

    fn event_fds(&self) -> Vec<RawFd> {
        vec![self.limiter.timer_fd()]
    }

    /// The rate limiter's timer: the queue may go on.
    fn process_event(&mut self, _token: usize, ctx: &mut QueueCtx) -> Result<(), DeviceError> {
        self.limiter.timer_fired();
        if ctx.ready(0) {
            self.process_queue(0, ctx)?;
        }
        Ok(())
    }

    fn process_queue(&mut self, q: usize, ctx: &mut QueueCtx) -> Result<(), DeviceError> {
        loop {
            ctx.disable_notification(q)?;
            loop {
                if self.limiter.blocked() {
                    // The timer brings the device back; notifications stay
                    // off until then.
                    return ctx.notify(q);
                }
                let chain = match ctx.pop_or_fail(q, MAX_CHAIN, fail_status) {
                    Ok(Some(c)) => c,
                    Ok(None) => break,
                    Err(e) => {
                        log::debug!("{}: chain refused: {e}", self.path.display());
                        BlockStats::add(&self.stats.bad_chains, 1);
                        continue;
                    }
                };
                let request = parse_request(ctx.mem, &chain, self.capacity, self.readonly);
                let bytes = match &request {
                    Ok(Request::In { len, .. } | Request::Out { len, .. }) => *len,
                    _ => 0,
                };
                if !self.limiter.consume(bytes, 1) {
                    // Back on the ring, served when the buckets refill.
                    BlockStats::add(&self.stats.throttled, 1);
                    ctx.throttled.fetch_add(1, Ordering::Relaxed);
                    ctx.undo_pop(q);
                    continue;
                }
                let written = self.serve(ctx.mem, &chain, request);
                ctx.add_used(q, chain.head, written)?;
            }
            if !ctx.enable_notification(q)? {
                break;
            }
        }
        ctx.notify(q)
    }
}
