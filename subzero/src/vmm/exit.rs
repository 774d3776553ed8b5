//! The exit dispatcher: one small handler per exit kind. It is a pure
//! function of (buses, exit), so unit tests drive it with made-up exits.

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::VcpuExit;

use crate::bus::{Bus, DeviceAction};

/// The two address spaces a vCPU's accesses go to.
#[derive(Default, Clone)]
pub struct Buses {
    /// Port I/O.
    pub pio: Bus,
    /// Memory-mapped I/O.
    pub mmio: Bus,
}

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

/// Why the VM stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The guest powered off.
    PowerOff,
    /// The guest reset the machine; the string says how.
    Reset(&'static str),
    /// The guest reported a crash through KVM.
    Crash,
    /// An exit Subzero cannot handle; the string describes it.
    Unhandled(String),
}

/// What the vCPU does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Re-enter the guest.
    Continue,
    /// Stop the VM.
    Stop(StopReason),
}

fn device_outcome(action: Option<DeviceAction>, reset_how: &'static str) -> Outcome {
    if let Some(a @ (DeviceAction::Reset | DeviceAction::PowerOff)) = action {
        log::debug!("device asked for {a:?}");
    }
    match action {
        Some(DeviceAction::Reset) => Outcome::Stop(StopReason::Reset(reset_how)),
        Some(DeviceAction::PowerOff) => Outcome::Stop(StopReason::PowerOff),
        Some(DeviceAction::None) | None => Outcome::Continue,
    }
}

fn io_out(buses: &Buses, port: u16, data: &[u8]) -> Outcome {
    log::trace!("port write {port:#x} <- {data:02x?}");
    let action = buses.pio.write(u64::from(port), data);
    if action.is_none() {
        log::trace!("unclaimed port write {port:#x} <- {data:02x?}");
    }
    device_outcome(action, "guest reset through a port write")
}

fn io_in(buses: &Buses, port: u16, data: &mut [u8]) -> Outcome {
    if !buses.pio.read(u64::from(port), data) {
        log::trace!("unclaimed port read {port:#x}");
    }
    Outcome::Continue
}

fn mmio_write(buses: &Buses, addr: u64, data: &[u8]) -> Outcome {
    let action = buses.mmio.write(addr, data);
    if action.is_none() {
        log::debug!("unclaimed MMIO write {addr:#x} <- {data:02x?}");
    }
    device_outcome(action, "guest reset through an MMIO write")
}

fn mmio_read(buses: &Buses, addr: u64, data: &mut [u8]) -> Outcome {
    if !buses.mmio.read(addr, data) {
        log::debug!("unclaimed MMIO read {addr:#x}");
    }
    Outcome::Continue
}

fn system_event(kind: u32, data: &[u64]) -> Outcome {
    match kind {
        KVM_SYSTEM_EVENT_SHUTDOWN => Outcome::Stop(StopReason::PowerOff),
        KVM_SYSTEM_EVENT_RESET => Outcome::Stop(StopReason::Reset("KVM system reset event")),
        KVM_SYSTEM_EVENT_CRASH => Outcome::Stop(StopReason::Crash),
        other => Outcome::Stop(StopReason::Unhandled(format!(
            "KVM_EXIT_SYSTEM_EVENT type {other} data {data:x?}"
        ))),
    }
}

