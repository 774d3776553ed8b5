//! The exit dispatcher: one small handler per exit kind. It is a pure
//! function of (buses, exit), so unit tests drive it with made-up exits.

use kvm_bindings::{KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN};
use kvm_ioctls::VcpuExit;

pub use crate::bus::Buses;
use crate::bus::{Bus, DeviceAction};
pub use crate::exits::{ExitKind, Space, Target};

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
    /// The VMM stopped it (an API request, or the VMM exiting).
    Stopped,
}

/// What the vCPU does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Re-enter the guest.
    Continue,
    /// Stop the VM.
    Stop(StopReason),
}

/// What [`dispatch`] did with one exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handled {
    /// The exit's kind, for counting.
    pub kind: ExitKind,
    /// The device access, for port-I/O and MMIO exits.
    pub target: Option<Target>,
    /// What the vCPU does next.
    pub outcome: Outcome,
}

impl Handled {
    fn new(kind: ExitKind, outcome: Outcome) -> Self {
        Handled {
            kind,
            target: None,
            outcome,
        }
    }
}

fn device_outcome(action: DeviceAction, reset_how: &'static str) -> Outcome {
    match action {
        DeviceAction::Reset => {
            log::debug!("device asked for a reset");
            Outcome::Stop(StopReason::Reset(reset_how))
        }
        DeviceAction::PowerOff => {
            log::debug!("device asked for a power-off");
            Outcome::Stop(StopReason::PowerOff)
        }
        DeviceAction::None => Outcome::Continue,
    }
}

fn write(bus: &Bus, space: Space, addr: u64, data: &[u8]) -> (Target, Outcome) {
    log::trace!("{space:?} write {addr:#x} <- {data:02x?}");
    let (target, outcome) = match bus.write(addr, data) {
        Some((base, action)) => (
            (base, true),
            device_outcome(action, "guest reset through a device register"),
        ),
        None => {
            log::debug!("unclaimed {space:?} write {addr:#x} <- {data:02x?}");
            ((addr, false), Outcome::Continue)
        }
    };
    let target = Target {
        space,
        addr: target.0,
        claimed: target.1,
        write: true,
    };
    (target, outcome)
}

