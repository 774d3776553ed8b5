//! The exerciser guest (guests/exerciser.S): its parameter block, and a
//! minimal VM to run it in. The VM has no in-kernel irqchip, so HLT exits
//! reach the VMM, and two probe devices count the guest's accesses.

use std::io::Write;
use std::sync::{Arc, Mutex};

use vm_memory::ByteValued;

use crate::arch::x86_64::layout::{ports, MMIO_DEVICES_START, MMIO_DEVICE_SLOT_SIZE};
use crate::devices::probe::Probe;
use crate::vmm::builder::{build_tiny, BuildError};
use crate::vmm::Machine;

/// The guest code, assembled by build.rs.
pub const CODE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/exerciser.bin"));
/// Where the guest reads its parameters (fixed in exerciser.S).
pub const PARAMS_START: u64 = 0x5000;
/// Where the message goes.
pub const MESSAGE_START: u64 = 0x5100;
/// Longest message, NUL included.
pub const MESSAGE_MAX: usize = 0xf00;
/// Port of the port-I/O probe.
pub const PROBE_PORT: u16 = 0x510;
/// Address of the MMIO probe.
pub const PROBE_MMIO: u64 = MMIO_DEVICES_START;
/// What the probes answer to reads.
pub const PROBE_VALUE: u32 = 0x5ab0_c0de;

/// What the exerciser does, in the layout exerciser.S reads.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Params {
    /// Port for the I/O round trips.
    pub pio_port: u64,
    /// INs from `pio_port`.
    pub pio_reads: u64,
    /// OUTs to `pio_port`.
    pub pio_writes: u64,
    /// Address for the MMIO round trips (writes go to +8).
    pub mmio_addr: u64,
    /// Loads from `mmio_addr`.
    pub mmio_reads: u64,
    /// Stores to `mmio_addr + 8`.
    pub mmio_writes: u64,
    /// HLT instructions.
    pub halts: u64,
    /// Port the message is printed to.
    pub serial_port: u64,
    /// Port written to power off.
    pub poweroff_port: u64,
    /// Value written to power off.
    pub poweroff_value: u64,
    /// Address of the NUL-terminated message.
    pub message: u64,
    /// CPUID (leaf 0) instructions, after the HLTs.
    pub cpuids: u64,
    /// RDMSRs of `msr_index`, after the CPUIDs.
    pub rdmsrs: u64,
    /// The MSR read (IA32_APIC_BASE by default, which KVM always
    /// intercepts).
    pub msr_index: u64,
}

// SAFETY: Params is repr(C), made only of u64 fields, so it has no padding
// and every bit pattern is valid.
unsafe impl ByteValued for Params {}

impl Params {
    /// No exits but the message and the power-off.
    pub fn new() -> Self {
        Params {
            pio_port: u64::from(PROBE_PORT),
            mmio_addr: PROBE_MMIO,
            serial_port: u64::from(ports::SERIAL_COM1),
            poweroff_port: u64::from(ports::ACPI_SLEEP_CONTROL),
            poweroff_value: u64::from((ports::ACPI_S5_SLEEP_TYPE << 2) | 0x20),
            message: MESSAGE_START,
            msr_index: 0x1b,
            ..Default::default()
        }
    }
}

/// The exerciser VM and its probes.
pub struct ExerciserVm {
    /// The VM, ready to run.
    pub machine: Machine,
    /// The port-I/O probe.
    pub pio_probe: Arc<Mutex<Probe>>,
    /// The MMIO probe.
    pub mmio_probe: Arc<Mutex<Probe>>,
}

/// Builds a one-vCPU VM running the exerciser with `params` and `message`,
/// its serial output going to `console`.
pub fn build(
    params: &Params,
    message: &str,
    console: Box<dyn Write + Send>,
) -> Result<ExerciserVm, BuildError> {
    let mut text = message.as_bytes().to_vec();
    text.truncate(MESSAGE_MAX - 1);
    text.push(0);
    let data: [(u64, &[u8]); 2] = [(MESSAGE_START, &text), (PARAMS_START, params.as_slice())];
    let mut tiny = build_tiny(false, CODE, &data, console)?;
    let pio_probe = Arc::new(Mutex::new(Probe::new(u64::from(PROBE_VALUE))));
    let mmio_probe = Arc::new(Mutex::new(Probe::new(u64::from(PROBE_VALUE))));
    tiny.buses
        .pio
        .insert("probe", u64::from(PROBE_PORT), 4, pio_probe.clone())?;
    tiny.buses.mmio.insert(
        "probe",
        PROBE_MMIO,
        MMIO_DEVICE_SLOT_SIZE,
        mmio_probe.clone(),
    )?;
    Ok(ExerciserVm {
        machine: tiny.into_machine(),
        pio_probe,
        mmio_probe,
    })
}
