//! From a [`VmConfig`] to a [`Machine`]: KVM VM, memory, devices, boot
//! structures and configured vCPUs.

use std::io::Write;
use std::sync::{Arc, Mutex};

use kvm_bindings::{kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestMemoryMmap};

use super::config::{check_memory, check_vcpus, host_ram, ConfigError, DevicesConfig, VmConfig};
use super::exit::Buses;
use super::legacy::{legacy_devices, Legacy};
use super::machine::Machine;
use super::memory::{self, MemoryError};
use super::pci;
use super::snapshot::VmSnapshot;
use super::virtio::{VirtioDevices, VirtioSetupError};
use crate::arch::x86_64::acpi::{create_acpi_tables, AcpiConfig, AcpiError};
use crate::arch::x86_64::boot::{self, BootError, KernelKind};
use crate::arch::x86_64::bootinfo::{self, BootInfo, BootInfoError};
use crate::arch::x86_64::cpuid::{enable_tsc_deadline, setup_cpuid, CpuidError, VcpuTopology};
use crate::arch::x86_64::e820::{low_ram_end, memory_map};
use crate::arch::x86_64::layout::{self, CMDLINE_START};
use crate::arch::x86_64::mptable::{self, setup_mptable, MptableError};
use crate::arch::x86_64::msr::{setup_msrs, MsrError};
use crate::arch::x86_64::regs::{self, BootEntry, RegsError};
use crate::arch::x86_64::reset_vector;
use crate::bus::BusError;
use crate::devices::i8042::I8042;
use crate::devices::serial::{PanicWatch, SerialDevice};
use crate::devices::virtio::block::{Block, BlockError, BlockOptions};
use crate::devices::virtio::net::{parse_mac, Net, NetError};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vsock::{Vsock, VsockError};
use crate::devices::virtio::VirtioDevice;
use crate::kvm::{self, KvmError};

