//! The asynchronous block engine: io_uring, with many requests in flight.
//!
//! The device thread turns each read, write and flush into one submission
//! (READV, WRITEV on iovecs into guest memory, FSYNC with DATASYNC) and goes
//! back to its queues; the kernel completes them in any order and signals
//! an eventfd the device thread watches, which then puts the chains on the
//! used rings. A flush is submitted with IO_DRAIN: it starts only once
//! every request submitted before it has completed, and nothing submitted
//! after it starts before it is done, so it covers every write the guest
//! saw complete before it.
//!
//! While anything is in flight the engine holds a reference to guest
//! memory, so the kernel never writes into memory that was unmapped; on
//! reset and drop it waits for everything in flight.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use io_uring::{opcode, squeue, types, IoUring};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::io::{Dir, IoVecs};

/// Most requests in flight at once (and the submission queue's size).
pub const MAX_IN_FLIGHT: usize = 256;

/// What a submission does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// READV or WRITEV of `len` bytes at byte `offset` of the image.
    Rw {
        /// Direction.
        dir: Dir,
        /// Byte offset in the image.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// FSYNC (DATASYNC), drained behind everything before it.
    Flush,
}

/// A request in flight: what finishing it needs.
#[derive(Debug)]
pub struct Pending {
    /// Queue it came from.
    pub queue: u16,
    /// Head of its chain.
    pub head: u16,
    /// The operation.
    pub op: Op,
    /// Its buffers (empty for a flush). The kernel reads them while the
    /// request is in flight, so they live here until it completes.
    pub iovs: IoVecs,
    /// Guest address of the status byte.
    pub status: vm_memory::GuestAddress,
}

/// The engine: a ring, its completion eventfd and the requests in flight.
pub struct Uring {
    ring: IoUring,
    eventfd: EventFd,
    slots: Vec<Option<Pending>>,
    free: Vec<usize>,
    unsubmitted: usize,
    mem: Option<GuestMemoryMmap>,
    peak: usize,
}

impl Uring {
    /// Sets up a ring and its eventfd. Fails where io_uring is missing or
    /// refused (old kernel, `kernel.io_uring_disabled`, a seccomp policy).
    pub fn new() -> io::Result<Uring> {
        let ring = IoUring::new(MAX_IN_FLIGHT as u32)?;
        let eventfd = EventFd::new(EFD_NONBLOCK)?;
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        Ok(Uring {
            ring,
            eventfd,
            slots: (0..MAX_IN_FLIGHT).map(|_| None).collect(),
            free: (0..MAX_IN_FLIGHT).rev().collect(),
            unsubmitted: 0,
            mem: None,
            peak: 0,
        })
    }

    /// The eventfd that becomes readable when requests complete.
    pub fn eventfd(&self) -> RawFd {
        self.eventfd.as_raw_fd()
    }

    /// Makes the eventfd readable, so the device thread looks at the
    /// completions reaped elsewhere.
    pub fn wake(&self) {
        let _ = self.eventfd.write(1);
    }

    /// Whether another request can be taken.
    pub fn has_room(&self) -> bool {
        !self.free.is_empty()
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        MAX_IN_FLIGHT - self.free.len()
    }

    /// Most requests that were in flight at once.
    pub fn peak(&self) -> usize {
        self.peak
    }

