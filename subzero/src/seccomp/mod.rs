//! Seccomp filters: each Subzero thread allows only the system calls its
//! kind of work needs, so that a guest that takes over a device or a vCPU
//! thread cannot open files, start programs or reach the network.
//!
//! The filters are built with seccompiler (rust-vmm) from the lists in
//! [`rules`], one per [`ThreadKind`]. [`install`] compiles them all and sets
//! up the SIGSYS handler; each thread then calls [`enter`] as it starts. A
//! forbidden call raises SIGSYS (`SECCOMP_RET_TRAP`), and the handler prints
//! which thread made which call before the process exits with status
//! [`EXIT_BAD_SYSCALL`] (Firecracker's).
//!
//! Filters stack: a thread started by a filtered thread keeps its parent's
//! filter and adds its own, so the main thread's list holds every other
//! list (see [`rules::allowed`]).

mod names;
pub mod rules;
mod sigsys;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter};

pub use sigsys::{on_violation, EXIT_BAD_SYSCALL};

/// The kinds of thread, each with its own filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ThreadKind {
    /// The main thread: builds VMs, serves the event loop, takes snapshots.
    Vmm,
    /// A vCPU: KVM_RUN and the devices emulated on its exits.
    Vcpu,
    /// A virtio-blk device thread: reads and writes its disk image.
    Block,
    /// A virtio-net device thread: reads and writes its TAP.
    Net,
    /// A virtio-vsock device thread: Unix sockets to host programs.
    Vsock,
    /// A virtio-rng device thread: getrandom.
    Rng,
    /// The API server and its connection threads.
    Api,
    /// The console threads: guest output to stdout, stdin to the guest.
    Console,
    /// The live statistics server (`run --stats-socket`) and its clients.
    Stats,
    /// The reader of KVM's tracepoints (`--stats`): polls and drains the
    /// vCPUs' perf ring buffers.
    Trace,
}

impl ThreadKind {
    /// Every kind.
    pub const ALL: [ThreadKind; 10] = [
        ThreadKind::Vmm,
        ThreadKind::Vcpu,
        ThreadKind::Block,
        ThreadKind::Net,
        ThreadKind::Vsock,
        ThreadKind::Rng,
        ThreadKind::Api,
        ThreadKind::Console,
        ThreadKind::Stats,
        ThreadKind::Trace,
    ];

    /// The filter's name in messages.
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Block => "virtio-blk",
            ThreadKind::Net => "virtio-net",
            ThreadKind::Vsock => "virtio-vsock",
            ThreadKind::Rng => "virtio-rng",
            ThreadKind::Api => "api",
            ThreadKind::Console => "console",
            ThreadKind::Stats => "stats",
            ThreadKind::Trace => "hw-trace",
        }
    }

    /// The kind of a virtio device's thread, by its virtio device ID.
    pub fn for_virtio(device_type: u32) -> ThreadKind {
        match device_type {
            1 => ThreadKind::Net,
            2 => ThreadKind::Block,
            4 => ThreadKind::Rng,
            19 => ThreadKind::Vsock,
            // An unknown device gets the strictest device filter.
            _ => ThreadKind::Rng,
        }
    }
}

