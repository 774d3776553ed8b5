//! The exit vocabulary: what kind of exit a vCPU made and which device
//! access it was. The VMM classifies exits in these terms and `stats`
//! counts them, so both depend on this module and not on each other.

/// The reason for an exit, as counted and reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ExitKind {
    /// Port-I/O read.
    IoIn,
    /// Port-I/O write.
    IoOut,
    /// MMIO read.
    MmioRead,
    /// MMIO write.
    MmioWrite,
    /// HLT (only without the in-kernel irqchip).
    Hlt,
    /// Triple fault or similar shutdown.
    Shutdown,
    /// KVM system event (reset, shutdown, crash).
    SystemEvent,
    /// KVM could not emulate or deliver something.
    InternalError,
    /// VM entry failed.
    FailEntry,
    /// The run was interrupted (signal or immediate exit).
    Interrupted,
    /// Anything else.
    Other,
}

impl ExitKind {
    /// Every kind, in report order.
    pub const ALL: [ExitKind; 11] = [
        ExitKind::IoIn,
        ExitKind::IoOut,
        ExitKind::MmioRead,
        ExitKind::MmioWrite,
        ExitKind::Hlt,
        ExitKind::Shutdown,
        ExitKind::SystemEvent,
        ExitKind::InternalError,
        ExitKind::FailEntry,
        ExitKind::Interrupted,
        ExitKind::Other,
    ];

    /// Short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            ExitKind::IoIn => "io-in",
            ExitKind::IoOut => "io-out",
            ExitKind::MmioRead => "mmio-read",
            ExitKind::MmioWrite => "mmio-write",
            ExitKind::Hlt => "hlt",
            ExitKind::Shutdown => "shutdown",
            ExitKind::SystemEvent => "system-event",
            ExitKind::InternalError => "internal-error",
            ExitKind::FailEntry => "fail-entry",
            ExitKind::Interrupted => "interrupted",
            ExitKind::Other => "other",
        }
    }
}

/// Which bus an access went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Space {
    /// Port I/O.
    Pio,
    /// MMIO.
    Mmio,
}

/// Where a port-I/O or MMIO exit went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    /// The bus.
    pub space: Space,
    /// Base of the owning device's range, or the exact address when no
    /// device claims it.
    pub addr: u64,
    /// Whether a device owns the address.
    pub claimed: bool,
    /// Write (true) or read (false).
    pub write: bool,
}
