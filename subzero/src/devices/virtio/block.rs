//! virtio-blk: a raw disk image file (or block device) as a guest disk.
//!
//! One or more request queues (`VIRTIO_BLK_F_MQ`), served on the device
//! thread. Each chain is parsed by [`request::parse_request`]; its data
//! buffers become iovecs into guest memory ([`io::iovecs`]), so reads and
//! writes go straight between the image and the guest with no copy. Two
//! engines serve them:
//! - [`Engine::Uring`]: io_uring, with up to [`uring::MAX_IN_FLIGHT`]
//!   requests in flight; completions arrive on an eventfd the device thread
//!   watches ([`uring`]);
//! - [`Engine::Sync`]: `preadv`/`pwritev` on the device thread, one request
//!   at a time, where io_uring is missing or refused.
//!
//! Discard and write-zeroes are `fallocate` calls ([`io::discard`],
//! [`io::write_zeroes`]); under io_uring they wait for the requests in
//! flight first, so they are ordered after them. A guest can make the VMM
//! neither allocate nor touch the file beyond the disk it was given, and a
//! bad request fails with a status byte while the device goes on.

pub mod io;
pub mod open;
pub mod request;
mod serve;
pub mod uring;

#[cfg(test)]
mod feature_tests;
#[cfg(test)]
mod inflight_tests;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_bindings::bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ,
    VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_SIZE_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};

use super::{types, DeviceError, QueueCtx, VirtioDevice};
use crate::devices::rate_limiter::{RateLimiter, RateLimiterConfig};
pub use open::BlockError;
pub use request::{parse_request, Request, RequestError};
use request::{ID_BYTES, MAX_DATA, MAX_RANGE_SECTORS, SECTOR_SIZE};
use uring::{Pending, Uring};

/// Size of each queue.
const QUEUE_SIZE: u16 = 256;
/// Most request queues a disk serves.
pub const MAX_QUEUES: u16 = 16;
/// Longest chain accepted: the largest transfer plus room for the header,
/// the status byte and a GET_ID buffer. Longer chains are refused unread.
pub const MAX_CHAIN: u64 = MAX_DATA + 4096;
/// Largest data segment the driver may use (config `size_max`). With
/// `seg_max` segments, a request stays below [`MAX_DATA`], so a driver that
/// follows the config never makes a chain the device must refuse.
pub const SIZE_MAX: u32 = 64 << 10;
const _: () = assert!(SIZE_MAX as u64 * (QUEUE_SIZE as u64 - 2) <= MAX_DATA);
/// Length of the configuration space served (through write_zeroes_may_unmap).
const CONFIG_LEN: usize = 60;
/// Discard granularity announced, in sectors (4 KiB, a file system block).
const DISCARD_ALIGN_SECTORS: u32 = 8;
/// Event source tokens ([`VirtioDevice::event_fds`]).
const TOKEN_LIMITER: usize = 0;
const TOKEN_COMPLETIONS: usize = 1;

/// Which engine a disk asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum EngineChoice {
    /// io_uring where the host allows it, else synchronous.
    #[default]
    Auto,
    /// Synchronous `preadv`/`pwritev` on the device thread.
    Sync,
    /// io_uring, or fail.
    Uring,
}

impl EngineChoice {
    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            EngineChoice::Auto => "auto",
            EngineChoice::Sync => "sync",
            EngineChoice::Uring => "uring",
        }
    }
}

/// How a disk is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockOptions {
    /// Refuse guest writes (and offer VIRTIO_BLK_F_RO).
    pub readonly: bool,
    /// Serial returned by VIRTIO_BLK_T_GET_ID (max 20 bytes, default: the
    /// file name, truncated).
    pub id: Option<String>,
    /// The I/O engine.
    pub engine: EngineChoice,
    /// Request queues, 1 to [`MAX_QUEUES`].
    pub queues: u16,
}

impl Default for BlockOptions {
    fn default() -> Self {
        BlockOptions {
            readonly: false,
            id: None,
            engine: EngineChoice::Auto,
            queues: 1,
        }
    }
}

/// The engine in use.
pub enum Engine {
    /// One request at a time on the device thread.
    Sync,
    /// io_uring with requests in flight.
    Uring(Box<Uring>),
}

