//! Serving a queue: chains popped, parsed, rate-limited, and then either
//! done on the spot (the synchronous engine; GET_ID; refused requests) or
//! handed to io_uring and finished when their completions come back.

use std::sync::atomic::Ordering;

use virtio_queue::desc::split::Descriptor;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::io::{self, Dir};
use super::request::{HEADER_LEN, ID_BYTES, SECTOR_SIZE, S_IOERR, S_OK};
use super::uring::{Op, Pending};
use super::{parse_request, Block, BlockStats, Engine, Request, RequestError, MAX_CHAIN};
use crate::devices::virtio::{DescChain, DeviceError, QueueCtx};

/// How a request ended: its status and the data bytes it put in the guest.
type Outcome = (u8, u64);

impl Block {
    /// Serves queue `q` until it is empty, the rate limiter says wait, or no
    /// more requests fit in flight.
    pub(super) fn serve_queue(&mut self, q: usize, ctx: &mut QueueCtx) -> Result<(), DeviceError> {
        loop {
            ctx.disable_notification(q)?;
            loop {
                if self.limiter.blocked() {
                    // The timer brings the device back; notifications stay
                    // off until then.
                    self.submit(ctx)?;
                    return ctx.notify(q);
                }
                if let Engine::Uring(ring) = &self.engine {
                    if !ring.has_room() {
                        // A completion brings the queue back.
                        self.starved |= 1 << q;
                        self.submit(ctx)?;
                        return ctx.notify(q);
                    }
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
                BlockStats::add(&self.stats.requests, 1);
                self.dispatch(q, ctx, &chain, request)?;
            }
            self.submit(ctx)?;
            if !ctx.enable_notification(q)? {
                break;
            }
        }
        ctx.notify(q)
    }

    /// Starts or serves one parsed request.
    fn dispatch(
        &mut self,
        q: usize,
        ctx: &mut QueueCtx,
        chain: &DescChain,
        request: Result<Request, RequestError>,
    ) -> Result<(), DeviceError> {
        let req = match request {
            Ok(req) => req,
            Err(e) => {
                log::debug!("{}: request refused: {e}", self.path.display());
                let Some(status) = e.status() else {
                    BlockStats::add(&self.stats.bad_chains, 1);
                    return ctx.add_used(q, chain.head, 0);
                };
                return self.answer(q, ctx, chain.head, status_addr(chain), (status, 0));
            }
        };
        let uring = matches!(self.engine, Engine::Uring(_));
        let op = match req {
            Request::In { sector, len } if uring => Op::Rw {
                dir: Dir::Read,
                offset: sector * SECTOR_SIZE,
                len,
            },
            Request::Out { sector, len } if uring => Op::Rw {
                dir: Dir::Write,
                offset: sector * SECTOR_SIZE,
                len,
            },
            Request::Flush if uring && !self.readonly => Op::Flush,
            Request::Discard { .. } | Request::WriteZeroes { .. } if uring => {
                // Ordered after everything in flight, like a barrier.
                self.drain(ctx)?;
                let outcome = self.execute(ctx.mem, chain, req);
                return self.answer(q, ctx, chain.head, status_addr(chain), outcome);
            }
            _ => {
                let outcome = self.execute(ctx.mem, chain, req);
                return self.answer(q, ctx, chain.head, status_addr(chain), outcome);
            }
        };
        let iovs = match op {
            Op::Rw {
                dir: Dir::Read,
                len,
                ..
            } => io::iovecs(ctx.mem, &chain.writable, 0, len, Dir::Read),
            Op::Rw { len, .. } => io::iovecs(ctx.mem, &chain.readable, HEADER_LEN, len, Dir::Write),
            Op::Flush => Ok(io::IoVecs::default()),
        };
        let (iovs, Some(status)) = (iovs, status_addr(chain)) else {
            return ctx.add_used(q, chain.head, 0);
        };
        let iovs = match iovs {
            Ok(v) => v,
            Err(e) => {
                log::warn!("{}: {req:?} failed: {e}", self.path.display());
                return self.answer(q, ctx, chain.head, Some(status), (S_IOERR, 0));
            }
        };
        if op == Op::Flush {
            BlockStats::add(&self.stats.flushes, 1);
        }
        let pending = Pending {
            queue: q as u16,
            head: chain.head,
            op,
            iovs,
            status,
        };
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.file);
        let Engine::Uring(ring) = &mut self.engine else {
            unreachable!("only the io_uring engine gets here");
        };
        match ring.push(fd, ctx.mem, pending) {
            Ok(()) => {
                let peak = ring.peak() as u64;
                self.stats.in_flight_peak.fetch_max(peak, Ordering::Relaxed);
                Ok(())
            }
            Err(p) => {
                // serve_queue checked for room; a submission queue the
                // kernel will not take is served on the spot instead:
                // finish() moves all the data of a result of 0 itself.
                log::debug!("{}: io_uring full; serving inline", self.path.display());
                let res = match p.op {
                    Op::Flush => match self.file.sync_data() {
                        Ok(()) => 0,
                        Err(e) => -e.raw_os_error().unwrap_or(libc::EIO),
                    },
                    Op::Rw { .. } => 0,
                };
                self.finish(ctx, p, res)
            }
        }
    }

