//! Thin wrappers over kvm-ioctls: open `/dev/kvm` with errors a user can act
//! on, and check the capabilities Subzero depends on.

pub mod irq_routes;
pub mod stats;

use kvm_ioctls::{Cap, Kvm};

/// Why KVM cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KvmError {
    /// /dev/kvm does not exist.
    #[error(
        "/dev/kvm does not exist: this host has no KVM. Enable virtualization (VT-x/AMD-V) \
         in the firmware and load the module (`modprobe kvm_intel` or `modprobe kvm_amd`)"
    )]
    NotPresent,
    /// /dev/kvm exists but this user may not open it.
    #[error(
        "permission denied opening /dev/kvm: add your user to the owning group \
         (`sudo usermod -aG kvm $USER`, then log in again) or run as root"
    )]
    PermissionDenied,
    /// Opening /dev/kvm failed for another reason.
    #[error("cannot open /dev/kvm: {0}")]
    Open(#[source] kvm_ioctls::Error),
    /// The kernel speaks a different KVM API.
    #[error("/dev/kvm reports KVM API version {0}; Subzero needs version 12")]
    ApiVersion(i32),
    /// A capability Subzero needs is missing.
    #[error("this host's KVM lacks the {0} capability, which Subzero needs")]
    MissingCap(&'static str),
}

/// Capabilities every Subzero VM relies on, with the names users see in errors.
const REQUIRED_CAPS: &[(Cap, &str)] = &[
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
    (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
];

/// Capabilities needed for a VM with the in-kernel interrupt controllers.
const IRQCHIP_CAPS: &[(Cap, &str)] = &[
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
];

/// Opens `/dev/kvm` and checks the API version and the capabilities Subzero
/// needs (including the irqchip ones when `irqchip` is true).
pub fn open(irqchip: bool) -> Result<Kvm, KvmError> {
    let kvm = Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT | libc::ENXIO | libc::ENODEV => KvmError::NotPresent,
        libc::EACCES | libc::EPERM => KvmError::PermissionDenied,
        _ => KvmError::Open(e),
    })?;
    let version = kvm.get_api_version();
    if version != kvm_bindings::KVM_API_VERSION as i32 {
        return Err(KvmError::ApiVersion(version));
    }
    let extra: &[(Cap, &str)] = if irqchip { IRQCHIP_CAPS } else { &[] };
    for (cap, name) in REQUIRED_CAPS.iter().chain(extra) {
        if !kvm.check_extension(*cap) {
            return Err(KvmError::MissingCap(name));
        }
    }
    Ok(kvm)
}

/// The most vCPUs this host's KVM allows in one VM.
pub fn max_vcpus(kvm: &Kvm) -> usize {
    kvm.get_max_vcpus()
}

/// For tests: opens /dev/kvm, or returns `None` (the test skips) when it
/// cannot, except under CI=true, where a missing /dev/kvm is a failure.
#[cfg(test)]
pub(crate) fn kvm_or_skip() -> Option<Kvm> {
    match Kvm::new() {
        Ok(kvm) => Some(kvm),
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI=true but /dev/kvm cannot be opened: {e}")
        }
        Err(e) => {
            eprintln!("skipping: /dev/kvm cannot be opened: {e}");
            None
        }
    }
}
