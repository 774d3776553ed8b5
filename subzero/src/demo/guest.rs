//! The exerciser guest (guests/exerciser.S): its parameter block, and a
//! minimal VM to run it in. The VM has no in-kernel irqchip, so HLT exits
//! reach the VMM, and two probe devices count the guest's accesses.

use std::io::Write;
use std::sync::{Arc, Mutex};

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use vm_memory::{ByteValued, Bytes, GuestAddress};

use crate::arch::x86_64::layout::{ports, HIMEM_START, MMIO_DEVICES_START, MMIO_DEVICE_SLOT_SIZE};
use crate::arch::x86_64::regs::BootEntry;
use crate::devices::probe::Probe;
use crate::kvm;
use crate::vmm::builder::{create_vcpu, create_vm, legacy_devices, setup_boot_vcpu, BuildError};
use crate::vmm::{memory, Machine};

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
/// Guest memory for the exerciser VM.
pub const MEMORY: u64 = 32 << 20;

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
    let kvm = kvm::open(false)?;
    let vm = create_vm(&kvm, false)?;
    let mem = memory::create(MEMORY)?;
    memory::register(&vm, &mem)?;
    let write_err = |what, e| {
        BuildError::BootInfo(crate::arch::x86_64::bootinfo::BootInfoError::GuestMemory(
            what, e,
        ))
    };
    let mut text = message.as_bytes().to_vec();
    text.truncate(MESSAGE_MAX - 1);
    text.push(0);
    mem.write_slice(&text, GuestAddress(MESSAGE_START))
        .map_err(|e| write_err("demo message", e))?;
    mem.write_obj(*params, GuestAddress(PARAMS_START))
        .map_err(|e| write_err("demo parameters", e))?;
    mem.write_slice(CODE, GuestAddress(HIMEM_START))
        .map_err(|e| write_err("demo code", e))?;

    let (mut buses, serial, panic_watch) = legacy_devices(None, console)?;
    let pio_probe = Arc::new(Mutex::new(Probe::new(u64::from(PROBE_VALUE))));
    let mmio_probe = Arc::new(Mutex::new(Probe::new(u64::from(PROBE_VALUE))));
    buses
        .pio
        .insert("probe", u64::from(PROBE_PORT), 4, pio_probe.clone())?;
    buses.mmio.insert(
        "probe",
        PROBE_MMIO,
        MMIO_DEVICE_SLOT_SIZE,
        mmio_probe.clone(),
    )?;

    let supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| BuildError::VmIoctl("KVM_GET_SUPPORTED_CPUID", e))?;
    let fd = create_vcpu(&vm, &supported, 0, 1, false)?;
    let entry = BootEntry::Linux64 {
        entry_addr: HIMEM_START,
        boot_params_addr: 0,
    };
    setup_boot_vcpu(&mem, &fd, &entry)?;
    Ok(ExerciserVm {
        machine: Machine {
            vm,
            memory: mem,
            buses: Arc::new(buses),
            vcpus: vec![fd],
            serial,
            panic_watch,
        },
        pio_probe,
        mmio_probe,
    })
}
