//! The VM-wide state KVM keeps in the kernel: the in-kernel PIC pair and
//! IOAPIC, the PIT, and the kvmclock base.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_CLOCK_TSC_STABLE, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

use super::vcpu_state::StateError;

fn ioctl<T>(what: &'static str, r: Result<T, kvm_ioctls::Error>) -> Result<T, StateError> {
    r.map_err(|source| StateError { what, source })
}

/// The in-kernel devices of a VM built with an irqchip and PIT.
#[derive(Clone, Serialize, Deserialize)]
pub struct VmState {
    /// The master 8259.
    pub pic_master: kvm_irqchip,
    /// The slave 8259.
    pub pic_slave: kvm_irqchip,
    /// The IOAPIC.
    pub ioapic: kvm_irqchip,
    /// The 8254 PIT.
    pub pit: kvm_pit_state2,
    /// kvmclock's base.
    pub clock: kvm_clock_data,
}

fn chip(id: u32) -> kvm_irqchip {
    kvm_irqchip {
        chip_id: id,
        ..Default::default()
    }
}

impl VmState {
    /// Saves the in-kernel devices of a VM whose vCPUs are all paused.
    pub fn save(vm: &VmFd) -> Result<VmState, StateError> {
        let mut pic_master = chip(KVM_IRQCHIP_PIC_MASTER);
        ioctl(
            "KVM_GET_IRQCHIP (PIC master)",
            vm.get_irqchip(&mut pic_master),
        )?;
        let mut pic_slave = chip(KVM_IRQCHIP_PIC_SLAVE);
        ioctl(
            "KVM_GET_IRQCHIP (PIC slave)",
            vm.get_irqchip(&mut pic_slave),
        )?;
        let mut ioapic = chip(KVM_IRQCHIP_IOAPIC);
        ioctl("KVM_GET_IRQCHIP (IOAPIC)", vm.get_irqchip(&mut ioapic))?;
        Ok(VmState {
            pic_master,
            pic_slave,
            ioapic,
            pit: ioctl("KVM_GET_PIT2", vm.get_pit2())?,
            clock: ioctl("KVM_GET_CLOCK", vm.get_clock())?,
        })
    }

    /// Puts the state into a new VM that has an irqchip and a PIT.
    pub fn restore(&self, vm: &VmFd) -> Result<(), StateError> {
        ioctl(
            "KVM_SET_IRQCHIP (PIC master)",
            vm.set_irqchip(&self.pic_master),
        )?;
        ioctl(
            "KVM_SET_IRQCHIP (PIC slave)",
            vm.set_irqchip(&self.pic_slave),
        )?;
        ioctl("KVM_SET_IRQCHIP (IOAPIC)", vm.set_irqchip(&self.ioapic))?;
        ioctl("KVM_SET_PIT2", vm.set_pit2(&self.pit))?;
        // KVM_SET_CLOCK takes no TSC_STABLE flag: it is KVM's to report.
        let mut clock = self.clock;
        clock.flags &= !KVM_CLOCK_TSC_STABLE;
        ioctl("KVM_SET_CLOCK", vm.set_clock(&clock))?;
        Ok(())
    }
}