/// Why the filters could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// seccompiler refused a rule or could not build the program.
    #[error("building the {0} seccomp filter: {1}")]
    Build(&'static str, seccompiler::BackendError),
    /// The kernel refused the filter.
    #[error("installing the {0} seccomp filter: {1}")]
    Apply(&'static str, seccompiler::Error),
    /// SIGSYS handler setup failed.
    #[error("installing the SIGSYS handler: {0}")]
    Handler(std::io::Error),
}

/// The compiled filters: each kind's, and the one that makes clone3 fail
/// with ENOSYS (see [`rules::clone3_fallback`]).
struct Filters {
    by_kind: BTreeMap<ThreadKind, BpfProgram>,
    clone3: BpfProgram,
}

static FILTERS: OnceLock<Filters> = OnceLock::new();
/// Whether threads filter themselves once [`install`] has run (cleared
/// only by the exit benchmark, between the runs it filters).
static ACTIVE: AtomicBool = AtomicBool::new(true);

/// Whether the filters let threads drive passthrough devices (set before
/// [`install`]).
static PASSTHROUGH: AtomicBool = AtomicBool::new(false);

/// Makes the filters [`install`] compiles allow what passthrough devices
/// need: VFIO ioctls on the main and vCPU threads, and on vCPU threads
/// pread/pwrite (VFIO regions) and the VM ioctls that move a BAR's memory
/// slot or an MSI vector's route and irqfd. Call it before [`install`]
/// for a VM with `--device`; other VMs keep the narrower filters.
pub fn allow_passthrough() {
    PASSTHROUGH.store(true, Ordering::Release);
}

fn passthrough_allowed() -> bool {
    PASSTHROUGH.load(Ordering::Acquire)
}

/// Compiles every filter and installs the SIGSYS handler. Until this is
/// called, [`enter`] does nothing: tests and library users run unfiltered.
pub fn install() -> Result<(), SeccompError> {
    if FILTERS.get().is_some() {
        return Ok(());
    }
    let arch = seccompiler::TargetArch::x86_64;
    let mut by_kind = BTreeMap::new();
    for kind in ThreadKind::ALL {
        let filter = SeccompFilter::new(
            rules::allowed(kind).map_err(|e| SeccompError::Build(kind.name(), e))?,
            SeccompAction::Trap,
            SeccompAction::Allow,
            arch,
        )
        .map_err(|e| SeccompError::Build(kind.name(), e))?;
        let bpf = BpfProgram::try_from(filter).map_err(|e| SeccompError::Build(kind.name(), e))?;
        by_kind.insert(kind, bpf);
    }
    let clone3 = BpfProgram::try_from(rules::clone3_fallback(arch))
        .map_err(|e| SeccompError::Build("clone3", e))?;
    sigsys::install_handler().map_err(SeccompError::Handler)?;
    one_malloc_arena();
    let _ = FILTERS.set(Filters { by_kind, clone3 });
    Ok(())
}

/// Makes every thread allocate from glibc's main arena. A thread's own
/// arena, when it shrinks, makes glibc open /proc/sys/vm/overcommit_memory
/// from that thread, which only the main thread's filter allows. Call
/// before any other thread starts.
fn one_malloc_arena() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets a malloc tunable.
    if unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) } != 1 {
        log::warn!("seccomp: cannot limit malloc to one arena; a thread may trap on openat");
    }
}

/// Turns filtering of threads that start from now on on or off, after
/// [`install`]. For the exit benchmark, which measures what the filters
/// cost by running the same VM with and without them in one process.
pub fn set_active(on: bool) {
    ACTIVE.store(on, Ordering::Release);
}

/// Filters the calling thread as a `kind` thread, for the rest of its life.
/// Does nothing unless [`install`] has run.
pub fn enter(kind: ThreadKind) -> Result<(), SeccompError> {
    let Some(filters) = FILTERS.get().filter(|_| ACTIVE.load(Ordering::Acquire)) else {
        return Ok(());
    };
    sigsys::name_thread(None);
    // The kernel runs every stacked filter on each call, the inherited ones
    // too, and the strictest answer wins.
    seccompiler::apply_filter(&filters.clone3).map_err(|e| SeccompError::Apply("clone3", e))?;
    seccompiler::apply_filter(&filters.by_kind[&kind])
        .map_err(|e| SeccompError::Apply(kind.name(), e))?;
    sigsys::name_thread(Some(kind));
    Ok(())
}

/// [`enter`] for a thread that has no one to return an error to: a thread
/// that cannot be confined must not run, so the process exits.
pub fn enter_or_exit(kind: ThreadKind) {
    if let Err(e) = enter(kind) {
        log::error!("{e}; stopping, since this thread cannot be confined");
        sigsys::exit_now(EXIT_BAD_SYSCALL);
    }
}

/// For a thread started by a thread that entered `kind` itself: it already
/// runs under that filter, inherited, so this only names it for the SIGSYS
/// message instead of stacking the same filter again.
pub fn enter_inherited(kind: ThreadKind) {
    if FILTERS.get().is_some() && ACTIVE.load(Ordering::Acquire) {
        sigsys::name_thread(Some(kind));
    }
}