fn read(bus: &Bus, space: Space, addr: u64, data: &mut [u8]) -> (Target, Outcome) {
    let (addr, claimed) = match bus.read(addr, data) {
        Some(base) => (base, true),
        None => {
            log::debug!("unclaimed {space:?} read {addr:#x}");
            (addr, false)
        }
    };
    let target = Target {
        space,
        addr,
        claimed,
        write: false,
    };
    (target, Outcome::Continue)
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

/// Handles one exit: one small handler per kind.
pub fn dispatch(exit: VcpuExit, buses: &Buses) -> Handled {
    let (kind, (target, outcome)) = match exit {
        VcpuExit::IoOut(port, data) => (
            ExitKind::IoOut,
            write(&buses.pio, Space::Pio, u64::from(port), data),
        ),
        VcpuExit::IoIn(port, data) => (
            ExitKind::IoIn,
            read(&buses.pio, Space::Pio, u64::from(port), data),
        ),
        VcpuExit::MmioWrite(addr, data) => (
            ExitKind::MmioWrite,
            write(&buses.mmio, Space::Mmio, addr, data),
        ),
        VcpuExit::MmioRead(addr, data) => (
            ExitKind::MmioRead,
            read(&buses.mmio, Space::Mmio, addr, data),
        ),
        other => return dispatch_other(other),
    };
    Handled {
        kind,
        target: Some(target),
        outcome,
    }
}

fn dispatch_other(exit: VcpuExit) -> Handled {
    match exit {
        VcpuExit::Hlt => Handled::new(ExitKind::Hlt, Outcome::Continue),
        VcpuExit::Shutdown => Handled::new(
            ExitKind::Shutdown,
            Outcome::Stop(StopReason::Reset("triple fault (KVM_EXIT_SHUTDOWN)")),
        ),
        VcpuExit::SystemEvent(kind, data) => {
            Handled::new(ExitKind::SystemEvent, system_event(kind, data))
        }
        VcpuExit::InternalError => Handled::new(
            ExitKind::InternalError,
            Outcome::Stop(StopReason::Unhandled(
                "KVM_EXIT_INTERNAL_ERROR (KVM could not emulate an instruction)".into(),
            )),
        ),
        VcpuExit::FailEntry(reason, cpu) => Handled::new(
            ExitKind::FailEntry,
            Outcome::Stop(StopReason::Unhandled(format!(
                "KVM_EXIT_FAIL_ENTRY (hardware reason {reason:#x}, host cpu {cpu})"
            ))),
        ),
        VcpuExit::IrqWindowOpen | VcpuExit::Intr => {
            Handled::new(ExitKind::Interrupted, Outcome::Continue)
        }
        other => Handled::new(
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
            .insert("i8042", 0x60, 5, Arc::new(Mutex::new(I8042::default())))
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
        let reset = dispatch(VcpuExit::IoOut(0x64, &[0xfe]), &b);
        assert_eq!(reset.kind, ExitKind::IoOut);
        assert_eq!(
            reset.outcome,
            Outcome::Stop(StopReason::Reset("guest reset through a device register"))
        );
        let want = Target {
            space: Space::Pio,
            addr: 0x60,
            claimed: true,
            write: true,
        };
        assert_eq!(
            reset.target,
            Some(want),
            "target is the owning range's base"
        );
        assert_eq!(
            dispatch(VcpuExit::IoOut(0x600, &[0x34]), &b).outcome,
            Outcome::Stop(StopReason::PowerOff)
        );
        // Unclaimed ports are ignored, read as all ones, and keep their address.
        let ignored = dispatch(VcpuExit::IoOut(0x80, &[1]), &b);
        assert_eq!(ignored.outcome, Outcome::Continue);
        let mut data = [0u8; 2];
        let h = dispatch(VcpuExit::IoIn(0x71, &mut data), &b);
        assert_eq!((h.kind, h.outcome), (ExitKind::IoIn, Outcome::Continue));
        let want = Target {
            space: Space::Pio,
            addr: 0x71,
            claimed: false,
            write: false,
        };
        assert_eq!(h.target, Some(want));
        assert_eq!(data, [0xff, 0xff]);
    }

    #[test]
    fn mmio_round_trip() {
        let (b, probe) = buses();
        let mut data = [0u8; 4];
        let h = dispatch(VcpuExit::MmioRead(0xd000_0010, &mut data), &b);
        assert_eq!(h.kind, ExitKind::MmioRead);
        assert_eq!(
            h.target.map(|t| (t.space, t.addr)),
            Some((Space::Mmio, 0xd000_0000))
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
        let h = dispatch(VcpuExit::InternalError, &b);
        assert_eq!(h.kind, ExitKind::InternalError);
        assert!(
            matches!(h.outcome, Outcome::Stop(StopReason::Unhandled(m)) if m.contains("INTERNAL"))
        );
        assert!(matches!(
            dispatch(VcpuExit::FailEntry(0x7, 1), &b).outcome,
            Outcome::Stop(StopReason::Unhandled(m)) if m.contains("0x7")
        ));
        assert_eq!(
            dispatch(VcpuExit::Shutdown, &b).outcome,
            Outcome::Stop(StopReason::Reset("triple fault (KVM_EXIT_SHUTDOWN)"))
        );
        assert_eq!(
            dispatch(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_SHUTDOWN, &[]), &b).outcome,
            Outcome::Stop(StopReason::PowerOff)
        );
        assert_eq!(
            dispatch(VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_CRASH, &[]), &b).outcome,
            Outcome::Stop(StopReason::Crash)
        );
        let h = dispatch(VcpuExit::Hlt, &b);
        assert_eq!(
            (h.kind, h.target, h.outcome),
            (ExitKind::Hlt, None, Outcome::Continue)
        );
    }
}