    /// Queues `pending` for submission; `mem` is the memory its iovecs
    /// point into. Gives it back if there is no room.
    pub fn push(
        &mut self,
        fd: RawFd,
        mem: &GuestMemoryMmap,
        pending: Pending,
    ) -> Result<(), Pending> {
        let Some(slot) = self.free.pop() else {
            return Err(pending);
        };
        let target = types::Fd(fd);
        let entry = match pending.op {
            Op::Rw { dir, offset, .. } => {
                let (ptr, n) = (pending.iovs.0.as_ptr(), pending.iovs.0.len() as u32);
                match dir {
                    Dir::Read => opcode::Readv::new(target, ptr, n).offset(offset).build(),
                    Dir::Write => opcode::Writev::new(target, ptr, n).offset(offset).build(),
                }
            }
            Op::Flush => opcode::Fsync::new(target)
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .flags(squeue::Flags::IO_DRAIN),
        }
        .user_data(slot as u64);
        self.slots[slot] = Some(pending);
        if self.mem.is_none() {
            self.mem = Some(mem.clone());
        }
        // The queue has MAX_IN_FLIGHT entries and at most that many
        // requests exist, but entries not yet consumed by the kernel still
        // count: submit them and retry once.
        // SAFETY: the iovecs the entry points to live in `self.slots`
        // until its completion is reaped, and point into guest memory that
        // `self.mem` keeps mapped until then.
        let mut pushed = unsafe { self.ring.submission().push(&entry).is_ok() };
        if !pushed {
            let _ = self.submit();
            // SAFETY: as above.
            pushed = unsafe { self.ring.submission().push(&entry).is_ok() };
        }
        if !pushed {
            self.free.push(slot);
            return Err(self.slots[slot].take().expect("just stored"));
        }
        self.unsubmitted += 1;
        self.peak = self.peak.max(self.in_flight());
        Ok(())
    }

    /// Hands the queued entries to the kernel, then takes the completions
    /// that are already there: a read or write the page cache serves
    /// completes inside the submission, and is finished at once instead of
    /// after a trip through the eventfd. The eventfd is quiet meanwhile.
    pub fn submit_and_reap(&mut self, out: &mut Vec<(Pending, i32)>) -> io::Result<()> {
        if self.unsubmitted == 0 {
            return Ok(());
        }
        self.ring.completion().disable_eventfd();
        let r = self.submit();
        self.take_completions(out);
        self.ring.completion().enable_eventfd();
        // A completion that came between the first look and re-enabling
        // signalled nothing: look again.
        self.take_completions(out);
        r
    }

    /// Hands the queued entries to the kernel.
    pub fn submit(&mut self) -> io::Result<()> {
        if self.unsubmitted == 0 {
            return Ok(());
        }
        loop {
            match self.ring.submit() {
                Ok(_) => {
                    self.unsubmitted = 0;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Takes every completion the kernel has posted, with its result (bytes
    /// moved, or a negative errno).
    pub fn reap(&mut self, out: &mut Vec<(Pending, i32)>) {
        let _ = self.eventfd.read();
        self.take_completions(out);
    }

    /// Takes the completions posted so far, leaving the eventfd as it is.
    fn take_completions(&mut self, out: &mut Vec<(Pending, i32)>) {
        for cqe in self.ring.completion() {
            let slot = cqe.user_data() as usize;
            if let Some(p) = self.slots.get_mut(slot).and_then(Option::take) {
                self.free.push(slot);
                out.push((p, cqe.result()));
            }
        }
        if self.in_flight() == 0 {
            self.mem = None;
        }
    }

    /// Submits what is queued and waits until nothing is in flight;
    /// returns every completion.
    pub fn wait_all(&mut self, out: &mut Vec<(Pending, i32)>) {
        if let Err(e) = self.submit() {
            log::error!("io_uring submit failed: {e}; waiting for what is in flight");
        }
        while self.in_flight() > 0 {
            let before = out.len();
            self.reap(out);
            if out.len() > before {
                continue;
            }
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Nothing else can make the kernel finish: give up on
                    // them only if the ring itself is broken.
                    log::error!(
                        "io_uring wait failed: {e}; {} requests lost",
                        self.in_flight()
                    );
                    return;
                }
            }
        }
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        let mut done = Vec::new();
        self.wait_all(&mut done);
        if self.in_flight() > 0 {
            // The kernel may still write into guest memory: keep it mapped.
            std::mem::forget(self.mem.take());
        }
    }
}
