//! The VM's GSI routing table. KVM_SET_GSI_ROUTING replaces the whole table,
//! so the in-kernel irqchip's routes (GSIs 0-23 to the IOAPIC, 0-15 also to
//! the PICs, as KVM sets them up) are kept here next to the MSI routes that
//! PCI devices add, and every change writes them all.

use std::collections::BTreeMap;
use std::sync::Arc;

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;

/// GSIs below this are the IOAPIC's pins.
pub const IOAPIC_PINS: u32 = 24;
/// KVM's limit on GSIs a VM may route.
const MAX_GSI: u32 = 4096;

/// No GSI left, or KVM refused the table.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// Every GSI is taken.
    #[error("no free GSI for an MSI route (KVM allows {MAX_GSI})")]
    Exhausted,
    /// KVM_SET_GSI_ROUTING failed.
    #[error("KVM_SET_GSI_ROUTING: {0}")]
    Kvm(#[source] kvm_ioctls::Error),
}

/// The routing table of one VM.
pub struct GsiRoutes {
    vm: Arc<VmFd>,
    msi: BTreeMap<u32, (u64, u32)>,
    next: u32,
}

impl GsiRoutes {
    /// The table KVM starts with, for `vm`.
    pub fn new(vm: Arc<VmFd>) -> Self {
        GsiRoutes {
            vm,
            msi: BTreeMap::new(),
            next: IOAPIC_PINS,
        }
    }

    /// A GSI of its own for an MSI vector.
    pub fn allocate(&mut self) -> Result<u32, RouteError> {
        if self.next >= MAX_GSI {
            return Err(RouteError::Exhausted);
        }
        self.next += 1;
        Ok(self.next - 1)
    }

    /// Routes `gsi` to the MSI `(address, data)`, or removes its route.
    pub fn set_msi(&mut self, gsi: u32, msi: Option<(u64, u32)>) -> Result<(), RouteError> {
        let changed = match msi {
            Some(m) => self.msi.insert(gsi, m) != Some(m),
            None => self.msi.remove(&gsi).is_some(),
        };
        if changed {
            self.commit()?;
        }
        Ok(())
    }

    fn commit(&self) -> Result<(), RouteError> {
        let entries = table(&self.msi);
        let mut routing = KvmIrqRouting::new(entries.len()).map_err(|_| RouteError::Exhausted)?;
        routing.as_mut_slice().copy_from_slice(&entries);
        self.vm.set_gsi_routing(&routing).map_err(RouteError::Kvm)
    }
}

fn irqchip(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = chip;
    e.u.irqchip.pin = pin;
    e
}

/// The irqchip routes followed by one route per MSI.
fn table(msi: &BTreeMap<u32, (u64, u32)>) -> Vec<kvm_irq_routing_entry> {
    let mut entries = Vec::with_capacity(40 + msi.len());
    for gsi in 0..IOAPIC_PINS {
        if gsi < 16 {
            let chip = if gsi < 8 {
                KVM_IRQCHIP_PIC_MASTER
            } else {
                KVM_IRQCHIP_PIC_SLAVE
            };
            entries.push(irqchip(gsi, chip, gsi % 8));
        }
        entries.push(irqchip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
    }
    for (&gsi, &(address, data)) in msi {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_MSI,
            ..Default::default()
        };
        e.u.msi.address_lo = address as u32;
        e.u.msi.address_hi = (address >> 32) as u32;
        e.u.msi.data = data;
        entries.push(e);
    }
    entries
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_keeps_the_irqchip_routes() {
        let mut msi = BTreeMap::new();
        msi.insert(24, (0xfee0_1000, 0x4041));
        let t = table(&msi);
        assert_eq!(t.len(), 16 + 24 + 1);
        let ioapic: Vec<_> = t
            .iter()
            .filter(|e| e.type_ == KVM_IRQ_ROUTING_IRQCHIP)
            // SAFETY: the union of an irqchip entry holds `irqchip`.
            .filter(|e| unsafe { e.u.irqchip.irqchip } == KVM_IRQCHIP_IOAPIC)
            .map(|e| e.gsi)
            .collect();
        assert_eq!(ioapic, (0..24).collect::<Vec<_>>());
        let last = t.last().unwrap();
        assert_eq!((last.gsi, last.type_), (24, KVM_IRQ_ROUTING_MSI));
        // SAFETY: an MSI entry's union holds `msi`.
        let m = unsafe { last.u.msi };
        assert_eq!(
            (m.address_lo, m.address_hi, m.data),
            (0xfee0_1000, 0, 0x4041)
        );
    }
}
