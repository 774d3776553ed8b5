//! HLT woken by an interrupt (guests/halt_wake.S). The VM has KVM's
//! in-kernel local APIC, so HLT never reaches userspace: the guest notifies
//! through an ioeventfd, halts, and a waker thread answers each notification
//! with an MSI through an irqfd. One iteration is the full path a
//! paravirtual device's interrupt takes to a halted vCPU.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use kvm_bindings::{
    kvm_irq_routing_entry, kvm_irq_routing_entry__bindgen_ty_1, kvm_irq_routing_msi, KvmIrqRouting,
    KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::{IoEventAddress, NoDatamatch};
use vm_memory::ByteValued;
use vmm_sys_util::eventfd::EventFd;

use super::BenchError;
use crate::arch::x86_64::gdt::CODE_INDEX;
use crate::arch::x86_64::layout::{ports, APIC_START};
use crate::demo::guest::PARAMS_START;
use crate::vmm::builder::build_tiny;
use crate::vmm::Machine;

/// The guest code, assembled by build.rs.
pub const CODE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/halt_wake.bin"));
/// The guest's notification port (an ioeventfd).
pub const NOTIFY_PORT: u16 = 0x530;
/// The interrupt vector the waker sends.
pub const VECTOR: u32 = 0x40;
/// The GSI routed to that MSI.
const MSI_GSI: u32 = 24;

/// What guests/halt_wake.S reads.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
struct Params {
    count: u64,
    notify_port: u64,
    vector: u64,
    code_selector: u64,
    poweroff_port: u64,
    poweroff_value: u64,
}

// SAFETY: repr(C) and only u64 fields: no padding, any bit pattern is valid.
unsafe impl ByteValued for Params {}

/// Answers every guest notification with one interrupt, until dropped.
pub struct Waker {
    stop: Arc<AtomicBool>,
    notify: EventFd,
    thread: Option<JoinHandle<u64>>,
}

impl Waker {
    /// Stops the thread and returns how many interrupts it sent.
    pub fn finish(mut self) -> u64 {
        self.stop_thread()
    }

    fn stop_thread(&mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.notify.write(1);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or(0)
    }
}

impl Drop for Waker {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// The VM and its waker.
pub struct HaltWakeVm {
    /// The VM, ready to run.
    pub machine: Machine,
    /// The waker thread.
    pub waker: Waker,
}

fn kvm_err(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> BenchError {
    move |e| BenchError::Kvm(what, e)
}

/// Builds the VM for `n` halt/wake round trips.
pub fn build(n: u64) -> Result<HaltWakeVm, BenchError> {
    let params = Params {
        count: n,
        notify_port: u64::from(NOTIFY_PORT),
        vector: u64::from(VECTOR),
        code_selector: u64::from(CODE_INDEX) * 8,
        poweroff_port: u64::from(ports::ACPI_SLEEP_CONTROL),
        poweroff_value: u64::from((ports::ACPI_S5_SLEEP_TYPE << 2) | 0x20),
    };
    let data: [(u64, &[u8]); 1] = [(PARAMS_START, params.as_slice())];
    let tiny = build_tiny(true, CODE, &data, Box::new(std::io::sink()))?;
    let vm = &tiny.vm;

    // GSI 24 -> MSI to local APIC 0 with VECTOR, fixed delivery, edge.
    let mut routing = KvmIrqRouting::new(1).map_err(|e| BenchError::Guest(format!("{e:?}")))?;
    routing.as_mut_slice()[0] = kvm_irq_routing_entry {
        gsi: MSI_GSI,
        type_: KVM_IRQ_ROUTING_MSI,
        u: kvm_irq_routing_entry__bindgen_ty_1 {
            msi: kvm_irq_routing_msi {
                address_lo: APIC_START as u32,
                data: VECTOR,
                ..Default::default()
            },
        },
        ..Default::default()
    };
    vm.set_gsi_routing(&routing)
        .map_err(kvm_err("KVM_SET_GSI_ROUTING"))?;
    let irq = EventFd::new(0)?;
    vm.register_irqfd(&irq, MSI_GSI)
        .map_err(kvm_err("KVM_IRQFD"))?;
    let notify = EventFd::new(0)?;
    vm.register_ioevent(
        &notify,
        &IoEventAddress::Pio(u64::from(NOTIFY_PORT)),
        NoDatamatch,
    )
    .map_err(kvm_err("KVM_IOEVENTFD"))?;

    let stop = Arc::new(AtomicBool::new(false));
    let (thread_stop, thread_notify) = (stop.clone(), notify.try_clone()?);
    let thread = std::thread::Builder::new()
        .name("waker".into())
        .spawn(move || {
            let mut sent = 0;
            while thread_notify.read().is_ok() && !thread_stop.load(Ordering::SeqCst) {
                if irq.write(1).is_ok() {
                    sent += 1;
                }
            }
            sent
        })?;
    Ok(HaltWakeVm {
        machine: tiny.into_machine(),
        waker: Waker {
            stop,
            notify,
            thread: Some(thread),
        },
    })
}