    /// Hands queued submissions to the kernel, and finishes those that
    /// completed in the submission.
    fn submit(&mut self, ctx: &mut QueueCtx) -> Result<(), DeviceError> {
        if let Engine::Uring(ring) = &mut self.engine {
            ring.submit_and_reap(&mut self.reaped)
                .map_err(|e| DeviceError::Backend(format!("io_uring submit: {e}")))?;
        }
        self.finish_reaped(ctx)
    }

    /// Waits for every request in flight and finishes them.
    fn drain(&mut self, ctx: &mut QueueCtx) -> Result<(), DeviceError> {
        if let Engine::Uring(ring) = &mut self.engine {
            ring.wait_all(&mut self.reaped);
        }
        self.finish_reaped(ctx)
    }

    /// Finishes the completions reaped so far, and notifies their queues.
    pub(super) fn finish_reaped(&mut self, ctx: &mut QueueCtx) -> Result<(), DeviceError> {
        if !ctx.active {
            // The device failed or was reset: nobody waits for these.
            self.reaped.clear();
            return Ok(());
        }
        let mut queues = 0u64;
        for (p, res) in std::mem::take(&mut self.reaped) {
            queues |= 1 << p.queue;
            self.finish(ctx, p, res)?;
        }
        for q in 0..self.sizes.len() {
            if queues & (1 << q) != 0 {
                ctx.notify(q)?;
            }
        }
        // A queue that stopped for want of room waits for a completion
        // event; these completions may have been reaped without one.
        if self.starved != 0 && queues != 0 {
            if let Engine::Uring(ring) = &self.engine {
                ring.wake();
            }
        }
        Ok(())
    }

    /// Finishes one io_uring request with its result (`res` bytes moved,
    /// or -errno). A short transfer is completed synchronously.
    fn finish(&mut self, ctx: &mut QueueCtx, mut p: Pending, res: i32) -> Result<(), DeviceError> {
        let outcome = match p.op {
            Op::Flush if res < 0 => {
                let e = std::io::Error::from_raw_os_error(-res);
                log::warn!("{}: flush failed: fdatasync: {e}", self.path.display());
                (S_IOERR, 0)
            }
            Op::Flush => (S_OK, 0),
            Op::Rw { dir, offset, len } => {
                let mut done = u64::try_from(res).unwrap_or(0).min(len);
                let mut result = if res < 0 {
                    Err(std::io::Error::from_raw_os_error(-res))
                } else {
                    Ok(())
                };
                if result.is_ok() && done < len {
                    p.iovs.advance(done);
                    let (n, r) = io::transfer(&self.file, dir, &mut p.iovs, offset + done);
                    done += n;
                    result = r;
                }
                self.rw_outcome(dir, offset, done, result)
            }
        };
        self.answer(usize::from(p.queue), ctx, p.head, Some(p.status), outcome)
    }

    /// The outcome of a read or write that moved `done` bytes.
    fn rw_outcome(&self, dir: Dir, offset: u64, done: u64, r: std::io::Result<()>) -> Outcome {
        let counter = match dir {
            Dir::Read => &self.stats.bytes_read,
            Dir::Write => &self.stats.bytes_written,
        };
        BlockStats::add(counter, done);
        let to_guest = if dir == Dir::Read { done } else { 0 };
        match r {
            Ok(()) => (S_OK, to_guest),
            Err(e) => {
                let what = if dir == Dir::Read { "read" } else { "write" };
                log::warn!(
                    "{}: {what} at byte {} failed: {e}",
                    self.path.display(),
                    offset + done
                );
                (S_IOERR, to_guest)
            }
        }
    }

