//! A vCPU's complete architectural state, as KVM exposes it: what a
//! snapshot saves and a restore puts back. Both run on the vCPU's own thread.

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

/// Most MSRs read in one KVM_GET_MSRS call.
const MSR_CHUNK: usize = 64;

/// Why a vCPU's state could not be saved or restored.
#[derive(Debug, thiserror::Error)]
#[error("{what} failed: {source}")]
pub struct StateError {
    /// The ioctl.
    pub what: &'static str,
    /// KVM's error.
    #[source]
    pub source: kvm_ioctls::Error,
}

fn ioctl<T>(what: &'static str, r: Result<T, kvm_ioctls::Error>) -> Result<T, StateError> {
    r.map_err(|source| StateError { what, source })
}

/// Everything KVM keeps for one vCPU.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    /// CPUID as the guest sees it.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// Multiprocessing state (running, halted, waiting for SIPI).
    pub mp_state: kvm_mp_state,
    /// General-purpose registers.
    pub regs: kvm_regs,
    /// Segment, control and descriptor-table registers.
    pub sregs: kvm_sregs,
    /// FPU, SSE and AVX state.
    pub xsave: kvm_xsave,
    /// Extended control registers (XCR0).
    pub xcrs: kvm_xcrs,
    /// Debug registers.
    pub debug_regs: kvm_debugregs,
    /// The local APIC's registers.
    pub lapic: kvm_lapic_state,
    /// Every MSR KVM could read, TSC and kvmclock among them.
    pub msrs: Vec<kvm_msr_entry>,
    /// Pending exceptions, interrupts and NMIs.
    pub vcpu_events: kvm_vcpu_events,
}

/// Reads `indices` with KVM_GET_MSRS, skipping any index KVM refuses (the
/// index list names MSRs that this vCPU's CPUID may not have).
fn read_msrs(fd: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, StateError> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(MSR_CHUNK)];
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|_| StateError {
            what: "KVM_GET_MSRS (building the list)",
            source: kvm_ioctls::Error::new(libc::EINVAL),
        })?;
        let read = ioctl("KVM_GET_MSRS", fd.get_msrs(&mut msrs))?;
        out.extend_from_slice(&msrs.as_slice()[..read]);
        // KVM stops at the first MSR it cannot read: skip that one.
        let consumed = if read < chunk.len() { read + 1 } else { read };
        if read < chunk.len() {
            log::debug!("MSR {:#x} is not readable; not saved", chunk[read]);
        }
        rest = &rest[consumed..];
    }
    Ok(out)
}

impl VcpuState {
    /// Saves the state of a vCPU that is out of KVM_RUN. `msr_indices` is
    /// KVM's list of MSRs to save (KVM_GET_MSR_INDEX_LIST).
    pub fn save(fd: &VcpuFd, msr_indices: &[u32]) -> Result<VcpuState, StateError> {
        // mp_state first: reading it makes KVM settle a pending INIT/SIPI.
        let mp_state = ioctl("KVM_GET_MP_STATE", fd.get_mp_state())?;
        Ok(VcpuState {
            mp_state,
            cpuid: ioctl("KVM_GET_CPUID2", fd.get_cpuid2(KVM_MAX_CPUID_ENTRIES))?
                .as_slice()
                .to_vec(),
            regs: ioctl("KVM_GET_REGS", fd.get_regs())?,
            sregs: ioctl("KVM_GET_SREGS", fd.get_sregs())?,
            xsave: ioctl("KVM_GET_XSAVE", fd.get_xsave())?,
            xcrs: ioctl("KVM_GET_XCRS", fd.get_xcrs())?,
            debug_regs: ioctl("KVM_GET_DEBUGREGS", fd.get_debug_regs())?,
            lapic: ioctl("KVM_GET_LAPIC", fd.get_lapic())?,
            msrs: read_msrs(fd, msr_indices)?,
            vcpu_events: ioctl("KVM_GET_VCPU_EVENTS", fd.get_vcpu_events())?,
        })
    }

    /// Puts the state back into a new vCPU that has not run yet.
    pub fn restore(&self, fd: &VcpuFd) -> Result<(), StateError> {
        let cpuid = CpuId::from_entries(&self.cpuid).map_err(|_| StateError {
            what: "KVM_SET_CPUID2 (too many entries)",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        ioctl("KVM_SET_CPUID2", fd.set_cpuid2(&cpuid))?;
        ioctl("KVM_SET_MP_STATE", fd.set_mp_state(self.mp_state))?;
        ioctl("KVM_SET_REGS", fd.set_regs(&self.regs))?;
        ioctl("KVM_SET_SREGS", fd.set_sregs(&self.sregs))?;
        // SAFETY: the buffer is a kvm_xsave that KVM_GET_XSAVE filled on a
        // vCPU with the same CPUID, so its size matches what KVM expects.
        ioctl("KVM_SET_XSAVE", unsafe { fd.set_xsave(&self.xsave) })?;
        ioctl("KVM_SET_XCRS", fd.set_xcrs(&self.xcrs))?;
        ioctl("KVM_SET_DEBUGREGS", fd.set_debug_regs(&self.debug_regs))?;
        ioctl("KVM_SET_LAPIC", fd.set_lapic(&self.lapic))?;
        for chunk in self.msrs.chunks(MSR_CHUNK) {
            let msrs = Msrs::from_entries(chunk).map_err(|_| StateError {
                what: "KVM_SET_MSRS (building the list)",
                source: kvm_ioctls::Error::new(libc::EINVAL),
            })?;
            let written = ioctl("KVM_SET_MSRS", fd.set_msrs(&msrs))?;
            if written < chunk.len() {
                return Err(StateError {
                    what: "KVM_SET_MSRS (an MSR was refused)",
                    source: kvm_ioctls::Error::new(libc::EINVAL),
                });
            }
        }
        ioctl("KVM_SET_VCPU_EVENTS", fd.set_vcpu_events(&self.vcpu_events))?;
        Ok(())
    }
}
