//! The devices every VM has, on the port-I/O bus: COM1, the i8042 keyboard
//! controller and the ACPI PM registers, with their interrupts as irqfds.

use std::io::Write;
use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::builder::BuildError;
use super::exit::Buses;
use crate::arch::x86_64::layout::ports;
use crate::devices::acpi_pm::AcpiPm;
use crate::devices::i8042::{I8042State, I8042};
use crate::devices::serial::{ConsoleOut, IrqTrigger, PanicWatch, SerialDevice, UartState};

/// The legacy devices of one VM.
pub struct Legacy {
    /// The buses, with the devices on them.
    pub buses: Buses,
    /// COM1, for console input.
    pub serial: Arc<Mutex<SerialDevice>>,
    /// The panic banner watch on COM1's output.
    pub panic_watch: PanicWatch,
    /// The keyboard controller, for SendCtrlAltDel.
    pub i8042: Arc<Mutex<I8042>>,
}

/// An irqfd on `gsi` when `vm` is given; no interrupt otherwise (the
/// embedded guests' VMs have no irqchip).
fn irq(vm: Option<&VmFd>, gsi: u32, what: &'static str) -> Result<IrqTrigger, BuildError> {
    let Some(vm) = vm else {
        return Ok(IrqTrigger::None);
    };
    let evt = EventFd::new(EFD_NONBLOCK).map_err(BuildError::EventFd)?;
    vm.register_irqfd(&evt, gsi)
        .map_err(|e| BuildError::VmIoctl(what, e))?;
    Ok(IrqTrigger::Eventfd(evt))
}

/// Creates the legacy devices writing the console to `console`, with the
/// state of a snapshot's COM1 and i8042 when `saved` is given.
pub fn legacy_devices(
    vm: Option<&VmFd>,
    console: Box<dyn Write + Send>,
    saved: Option<(&UartState, &I8042State)>,
) -> Result<Legacy, BuildError> {
    let com1_irq = irq(vm, ports::SERIAL_COM1_IRQ, "KVM_IRQFD (serial)")?;
    let kbd_irq = irq(vm, ports::I8042_IRQ, "KVM_IRQFD (i8042)")?;
    let panic_watch = PanicWatch::default();
    let out = ConsoleOut::new(console, panic_watch.clone());
    let (serial, i8042) = match saved {
        Some((uart, kbd)) => (
            SerialDevice::from_state(com1_irq, out, uart).map_err(BuildError::Restore)?,
            I8042::from_state(kbd_irq, kbd.clone()),
        ),
        None => (SerialDevice::new(com1_irq, out), I8042::new(kbd_irq)),
    };
    let serial = Arc::new(Mutex::new(serial));
    let i8042 = Arc::new(Mutex::new(i8042));
    let mut buses = Buses::default();
    buses
        .pio
        .insert("serial", u64::from(ports::SERIAL_COM1), 8, serial.clone())?;
    buses.pio.insert(
        "i8042",
        u64::from(ports::I8042_DATA),
        u64::from(ports::I8042_COMMAND - ports::I8042_DATA + 1),
        i8042.clone(),
    )?;
    buses.pio.insert(
        "acpi-pm",
        u64::from(ports::ACPI_PM_BASE),
        u64::from(ports::ACPI_PM_LEN),
        Arc::new(Mutex::new(AcpiPm)),
    )?;
    Ok(Legacy {
        buses,
        serial,
        panic_watch,
        i8042,
    })
}