/// Handles one exit. The caller counts it under the returned kind.
pub fn dispatch(exit: VcpuExit, buses: &Buses) -> (ExitKind, Outcome) {
    match exit {
        VcpuExit::IoOut(port, data) => (ExitKind::IoOut, io_out(buses, port, data)),
        VcpuExit::IoIn(port, data) => (ExitKind::IoIn, io_in(buses, port, data)),
        VcpuExit::MmioWrite(addr, data) => (ExitKind::MmioWrite, mmio_write(buses, addr, data)),
        VcpuExit::MmioRead(addr, data) => (ExitKind::MmioRead, mmio_read(buses, addr, data)),
        VcpuExit::Hlt => (ExitKind::Hlt, Outcome::Continue),
        VcpuExit::Shutdown => (
            ExitKind::Shutdown,
            Outcome::Stop(StopReason::Reset("triple fault (KVM_EXIT_SHUTDOWN)")),
        ),
        VcpuExit::SystemEvent(kind, data) => (ExitKind::SystemEvent, system_event(kind, data)),
        VcpuExit::InternalError => (
            ExitKind::InternalError,
            Outcome::Stop(StopReason::Unhandled(
                "KVM_EXIT_INTERNAL_ERROR (KVM could not emulate an instruction)".into(),
            )),
        ),
        VcpuExit::FailEntry(reason, cpu) => (
            ExitKind::FailEntry,
            Outcome::Stop(StopReason::Unhandled(format!(
                "KVM_EXIT_FAIL_ENTRY (hardware reason {reason:#x}, host cpu {cpu})"
            ))),
        ),
        VcpuExit::IrqWindowOpen | VcpuExit::Intr => (ExitKind::Interrupted, Outcome::Continue),
        other => (
            ExitKind::Other,
            Outcome::Stop(StopReason::Unhandled(format!("unexpected exit {other:?}"))),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::devices::acpi_pm::AcpiPm;
    use crate::devices::i8042::I8042;
    use crate::devices::probe::Probe;

    fn buses() -> (Buses, Arc<Mutex<Probe>>) {
        let probe = Arc::new(Mutex::new(Probe::new(0xabcd)));
        let mut b = Buses::default();
        b.pio
            .insert("i8042", 0x60, 5, Arc::new(Mutex::new(I8042)))
            .unwrap();
        b.pio
            .insert("acpi-pm", 0x600, 4, Arc::new(Mutex::new(AcpiPm)))
            .unwrap();
        b.mmio
            .insert("probe", 0xd000_0000, 0x1000, probe.clone())
            .unwrap();
        (b, probe)
    }

    #[test]
    fn port_writes_reach_devices_and_can_stop_the_vm() {
        let (b, _) = buses();
        assert_eq!(
            dispatch(VcpuExit::IoOut(0x64, &[0xfe]), &b),
            (
                ExitKind::IoOut,
                Outcome::Stop(StopReason::Reset("guest reset through a port write"))
            )
        );
        assert_eq!(
            dispatch(VcpuExit::IoOut(0x600, &[0x34]), &b).1,
            Outcome::Stop(StopReason::PowerOff)
        );
        // Unclaimed ports are ignored, and read as all ones.
        assert_eq!(
            dispatch(VcpuExit::IoOut(0x80, &[1]), &b).1,
            Outcome::Continue
        );
        let mut data = [0u8; 2];
        assert_eq!(
            dispatch(VcpuExit::IoIn(0x71, &mut data), &b),
            (ExitKind::IoIn, Outcome::Continue)
        );
        assert_eq!(data, [0xff, 0xff]);
    }

    #[test]
    fn mmio_round_trip() {
        let (b, probe) = buses();
        let mut data = [0u8; 4];
        assert_eq!(
            dispatch(VcpuExit::MmioRead(0xd000_0010, &mut data), &b).0,
            ExitKind::MmioRead
        );
        assert_eq!(u32::from_le_bytes(data), 0xabcd);
        dispatch(VcpuExit::MmioWrite(0xd000_0000, &[7, 0, 0, 0]), &b);
        let counts = probe.lock().unwrap().counts();
        assert_eq!(
            (counts.reads, counts.writes, counts.last_written),
            (1, 1, 7)
        );
    }

    #[test]
    fn fatal_exits_stop_with_a_reason() {
        let (b, _) = buses();
        let (kind, out) = dispatch(VcpuExit::InternalError, &b);
        assert_eq!(kind, ExitKind::InternalError);
        assert!(matches!(out, Outcome::Stop(StopReason::Unhandled(m)) if m.contains("INTERNAL")));
        assert!(matches!(
            dispatch(VcpuExit::FailEntry(0x7, 1), &b).1,
            Outcome::Stop(StopReason::Unhandled(m)) if m.contains("0x7")
        ));
        assert_eq!(
            dispatch(VcpuExit::Shutdown, &b).1,
            Outcome::Stop(StopReason::Reset("triple fault (KVM_EXIT_SHUTDOWN)"))
        );
        assert_eq!(
            dispatch(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, &[]), &b).1,
            Outcome::Stop(StopReason::PowerOff)
        );
        assert_eq!(
            dispatch(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_CRASH, &[]), &b).1,
            Outcome::Stop(StopReason::Crash)
        );
        assert_eq!(
            dispatch(VcpuExit::Hlt, &b),
            (ExitKind::Hlt, Outcome::Continue)
        );
    }
}
