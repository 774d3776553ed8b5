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
/// IA32_TIME_STAMP_COUNTER.
const MSR_IA32_TSC: u32 = 0x10;
/// IA32_TSC_DEADLINE: the local APIC timer's deadline in TSC-deadline mode.
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

/// A saved TSC deadline of 0 means the timer fired, but its interrupt may
/// not have reached the guest yet: restored as 0, the timer stays disarmed
/// and the guest waits for a tick that never comes (seen as a slow first
/// output after a restore). Saving the TSC itself as the deadline makes the
/// restored timer fire at once instead.
fn rearm_expired_deadline(msrs: &mut [kvm_msr_entry]) {
    let Some(tsc) = msrs
        .iter()
        .find(|m| m.index == MSR_IA32_TSC)
        .map(|m| m.data)
    else {
        return;
    };
    for m in msrs
        .iter_mut()
        .filter(|m| m.index == MSR_IA32_TSC_DEADLINE && m.data == 0)
    {
        m.data = tsc;
    }
}

/// The MSRs in the order to write them: the TSC deadline after the TSC,
/// since KVM arms the timer against the TSC as it stands when the deadline
/// is written.
fn restore_order(msrs: &[kvm_msr_entry]) -> Vec<kvm_msr_entry> {
    let (deadline, mut rest): (Vec<_>, Vec<_>) = msrs
        .iter()
        .copied()
        .partition(|m| m.index == MSR_IA32_TSC_DEADLINE);
    rest.extend(deadline);
    rest
}

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
            msrs: {
                let mut msrs = read_msrs(fd, msr_indices)?;
                rearm_expired_deadline(&mut msrs);
                msrs
            },
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
        for chunk in restore_order(&self.msrs).chunks(MSR_CHUNK) {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn msr(index: u32, data: u64) -> kvm_msr_entry {
        kvm_msr_entry {
            index,
            data,
            ..Default::default()
        }
    }

    #[test]
    fn an_expired_deadline_is_saved_as_the_tsc_and_written_last() {
        let mut msrs = vec![
            msr(MSR_IA32_TSC_DEADLINE, 0),
            msr(0xc000_0080, 0xd01),
            msr(MSR_IA32_TSC, 123_456),
        ];
        rearm_expired_deadline(&mut msrs);
        assert_eq!(msrs[0].data, 123_456);
        let order: Vec<u32> = restore_order(&msrs).iter().map(|m| m.index).collect();
        assert_eq!(order, [0xc000_0080, MSR_IA32_TSC, MSR_IA32_TSC_DEADLINE]);
        // An armed deadline is kept as it is.
        let mut armed = vec![msr(MSR_IA32_TSC, 5), msr(MSR_IA32_TSC_DEADLINE, 99)];
        rearm_expired_deadline(&mut armed);
        assert_eq!(armed[1].data, 99);
    }
}