impl Engine {
    /// Its name in logs and statistics.
    pub fn name(&self) -> &'static str {
        match self {
            Engine::Sync => "sync",
            Engine::Uring(_) => "io_uring",
        }
    }
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
    /// Discard requests.
    pub discards: AtomicU64,
    /// Write-zeroes requests.
    pub write_zeroes: AtomicU64,
    /// Requests answered IOERR or UNSUPP.
    pub errors: AtomicU64,
    /// Chains returned unserved (malformed, or no status byte).
    pub bad_chains: AtomicU64,
    /// Times the rate limiter made the queue wait.
    pub throttled: AtomicU64,
    /// Most requests in flight at once (io_uring engine).
    pub in_flight_peak: AtomicU64,
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
    sizes: Vec<u16>,
    engine: Engine,
    /// Completions reaped outside the device thread's handlers (on swap),
    /// finished at the next event.
    reaped: Vec<(Pending, i32)>,
    /// Bit `q`: queue `q` stopped because no more requests fit in flight.
    starved: u64,
    stats: Arc<BlockStats>,
    limiter: RateLimiter,
}

impl Block {
    /// Opens a raw disk image with the default options (one queue, the
    /// engine chosen automatically).
    pub fn open(path: &Path, readonly: bool, id: Option<String>) -> Result<Block, BlockError> {
        let opts = BlockOptions {
            readonly,
            id,
            ..BlockOptions::default()
        };
        Block::open_with(path, &opts)
    }

