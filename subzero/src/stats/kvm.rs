//! KVM's own counters (KVM_GET_STATS_FD) for a machine: opened before it
//! runs, read whenever a report is built.

use super::report::KvmCounters;
use crate::kvm::stats::{snapshot, StatsFd};
use kvm_ioctls::{VcpuFd, VmFd};

/// The VM's and each vCPU's statistics file. Empty when the host lacks
/// binary statistics; reports then say so.
pub struct KvmStatsFds {
    vm: Option<StatsFd>,
    vcpus: Vec<StatsFd>,
}

impl KvmStatsFds {
    /// Opens the statistics files of a VM and its vCPUs, before they run.
    pub fn open(vm: &VmFd, vcpus: &[VcpuFd]) -> Self {
        let vm = match StatsFd::for_vm(vm) {
            Ok(fd) => Some(fd),
            Err(e) => {
                log::info!("KVM counters unavailable: {e}");
                return KvmStatsFds {
                    vm: None,
                    vcpus: Vec::new(),
                };
            }
        };
        let vcpus = vcpus
            .iter()
            .filter_map(|v| StatsFd::for_vcpu(v).map_err(|e| log::info!("{e}")).ok())
            .collect();
        KvmStatsFds { vm, vcpus }
    }

    /// The current counters (scalars only), or `None` when unavailable.
    pub fn read(&self) -> Option<KvmCounters> {
        let vm = snapshot(self.vm.as_ref()?).ok()?;
        let vcpus = self
            .vcpus
            .iter()
            .filter_map(|fd| snapshot(fd).ok())
            .collect();
        Some(KvmCounters { vm, vcpus })
    }
}