/// Why a VM could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// KVM unavailable.
    #[error(transparent)]
    Kvm(#[from] KvmError),
    /// A VM-level KVM call failed.
    #[error("{0} failed: {1}")]
    VmIoctl(&'static str, #[source] kvm_ioctls::Error),
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Kernel, initrd or command line.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// Zero page or PVH start info.
    #[error(transparent)]
    BootInfo(#[from] BootInfoError),
    /// ACPI tables.
    #[error("building the ACPI tables failed: {0}")]
    Acpi(#[from] AcpiError),
    /// MP table.
    #[error("building the MP table failed: {0}")]
    Mptable(#[from] MptableError),
    /// CPUID.
    #[error("vCPU {0}: {1}")]
    Cpuid(usize, #[source] CpuidError),
    /// MSRs.
    #[error("vCPU {0}: {1}")]
    Msr(usize, #[source] MsrError),
    /// Registers.
    #[error("vCPU {0}: {1}")]
    Regs(usize, #[source] RegsError),
    /// Device placement.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A `--device` could not be passed through.
    #[error(transparent)]
    Passthrough(#[from] crate::devices::vfio::host::OpenError),
    /// Eventfd creation.
    #[error("creating an eventfd failed: {0}")]
    EventFd(#[source] std::io::Error),
    /// A `--disk` image could not be opened.
    #[error(transparent)]
    Disk(#[from] BlockError),
    /// A `--net` TAP device could not be opened, or its MAC is invalid.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The `--vsock` socket could not be set up.
    #[error(transparent)]
    Vsock(#[from] VsockError),
    /// A virtio device could not be placed in the VM.
    #[error(transparent)]
    Virtio(#[from] VirtioSetupError),
    /// A snapshot's state could not be put back.
    #[error("restoring the snapshot failed: {0}")]
    Restore(String),
}

/// Opens every device backend, before KVM is touched, so that a wrong path
/// or name fails fast with nothing half-built.
/// A VM of `vcpus` vCPUs gets one disk queue per vCPU unless told otherwise.
fn open_devices(cfg: &DevicesConfig, vcpus: u64) -> Result<Vec<Box<dyn VirtioDevice>>, BuildError> {
    let mut out: Vec<Box<dyn VirtioDevice>> = Vec::new();
    for disk in &cfg.disks {
        let opts = BlockOptions {
            readonly: disk.readonly,
            id: disk.id.clone(),
            engine: disk.engine,
            queues: disk.queues_for(vcpus),
        };
        let mut blk = Block::open_with(&disk.path, &opts)?;
        blk.set_rate_limiter(&disk.rate_limiter);
        out.push(Box::new(blk));
    }
    if let Some(v) = &cfg.vsock {
        out.push(Box::new(Vsock::new(v.cid, &v.uds)?));
    }
    for net in &cfg.nets {
        let mac = net.mac.as_deref().map(parse_mac).transpose()?;
        let mut dev = Net::open_pairs(&net.tap, mac, net.pairs_for())?;
        dev.set_rate_limiters(&net.rx_rate_limiter, &net.tx_rate_limiter);
        out.push(Box::new(dev));
    }
    if cfg.rng {
        out.push(Box::new(Rng::default()));
    }
    Ok(out)
}

/// KVM's list of the MSRs to save and restore (KVM_GET_MSR_INDEX_LIST).
pub fn msr_indices(kvm: &Kvm) -> Result<Arc<Vec<u32>>, BuildError> {
    let list = ioctl("KVM_GET_MSR_INDEX_LIST", kvm.get_msr_index_list())?;
    Ok(Arc::new(list.as_slice().to_vec()))
}

fn ioctl<T>(what: &'static str, r: Result<T, kvm_ioctls::Error>) -> Result<T, BuildError> {
    r.map_err(|e| BuildError::VmIoctl(what, e))
}

/// Creates a VM with the TSS and identity-map addresses set, and with the
/// in-kernel IOAPIC/PIC/LAPIC and PIT when `irqchip` is true.
pub fn create_vm(kvm: &Kvm, irqchip: bool) -> Result<VmFd, BuildError> {
    let vm = ioctl("KVM_CREATE_VM", kvm.create_vm())?;
    ioctl(
        "KVM_SET_TSS_ADDR",
        vm.set_tss_address(layout::KVM_TSS_ADDRESS as usize),
    )?;
    ioctl(
        "KVM_SET_IDENTITY_MAP_ADDR",
        vm.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDRESS),
    )?;
    if irqchip {
        ioctl("KVM_CREATE_IRQCHIP", vm.create_irq_chip())?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        ioctl("KVM_CREATE_PIT2", vm.create_pit2(pit))?;
    }
    Ok(vm)
}

/// Creates vCPU `index` with CPUID, MSRs and FPU set up (and its LAPIC when
/// the VM has an irqchip).
pub fn create_vcpu(
    vm: &VmFd,
    supported: &kvm_bindings::CpuId,
    index: usize,
    num_vcpus: u8,
    irqchip: bool,
) -> Result<VcpuFd, BuildError> {
    let fd = ioctl("KVM_CREATE_VCPU", vm.create_vcpu(index as u64))?;
    let topo = VcpuTopology {
        vcpu_index: index as u8,
        num_vcpus,
    };
    setup_cpuid(&fd, supported, topo).map_err(|e| BuildError::Cpuid(index, e))?;
    setup_msrs(&fd).map_err(|e| BuildError::Msr(index, e))?;
    regs::setup_fpu(&fd).map_err(|e| BuildError::Regs(index, e))?;
    if irqchip {
        regs::setup_lapic(&fd).map_err(|e| BuildError::Regs(index, e))?;
    }
    Ok(fd)
}

/// Creates the `vcpus` vCPUs of a VM with an irqchip, with KVM's supported
/// CPUID (TSC-deadline timer included where KVM has it).
fn create_vcpus(kvm: &Kvm, vm: &VmFd, vcpus: u8) -> Result<Vec<VcpuFd>, BuildError> {
    let mut supported = ioctl(
        "KVM_GET_SUPPORTED_CPUID",
        kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES),
    )?;
    if kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer) {
        enable_tsc_deadline(&mut supported);
    }
    (0..usize::from(vcpus))
        .map(|index| create_vcpu(vm, &supported, index, vcpus, true))
        .collect()
}

/// Puts the boot vCPU at `entry`.
pub fn setup_boot_vcpu(
    mem: &GuestMemoryMmap,
    fd: &VcpuFd,
    entry: &BootEntry,
) -> Result<(), BuildError> {
    regs::setup_sregs(mem, fd, entry).map_err(|e| BuildError::Regs(0, e))?;
    regs::setup_regs(fd, entry).map_err(|e| BuildError::Regs(0, e))?;
    Ok(())
}

/// Loads the kernel: a bzImage unpacked on the host when it can be (see
/// [`super::kernel_cache`]), else as given.
fn load_kernel(
    cfg: &VmConfig,
    mem: &GuestMemoryMmap,
    low_end: u64,
) -> Result<boot::LoadedKernel, BuildError> {
    let path = &cfg.kernel;
    if !cfg.host_unpack || boot::probe_kernel(path)? != boot::KernelFormat::BzImage {
        return Ok(boot::load_kernel(mem, path, low_end)?);
    }
    let (image, _) = crate::files::open_regular(path, boot::MAX_IMAGE).map_err(|source| {
        boot::BootError::Read {
            what: "kernel",
            path: path.clone(),
            source,
        }
    })?;
    let unpacked =
        super::kernel_cache::unpacked(image, boot::MAX_IMAGE, cfg.unpack_cache.as_deref());
    let why = match unpacked {
        Ok(u) => {
            let (loaded, how, mib) = match u.vmlinux {
                super::kernel_cache::Vmlinux::Memory(v) => (
                    boot::load_elf_image(mem, &v, path, low_end),
                    "unpacked on the host",
                    v.len() >> 20,
                ),
                super::kernel_cache::Vmlinux::Cached(mut f) => {
                    let len = f.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
                    (
                        boot::load_elf_file(mem, &mut f, len, path, low_end),
                        "read from the cache",
                        (len >> 20) as usize,
                    )
                }
            };
            match loaded {
                Ok(kernel) => {
                    log::info!(
                        "kernel {}: {} payload {how} ({mib} MiB vmlinux)",
                        path.display(),
                        u.format.map_or("its", |f| f.name()),
                    );
                    return Ok(kernel);
                }
                Err(e) => e.to_string(),
            }
        }
        Err(super::kernel_cache::Skip::NoPayload(why)) => {
            log::info!(
                "kernel {}: not unpacked on the host ({why})",
                path.display()
            );
            return Ok(boot::load_kernel(mem, path, low_end)?);
        }
        Err(super::kernel_cache::Skip::Failed(why)) => why,
    };
    log::warn!(
        "kernel {}: not unpacked on the host ({why}); it unpacks itself in the guest (--no-host-decompress says so up front)",
        path.display()
    );
    Ok(boot::load_kernel(mem, path, low_end)?)
}

/// Loads the initrd at `path`: a compressed initramfs unpacked on the host
/// (or read from the unpack cache, see [`super::initrd_unpack`]), anything
/// else as given. Returns its (address, size).
fn load_initrd(
    cfg: &VmConfig,
    mem: &GuestMemoryMmap,
    path: &std::path::Path,
    kernel: &boot::LoadedKernel,
    low_end: u64,
) -> Result<(u64, u64), BuildError> {
    use super::initrd_unpack::{unpacked, Cpio};
    let (file, len) = boot::open_initrd(path)?;
    // The guest holds the archive and the files it unpacks from it at
    // once: a plain archive may take a quarter of guest RAM at most, or
    // it boots compressed, as given.
    let max = boot::initrd_max(kernel, low_end).min(cfg.memory / 4);
    let place = |v: &[u8]| boot::place_initrd(mem, v, v.len() as u64, path, kernel, low_end);
    let why = match unpacked(file, len, max, cfg.unpack_cache.as_deref()) {
        Ok(u) => {
            let (placed, how) = match u.cpio {
                // Not compressed: loaded as given, from the bytes already read.
                Cpio::Plain(v) => return Ok(place(&v)?),
                Cpio::Memory(v) => (place(&v), "unpacked on the host"),
                Cpio::Cached(f) => {
                    let size = f.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
                    (
                        boot::place_initrd(mem, f, size, path, kernel, low_end),
                        "read from the cache",
                    )
                }
            };
            let names: Vec<&str> = u.formats.iter().map(|f| f.name()).collect();
            match placed {
                Ok((addr, size)) => {
                    log::info!(
                        "initrd {}: {} initramfs {how} ({} KiB of cpio)",
                        path.display(),
                        if names.is_empty() {
                            "its".into()
                        } else {
                            names.join("+")
                        },
                        size >> 10
                    );
                    return Ok((addr, size));
                }
                Err(e) => e.to_string(),
            }
        }
        // Skip::Plain comes back as Cpio::Plain above.
        Err(why) => why.to_string(),
    };
    log::warn!(
        "initrd {}: not unpacked on the host ({why}); the kernel unpacks it in the guest \
         (--no-host-decompress says so up front)",
        path.display()
    );
    Ok(boot::load_initrd(mem, path, kernel, low_end)?)
}

/// Hands the heap's free memory back to the system. glibc keeps what the
/// buffers of a host-side unpack leave behind (a 2 MB initramfs left
/// 10 MiB resident in the lab), which would count against the VMM's own
/// memory for the VM's whole life.
fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory the allocator holds;
    // no pointer the program holds is affected.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Loads the kernel, initrd and command line, writes the firmware tables
/// and boot information, and returns how to enter the kernel.
fn load_guest(
    cfg: &VmConfig,
    vcpus: u8,
    mem: &GuestMemoryMmap,
    virtio: &VirtioDevices,
    pci_mem64: std::ops::Range<u64>,
) -> Result<BootEntry, BuildError> {
    let low_end = low_ram_end(cfg.memory);
    let kernel = load_kernel(cfg, mem, low_end)?;
    let initrd = match &cfg.initrd {
        Some(path) if cfg.host_unpack => Some(load_initrd(cfg, mem, path, &kernel, low_end)?),
        Some(path) => Some(boot::load_initrd(mem, path, &kernel, low_end)?),
        None => None,
    };
    if cfg.host_unpack {
        trim_heap();
    }
    let mut cmdline = cfg.cmdline.clone();
    if cfg.devices.mmio_cmdline {
        for slot in &virtio.slots {
            cmdline.push(' ');
            cmdline.push_str(&slot.cmdline());
        }
    }
    let cmdline_len = boot::load_cmdline(mem, &cmdline, &kernel)?;
    // The MP table only matters with acpi=off, and its EBDA slot holds 40 CPUs.
    if vcpus <= mptable::MAX_VCPUS {
        setup_mptable(mem, vcpus)?;
    } else {
        log::info!(
            "{vcpus} vCPUs: no MP table (it holds {}); CPUs are in the ACPI MADT",
            mptable::MAX_VCPUS
        );
    }
    let rsdp = create_acpi_tables(
        mem,
        &AcpiConfig {
            num_vcpus: vcpus,
            mmio_devices: &virtio.acpi(),
            pci_mem64: Some(pci_mem64),
        },
    )?;
    reset_vector::write_reset_stub(mem)
        .map_err(|e| BootInfoError::GuestMemory("reset vector stub", e))?;
    let e820 = memory_map(cfg.memory);
    let info = BootInfo {
        cmdline_addr: CMDLINE_START,
        cmdline_len,
        initrd,
        rsdp_addr: rsdp.0,
        e820: &e820,
    };
    log::info!(
        "kernel {:?} entry {:#x}, initrd {:x?}, {} vCPUs, {} MiB",
        kernel.kind,
        kernel.entry,
        initrd,
        vcpus,
        cfg.memory >> 20
    );
    Ok(match kernel.kind {
        KernelKind::ElfPvh => BootEntry::Pvh {
            entry_addr: kernel.entry,
            start_info_addr: bootinfo::write_pvh_start_info(mem, &info)?,
        },
        KernelKind::BzImage | KernelKind::Elf64 => BootEntry::Linux64 {
            entry_addr: kernel.entry,
            boot_params_addr: bootinfo::write_boot_params(mem, kernel.header, &info)?,
        },
    })
}

/// Builds a Linux VM whose console writes to `console`.
pub fn build_linux(cfg: &VmConfig, console: Box<dyn Write + Send>) -> Result<Machine, BuildError> {
    // Everything the user can get wrong is checked before KVM is touched.
    check_memory(cfg.memory, host_ram())?;
    if cfg.vcpus == 0 {
        return Err(ConfigError::NoVcpus.into());
    }
    boot::probe_kernel(&cfg.kernel)?;
    if let Some(initrd) = &cfg.initrd {
        boot::probe_initrd(initrd)?;
    }
    let hosts = cfg
        .devices
        .passthrough
        .iter()
        .map(|path| crate::devices::vfio::sysfs::check(path, std::path::Path::new("/dev/vfio")))
        .collect::<Result<Vec<_>, _>>()
        .map_err(crate::devices::vfio::host::OpenError::from)?;
    let devices = open_devices(&cfg.devices, cfg.vcpus)?;
    let kvm = kvm::open(true)?;
    let vcpus = check_vcpus(cfg.vcpus, kvm::max_vcpus(&kvm) as u64)?;
    let vm = Arc::new(create_vm(&kvm, true)?);
    let mem = memory::create(cfg.memory)?;
    memory::register(&vm, &mem)?;
    let Legacy {
        mut buses,
        serial,
        panic_watch,
        i8042,
    } = legacy_devices(Some(&vm), console, None)?;
    let mut virtio = VirtioDevices::default();
    for device in devices {
        virtio.attach(&vm, &mem, &mut buses, device)?;
    }
    let mut pci = pci::attach(&mut buses, cfg.memory)?;
    pci::passthrough(&vm, &mem, &mut pci, &hosts)?;
    let entry = load_guest(cfg, vcpus, &mem, &virtio, pci::windows(cfg.memory).mem64)?;
    let fds = create_vcpus(&kvm, &vm, vcpus)?;
    setup_boot_vcpu(&mem, &fds[0], &entry)?;
    virtio.start()?;
    Ok(Machine {
        vm,
        memory: mem,
        buses: Arc::new(buses),
        vcpus: fds,
        serial,
        panic_watch,
        i8042,
        virtio,
        msr_indices: msr_indices(&kvm)?,
        restore: Vec::new(),
        tracer: None,
        pci: Some(pci.root),
    })
}

/// Rebuilds a VM from a snapshot: the in-kernel devices and COM1 get their
/// saved state here, and each vCPU gets its own on its thread when the
/// machine starts. Guest RAM is the memory file, mapped privately.
pub fn restore_vm(
    snapshot: VmSnapshot,
    mem_file: &std::fs::File,
    console: Box<dyn Write + Send>,
) -> Result<Machine, BuildError> {
    // The devices come from the configuration saved with the snapshot:
    // their backends (disk images, TAP devices, sockets) are opened anew.
    let cfg = snapshot
        .config
        .vm_config()
        .map_err(|e| BuildError::Restore(format!("the snapshot's configuration: {e}")))?;
    let devices = open_devices(&cfg.devices, snapshot.vcpus.len() as u64)?;
    let kvm = kvm::open(true)?;
    let vcpus = check_vcpus(snapshot.vcpus.len() as u64, kvm::max_vcpus(&kvm) as u64)?;
    let vm = create_vm(&kvm, true)?;
    let regions: Vec<(u64, u64)> = snapshot.regions.iter().map(|r| (r.gpa, r.len)).collect();
    let mem = memory::from_file(&regions, mem_file)?;
    memory::register(&vm, &mem)?;
    snapshot
        .vm
        .restore(&vm)
        .map_err(|e| BuildError::Restore(e.to_string()))?;
    let Legacy {
        mut buses,
        serial,
        panic_watch,
        i8042,
    } = legacy_devices(
        Some(&vm),
        console,
        Some((&snapshot.serial, &snapshot.i8042)),
    )?;
    let mut virtio = VirtioDevices::default();
    for device in devices {
        virtio.attach(&vm, &mem, &mut buses, device)?;
    }
    virtio.restore(&snapshot.virtio)?;
    let pci = pci::attach(&mut buses, cfg.memory)?;
    // Their saved CPUID replaces the one set here, on their own threads.
    let fds = create_vcpus(&kvm, &vm, vcpus)?;
    // Held until every vCPU has its state back (Machine::start).
    virtio.start_paused()?;
    Ok(Machine {
        vm: Arc::new(vm),
        memory: mem,
        buses: Arc::new(buses),
        vcpus: fds,
        serial,
        panic_watch,
        i8042,
        virtio,
        msr_indices: msr_indices(&kvm)?,
        restore: snapshot.vcpus,
        tracer: None,
        pci: Some(pci.root),
    })
}

/// Guest memory of a [`build_tiny`] VM.
pub const TINY_MEMORY: u64 = 32 << 20;

/// A one-vCPU VM for a small flat 64-bit program (the embedded guests),
/// built but with its buses still open for more devices.
pub struct TinyVm {
    /// The VM.
    pub vm: Arc<VmFd>,
    /// Its memory.
    pub memory: GuestMemoryMmap,
    /// Its buses, with the legacy devices on them.
    pub buses: Buses,
    /// The vCPU, at the program's first byte in 64-bit mode.
    pub vcpu: VcpuFd,
    /// The console UART.
    pub serial: Arc<Mutex<SerialDevice>>,
    /// Its panic watch.
    pub panic_watch: PanicWatch,
    /// The keyboard controller.
    pub i8042: Arc<Mutex<I8042>>,
    /// KVM's list of MSRs to save.
    pub msr_indices: Arc<Vec<u32>>,
}

impl TinyVm {
    /// Freezes the buses into a runnable machine.
    pub fn into_machine(self) -> Machine {
        self.into_machine_with(VirtioDevices::default())
    }

    /// Like [`TinyVm::into_machine`], with virtio devices attached to it.
    pub fn into_machine_with(self, virtio: VirtioDevices) -> Machine {
        Machine {
            vm: self.vm,
            memory: self.memory,
            buses: Arc::new(self.buses),
            vcpus: vec![self.vcpu],
            serial: self.serial,
            panic_watch: self.panic_watch,
            i8042: self.i8042,
            virtio,
            msr_indices: self.msr_indices,
            restore: Vec::new(),
            tracer: None,
            pci: None,
        }
    }
}

/// Builds a [`TinyVm`]: `code` at 1 MiB, each `(address, bytes)` of `data`
/// written to memory, the vCPU entering `code` in 64-bit mode. With
/// `irqchip`, KVM's in-kernel interrupt controllers are created too.
pub fn build_tiny(
    irqchip: bool,
    code: &[u8],
    data: &[(u64, &[u8])],
    console: Box<dyn Write + Send>,
) -> Result<TinyVm, BuildError> {
    let kvm = kvm::open(irqchip)?;
    let vm = create_vm(&kvm, irqchip)?;
    let memory = memory::create(TINY_MEMORY)?;
    memory::register(&vm, &memory)?;
    let write = |bytes: &[u8], addr: u64| {
        memory
            .write_slice(bytes, vm_memory::GuestAddress(addr))
            .map_err(|e| BootInfoError::GuestMemory("embedded guest", e))
    };
    write(code, layout::HIMEM_START)?;
    for (addr, bytes) in data {
        write(bytes, *addr)?;
    }
    let Legacy {
        buses,
        serial,
        panic_watch,
        i8042,
    } = legacy_devices(irqchip.then_some(&vm), console, None)?;
    let supported = ioctl(
        "KVM_GET_SUPPORTED_CPUID",
        kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES),
    )?;
    let vcpu = create_vcpu(&vm, &supported, 0, 1, irqchip)?;
    let entry = BootEntry::Linux64 {
        entry_addr: layout::HIMEM_START,
        boot_params_addr: 0,
    };
    setup_boot_vcpu(&memory, &vcpu, &entry)?;
    Ok(TinyVm {
        vm: Arc::new(vm),
        memory,
        buses,
        vcpu,
        serial,
        panic_watch,
        i8042,
        msr_indices: msr_indices(&kvm)?,
    })
}