    /// Opens a raw disk image to be served as `opts` say.
    pub fn open_with(path: &Path, opts: &BlockOptions) -> Result<Block, BlockError> {
        let p = || path.to_path_buf();
        let id = match &opts.id {
            Some(id) if id.len() > ID_BYTES => {
                return Err(BlockError::IdTooLong {
                    path: p(),
                    id: id.clone(),
                })
            }
            Some(id) => id.clone().into_bytes(),
            None => path
                .file_name()
                .map(|n| n.as_encoded_bytes().to_vec())
                .unwrap_or_default(),
        };
        if !(1..=MAX_QUEUES).contains(&opts.queues) {
            return Err(BlockError::Queues {
                path: p(),
                queues: opts.queues,
                max: MAX_QUEUES,
            });
        }
        let (file, size) = open::open_image(path, opts.readonly)?;
        // `auto` serves an image in memory synchronously: io_uring has no
        // storage wait to overlap there, and a kernel that cannot do a
        // file system's reads and writes without blocking hands each one
        // to a worker thread (in the lab's Linux 6.1, tmpfs: a thread
        // switch per request).
        let memory = match opts.engine {
            EngineChoice::Auto => open::in_memory(&file),
            _ => None,
        };
        let ring = match (opts.engine, memory) {
            (EngineChoice::Sync, _) | (_, Some(_)) => None,
            _ => Some(Uring::new()),
        };
        let engine = match (opts.engine, ring) {
            (_, None) => Engine::Sync,
            (_, Some(Ok(ring))) => Engine::Uring(Box::new(ring)),
            (EngineChoice::Uring | EngineChoice::Sync, Some(Err(source))) => {
                return Err(BlockError::UringUnavailable { path: p(), source })
            }
            (EngineChoice::Auto, Some(Err(e))) => {
                log::warn!(
                    "disk image {}: io_uring is not available ({e}); serving it with the synchronous engine (engine=sync says so and stops this warning)",
                    path.display()
                );
                Engine::Sync
            }
        };
        let limiter =
            RateLimiter::new(&RateLimiterConfig::default()).map_err(|source| BlockError::Io {
                path: p(),
                op: "cannot create a timerfd for its rate limiter",
                source,
            })?;
        let mut serial = [0u8; ID_BYTES];
        let n = id.len().min(ID_BYTES);
        serial[..n].copy_from_slice(&id[..n]);
        log::info!(
            "virtio-blk: {}: {} sectors, {} engine{}, {} queue{}{}",
            path.display(),
            size / SECTOR_SIZE,
            engine.name(),
            memory.map_or(String::new(), |fs| format!(
                " (the image is on {fs}, in memory: engine=uring to use io_uring)"
            )),
            opts.queues,
            if opts.queues == 1 { "" } else { "s" },
            if opts.readonly { ", read-only" } else { "" }
        );
        Ok(Block {
            file,
            path: p(),
            readonly: opts.readonly,
            capacity: size / SECTOR_SIZE,
            id: serial,
            sizes: vec![QUEUE_SIZE; usize::from(opts.queues)],
            engine,
            reaped: Vec::new(),
            starved: 0,
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
        let (file, size) = open::open_image(path, self.readonly)?;
        // Requests in flight still use the old file: let them finish first.
        // Their chains go back at the device thread's next event.
        if let Engine::Uring(ring) = &mut self.engine {
            ring.wait_all(&mut self.reaped);
            if !self.reaped.is_empty() {
                ring.wake();
            }
        }
        self.file = file;
        self.path = path.to_path_buf();
        self.capacity = size / SECTOR_SIZE;
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

    /// The engine serving the disk.
    pub fn engine(&self) -> &'static str {
        self.engine.name()
    }

    /// The device's counters (they stay valid after the device is handed over).
    pub fn stats(&self) -> Arc<BlockStats> {
        self.stats.clone()
    }

    /// The configuration space (`struct virtio_blk_config` through
    /// write_zeroes_may_unmap).
    fn config(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        let mut put = |at: usize, bytes: &[u8]| c[at..at + bytes.len()].copy_from_slice(bytes);
        put(0, &self.capacity.to_le_bytes());
        put(8, &SIZE_MAX.to_le_bytes());
        put(12, &u32::from(QUEUE_SIZE - 2).to_le_bytes());
        // geometry (16..20) stays 0: VIRTIO_BLK_F_GEOMETRY is not offered.
        put(20, &(SECTOR_SIZE as u32).to_le_bytes());
        // topology (24..32) and writeback (32) stay 0: not offered.
        put(34, &(self.sizes.len() as u16).to_le_bytes());
        put(36, &MAX_RANGE_SECTORS.to_le_bytes());
        put(40, &1u32.to_le_bytes());
        put(44, &DISCARD_ALIGN_SECTORS.to_le_bytes());
        put(48, &MAX_RANGE_SECTORS.to_le_bytes());
        put(52, &1u32.to_le_bytes());
        put(56, &[1]);
        c
    }

    /// Limits the disk's bytes and requests per second from now on.
    pub fn set_rate_limiter(&mut self, cfg: &RateLimiterConfig) {
        self.limiter.update(cfg);
    }

    /// Serves every ready queue once (after the limiter's timer, or once
    /// requests in flight made room).
    fn serve_all(&mut self, ctx: &mut QueueCtx) -> Result<(), DeviceError> {
        for q in 0..self.sizes.len() {
            if ctx.ready(q) {
                self.process_queue(q, ctx)?;
            }
        }
        Ok(())
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
        &self.sizes
    }
    fn features(&self) -> u64 {
        let mut f = (1 << VIRTIO_BLK_F_FLUSH)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_SIZE_MAX)
            | (1 << VIRTIO_BLK_F_BLK_SIZE);
        if self.readonly {
            f |= 1 << VIRTIO_BLK_F_RO;
        } else {
            f |= (1 << VIRTIO_BLK_F_DISCARD) | (1 << VIRTIO_BLK_F_WRITE_ZEROES);
        }
        if self.sizes.len() > 1 {
            f |= 1 << VIRTIO_BLK_F_MQ;
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

    fn reset(&mut self) {
        // The queues are gone: requests in flight finish, unanswered.
        if let Engine::Uring(ring) = &mut self.engine {
            ring.wait_all(&mut self.reaped);
        }
        self.reaped.clear();
        self.starved = 0;
    }

    fn quiesce(&mut self, ctx: &mut QueueCtx) -> Result<(), DeviceError> {
        if let Engine::Uring(ring) = &mut self.engine {
            ring.wait_all(&mut self.reaped);
        }
        self.finish_reaped(ctx)
    }

    fn event_fds(&self) -> Vec<RawFd> {
        let mut fds = vec![self.limiter.timer_fd()];
        if let Engine::Uring(ring) = &self.engine {
            fds.push(ring.eventfd());
        }
        fds
    }

    fn process_event(&mut self, token: usize, ctx: &mut QueueCtx) -> Result<(), DeviceError> {
        match token {
            TOKEN_LIMITER => {
                self.limiter.timer_fired();
                if ctx.active {
                    self.serve_all(ctx)?;
                }
                Ok(())
            }
            TOKEN_COMPLETIONS => {
                if let Engine::Uring(ring) = &mut self.engine {
                    ring.reap(&mut self.reaped);
                }
                self.finish_reaped(ctx)?;
                if ctx.active && self.starved != 0 {
                    self.starved = 0;
                    self.serve_all(ctx)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn process_queue(&mut self, q: usize, ctx: &mut QueueCtx) -> Result<(), DeviceError> {
        self.serve_queue(q, ctx)
    }
}