    /// Writes the status byte and puts the chain on the used ring.
    fn answer(
        &mut self,
        q: usize,
        ctx: &mut QueueCtx,
        head: u16,
        status_at: Option<GuestAddress>,
        (status, written): Outcome,
    ) -> Result<(), DeviceError> {
        if status != S_OK {
            BlockStats::add(&self.stats.errors, 1);
        }
        let mut total = written;
        match status_at.map(|at| ctx.mem.write_obj(status, at)) {
            Some(Ok(())) => total += 1,
            Some(Err(e)) => log::debug!("{}: cannot write the status: {e}", self.path.display()),
            None => {}
        }
        ctx.add_used(q, head, u32::try_from(total).unwrap_or(u32::MAX))
    }

    /// Runs a parsed request on the device thread.
    fn execute(&mut self, mem: &GuestMemoryMmap, chain: &DescChain, req: Request) -> Outcome {
        let fail = |e: String| {
            log::warn!("{}: {req:?} failed: {e}", self.path.display());
            (S_IOERR, 0)
        };
        match req {
            Request::In { sector, len } => {
                let offset = sector * SECTOR_SIZE;
                match io::iovecs(mem, &chain.writable, 0, len, Dir::Read) {
                    Ok(mut v) => {
                        let (done, r) = io::transfer(&self.file, Dir::Read, &mut v, offset);
                        self.rw_outcome(Dir::Read, offset, done, r)
                    }
                    Err(e) => fail(e),
                }
            }
            Request::Out { sector, len } => {
                let offset = sector * SECTOR_SIZE;
                match io::iovecs(mem, &chain.readable, HEADER_LEN, len, Dir::Write) {
                    Ok(mut v) => {
                        let (done, r) = io::transfer(&self.file, Dir::Write, &mut v, offset);
                        self.rw_outcome(Dir::Write, offset, done, r)
                    }
                    Err(e) => fail(e),
                }
            }
            Request::Flush => {
                BlockStats::add(&self.stats.flushes, 1);
                // Nothing to make durable on a disk the guest cannot write.
                match self.readonly {
                    true => (S_OK, 0),
                    false => match self.file.sync_data() {
                        Ok(()) => (S_OK, 0),
                        Err(e) => fail(format!("fdatasync: {e}")),
                    },
                }
            }
            Request::GetId => {
                let room = chain.writable_len().saturating_sub(1);
                let n = (ID_BYTES as u64).min(room) as usize;
                match chain.write_at(mem, 0, &self.id[..n]) {
                    Ok(()) => (S_OK, n as u64),
                    Err(e) => fail(format!("writing the id: {e}")),
                }
            }
            Request::Discard { sector, sectors } => {
                BlockStats::add(&self.stats.discards, 1);
                let (at, len) = (sector * SECTOR_SIZE, sectors * SECTOR_SIZE);
                match if len == 0 {
                    Ok(())
                } else {
                    io::discard(&self.file, at, len)
                } {
                    Ok(()) => (S_OK, 0),
                    Err(e) => fail(format!("punching a hole of {len} bytes at byte {at}: {e}")),
                }
            }
            Request::WriteZeroes {
                sector,
                sectors,
                unmap,
            } => {
                BlockStats::add(&self.stats.write_zeroes, 1);
                let (at, len) = (sector * SECTOR_SIZE, sectors * SECTOR_SIZE);
                let zeroed = match len {
                    0 => Ok(()),
                    _ => io::write_zeroes(&self.file, at, len, unmap),
                };
                match zeroed {
                    Ok(()) => (S_OK, 0),
                    Err(e) => fail(format!("zeroing {len} bytes at byte {at}: {e}")),
                }
            }
        }
    }
}

/// Where the status byte goes: the last byte of the last device-writable
/// buffer that has one. parse_request made sure there is one.
fn status_addr(chain: &DescChain) -> Option<GuestAddress> {
    chain
        .writable
        .iter()
        .rev()
        .find(|b| b.len > 0)
        .and_then(|b| b.addr.checked_add(u64::from(b.len) - 1))
}

/// For a chain the device refused: writes IOERR into the last byte of its
/// last device-writable buffer (where the driver reads the status), so the
/// driver never mistakes a stale status byte for success. Returns the used
/// length: 1 if the status was written.
pub(super) fn fail_status(mem: &GuestMemoryMmap, descs: &[Descriptor]) -> u32 {
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
