//! What the user asked for, validated before any KVM call.

use std::path::PathBuf;

use super::device_config::{DiskConfig, NetConfig, VsockConfig};

/// Command line used when the user gives none.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 panic=-1";
/// Guest memory when the user gives none.
pub const DEFAULT_MEMORY: u64 = 256 << 20;
/// Smallest guest Subzero will build: room for the boot structures, a
/// kernel and a small initrd.
pub const MIN_MEMORY: u64 = 32 << 20;
/// Most vCPUs: APIC ids are 8 bits in the MP table and the xAPIC MADT
/// entries, and 0xff is the broadcast id.
pub const MAX_VCPUS: u8 = 254;

/// A Linux VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// bzImage or ELF vmlinux.
    pub kernel: PathBuf,
    /// Optional initrd / initramfs.
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: String,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// Number of vCPUs, as asked (validated by the builder).
    pub vcpus: u64,
    /// Virtio devices.
    pub devices: DevicesConfig,
    /// Unpack a bzImage's payload and a compressed initramfs on the host,
    /// and boot the vmlinux and the plain cpio archive (the default;
    /// `--no-host-decompress` turns it off).
    pub host_unpack: bool,
    /// Where unpacked kernels and initramfs archives are kept
    /// ([`super::kernel_cache::default_dir`]; none: unpack at every boot).
    pub unpack_cache: Option<PathBuf>,
}

/// The virtio devices of a VM.
#[derive(Debug, Clone, Default)]
pub struct DevicesConfig {
    /// Block devices, in order (/dev/vda first).
    pub disks: Vec<DiskConfig>,
    /// Network devices.
    pub nets: Vec<NetConfig>,
    /// The socket device.
    pub vsock: Option<VsockConfig>,
    /// An entropy device.
    pub rng: bool,
    /// Also describe the devices with `virtio_mmio.device=` on the kernel
    /// command line (for kernels with CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES).
    pub mmio_cmdline: bool,
    /// Host PCI devices to pass through (their sysfs directories).
    pub passthrough: Vec<std::path::PathBuf>,
}

/// A problem with the configuration.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The size string could not be parsed.
    #[error(
        "--memory {0:?} is not a size: use a number with an optional K, M, G or T suffix \
         (plain numbers are MiB), e.g. 512M or 2G"
    )]
    BadSize(String),
    /// Too little memory.
    #[error("--memory {0} MiB is too small: Subzero needs at least {1} MiB")]
    MemoryTooSmall(u64, u64),
    /// More memory than the host has.
    #[error("--memory {0} MiB is more than this host's {1} MiB of RAM: choose a smaller size")]
    MemoryTooLarge(u64, u64),
    /// Not a multiple of the page size.
    #[error("--memory must be a multiple of 4 KiB")]
    MemoryUnaligned,
    /// Zero vCPUs.
    #[error("--vcpus must be at least 1")]
    NoVcpus,
    /// More vCPUs than KVM or the firmware tables allow.
    #[error("--vcpus {0} is more than this host allows: at most {1}")]
    TooManyVcpus(u64, u64),
}

/// Parses "512M", "2G", "1048576K", "256" (MiB) into bytes.
pub fn parse_size(text: &str) -> Result<u64, ConfigError> {
    parse_size_in(text, 20)
}

/// Parses "4M", "4MiB", "512K", "1048576" (bytes) into bytes.
pub fn parse_bytes(text: &str) -> Result<u64, ConfigError> {
    parse_size_in(text, 0)
}

/// A size with a K/M/G/T suffix (binary, optionally followed by "iB" or
/// "B"); a bare number counts in units of `1 << bare_shift` bytes.
fn parse_size_in(text: &str, bare_shift: u32) -> Result<u64, ConfigError> {
    let bad = || ConfigError::BadSize(text.to_string());
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| {
            t.strip_suffix('B')
                .filter(|s| s.ends_with(char::is_alphabetic))
        })
        .unwrap_or(t);
    let (digits, shift) = match t.chars().last().ok_or_else(bad)?.to_ascii_uppercase() {
        'K' => (&t[..t.len() - 1], 10),
        'M' => (&t[..t.len() - 1], 20),
        'G' => (&t[..t.len() - 1], 30),
        'T' => (&t[..t.len() - 1], 40),
        c if c.is_ascii_digit() => (t, bare_shift),
        _ => return Err(bad()),
    };
    let n: u64 = digits.trim().parse().map_err(|_| bad())?;
    n.checked_mul(1u64 << shift).ok_or_else(bad)
}

/// Checks guest memory against the minimum and the host's RAM.
pub fn check_memory(bytes: u64, host_ram: u64) -> Result<(), ConfigError> {
    let mib = |b: u64| b >> 20;
    if bytes < MIN_MEMORY {
        return Err(ConfigError::MemoryTooSmall(mib(bytes), mib(MIN_MEMORY)));
    }
    if bytes % 4096 != 0 {
        return Err(ConfigError::MemoryUnaligned);
    }
    if bytes > host_ram {
        return Err(ConfigError::MemoryTooLarge(mib(bytes), mib(host_ram)));
    }
    Ok(())
}

/// Checks the vCPU count against KVM's limit and the firmware tables'.
pub fn check_vcpus(vcpus: u64, kvm_max: u64) -> Result<u8, ConfigError> {
    let max = kvm_max.min(u64::from(MAX_VCPUS));
    match vcpus {
        0 => Err(ConfigError::NoVcpus),
        n if n > max => Err(ConfigError::TooManyVcpus(n, max)),
        n => Ok(n as u8),
    }
}

/// Total RAM of this host in bytes.
pub fn host_ram() -> u64 {
    // SAFETY: sysinfo only writes into the zeroed struct we pass it.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable sysinfo struct.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return u64::MAX;
    }
    (info.totalram as u64).saturating_mul(u64::from(info.mem_unit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1024k"), Ok(1 << 20));
        assert_eq!(parse_size("256"), Ok(256 << 20));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        for bad in [
            "",
            "M",
            "12X",
            "-1G",
            "1.5G",
            "99999999999999999999T",
            "G512",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
        assert!(parse_size("3Q").unwrap_err().to_string().contains("512M"));
    }

    #[test]
    fn memory_bounds() {
        let host = 24 << 30;
        assert!(check_memory(256 << 20, host).is_ok());
        assert_eq!(
            check_memory(1 << 20, host),
            Err(ConfigError::MemoryTooSmall(1, 32))
        );
        assert_eq!(
            check_memory(64 << 30, host),
            Err(ConfigError::MemoryTooLarge(64 << 10, 24 << 10))
        );
        assert_eq!(
            check_memory((64 << 20) + 1, host),
            Err(ConfigError::MemoryUnaligned)
        );
    }

    #[test]
    fn vcpu_bounds() {
        assert_eq!(check_vcpus(0, 1024), Err(ConfigError::NoVcpus));
        assert_eq!(check_vcpus(4, 1024), Ok(4));
        assert_eq!(
            check_vcpus(300, 1024),
            Err(ConfigError::TooManyVcpus(300, 254))
        );
        assert_eq!(check_vcpus(9, 8), Err(ConfigError::TooManyVcpus(9, 8)));
    }
}
