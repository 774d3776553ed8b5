//! Host-side checks before a device is opened, so each way it can be wrong
//! gets a message that says what to do: not a PCI device, not bound to
//! vfio-pci, no IOMMU, an IOMMU group shared with devices still in use by the
//! host, no permission on `/dev/vfio/N`, or the group in use elsewhere.

use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// Drivers a device in the same IOMMU group may have without making the
/// group unusable: none, vfio-pci itself, pci-stub, and the port driver of
/// a bridge.
const HARMLESS_DRIVERS: &[&str] = &["vfio-pci", "pci-stub", "pcieport"];

/// A host device that passed the checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostDevice {
    /// Its address, e.g. `0000:01:00.0`.
    pub bdf: String,
    /// Its sysfs directory, resolved.
    pub sysfs: PathBuf,
    /// Its IOMMU group.
    pub group: u32,
}

/// Why a device cannot be passed through.
#[derive(Debug, thiserror::Error)]
pub enum HostCheckError {
    /// The path does not exist.
    #[error("--device path={0}: no such device. List the host's PCI devices with `ls /sys/bus/pci/devices` (or `lspci -D`) and pass one of those directories")]
    NotFound(PathBuf),
    /// The path is not a PCI device's sysfs directory.
    #[error("--device path={0}: not a PCI device (it has no `vendor` and `config` files); pass a directory under /sys/bus/pci/devices")]
    NotPci(PathBuf),
    /// Bound to another driver, or to none.
    #[error(
        "--device {bdf}: the device is {}, not to vfio-pci. Bind it as root:\n  modprobe vfio-pci\n{}  echo vfio-pci > /sys/bus/pci/devices/{bdf}/driver_override\n  echo {bdf} > /sys/bus/pci/drivers_probe",
        .driver.as_ref().map_or("bound to no driver".to_string(), |d| format!("bound to {d}")),
        .driver.as_ref().map_or(String::new(), |_| format!("  echo {bdf} > /sys/bus/pci/devices/{bdf}/driver/unbind\n"))
    )]
    NotBound {
        /// The device.
        bdf: String,
        /// Its driver now.
        driver: Option<String>,
    },
    /// No IOMMU group: the host has no IOMMU, or it is off.
    #[error("--device {0}: the device has no IOMMU group, so the host has no IOMMU or it is off. Enable VT-d/AMD-Vi in the firmware and boot the host with `intel_iommu=on` (Intel) or `amd_iommu=on` (AMD)")]
    NoIommu(String),
    /// Other devices of the group are in the host's use.
    #[error(
        "--device {bdf}: IOMMU group {group} also holds {}; every device of the group must be bound to vfio-pci (or to no driver) before any of them can be passed through",
        .others.iter().map(|(d, drv)| format!("{d} (bound to {drv})")).collect::<Vec<_>>().join(", ")
    )]
    GroupShared {
        /// The device.
        bdf: String,
        /// Its group.
        group: u32,
        /// The other devices and their drivers.
        others: Vec<(String, String)>,
    },
    /// `/dev/vfio/N` is missing.
    #[error("--device {bdf}: {} does not exist; load the VFIO modules (`modprobe vfio-pci`) and check that the device is bound to vfio-pci", .dev.display())]
    NoGroupDevice {
        /// The device.
        bdf: String,
        /// The group's device node.
        dev: PathBuf,
    },
    /// No permission on `/dev/vfio/N`.
    #[error("--device {bdf}: permission denied opening {}: run as root, or give this user the group file (`chown $USER {}`)", .dev.display(), .dev.display())]
    Permission {
        /// The device.
        bdf: String,
        /// The group's device node.
        dev: PathBuf,
    },
    /// Another process holds the group.
    #[error("--device {bdf}: {} is busy: another process (another VM?) has the device's IOMMU group open; find it with `fuser -v {}`", .dev.display(), .dev.display())]
    InUse {
        /// The device.
        bdf: String,
        /// The group's device node.
        dev: PathBuf,
    },
    /// Opening `/dev/vfio/N` failed otherwise.
    #[error("--device {bdf}: cannot open {}: {source}", .dev.display())]
    Open {
        /// The device.
        bdf: String,
        /// The group's device node.
        dev: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn link_name(path: &Path) -> Option<String> {
    let target = std::fs::read_link(path).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

/// Checks the device at `path` (a sysfs PCI device directory), with VFIO's
/// group nodes under `dev_vfio` (`/dev/vfio` on a real host).
pub fn check(path: &Path, dev_vfio: &Path) -> Result<HostDevice, HostCheckError> {
    let sysfs = std::fs::canonicalize(path).map_err(|_| HostCheckError::NotFound(path.into()))?;
    if !sysfs.join("vendor").is_file() || !sysfs.join("config").is_file() {
        return Err(HostCheckError::NotPci(path.into()));
    }
    let bdf = sysfs
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| HostCheckError::NotPci(path.into()))?;
    // No IOMMU first: without one, binding to vfio-pci cannot help.
    let group = link_name(&sysfs.join("iommu_group"))
        .and_then(|g| g.parse::<u32>().ok())
        .ok_or_else(|| HostCheckError::NoIommu(bdf.clone()))?;
    let driver = link_name(&sysfs.join("driver"));
    if driver.as_deref() != Some("vfio-pci") {
        return Err(HostCheckError::NotBound { bdf, driver });
    }
    let mut others = Vec::new();
    if let Ok(entries) = std::fs::read_dir(sysfs.join("iommu_group").join("devices")) {
        for e in entries.flatten() {
            let other = e.file_name().to_string_lossy().into_owned();
            if other == bdf {
                continue;
            }
            if let Some(drv) = link_name(&e.path().join("driver")) {
                if !HARMLESS_DRIVERS.contains(&drv.as_str()) {
                    others.push((other, drv));
                }
            }
        }
    }
    if !others.is_empty() {
        others.sort();
        return Err(HostCheckError::GroupShared { bdf, group, others });
    }
    let dev = dev_vfio.join(group.to_string());
    match OpenOptions::new().read(true).write(true).open(&dev) {
        Ok(_) => Ok(HostDevice { bdf, sysfs, group }),
        Err(e) => Err(match e.kind() {
            ErrorKind::NotFound => HostCheckError::NoGroupDevice { bdf, dev },
            ErrorKind::PermissionDenied => HostCheckError::Permission { bdf, dev },
            _ if e.raw_os_error() == Some(libc::EBUSY) => HostCheckError::InUse { bdf, dev },
            _ => HostCheckError::Open {
                bdf,
                dev,
                source: e,
            },
        }),
    }
}

/// The MSI and MSI-X interrupts the host counted for `bdf` (its
/// `vfio-msi[N](BDF)` and `vfio-msix[N](BDF)` lines in `interrupts`, the
/// text of `/proc/interrupts`), over all CPUs.
pub fn host_interrupts(interrupts: &str, bdf: &str) -> u64 {
    let tag = format!("({bdf})");
    interrupts
        .lines()
        .filter(|l| l.contains("vfio-msi") && l.contains(&tag))
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .map_while(|f| f.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake sysfs: devices/, drivers/, groups/ and a dev/vfio directory.
    struct Tree(PathBuf);

    impl Tree {
        fn new(name: &str) -> Self {
            let root =
                std::env::temp_dir().join(format!("subzero-sysfs-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            for d in [
                "devices",
                "drivers/vfio-pci",
                "drivers/nvme",
                "drivers/e1000e",
                "dev",
            ] {
                std::fs::create_dir_all(root.join(d)).unwrap();
            }
            Tree(root)
        }
        fn device(&self, bdf: &str, driver: Option<&str>, group: Option<u32>) -> PathBuf {
            let d = self.0.join("devices").join(bdf);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("vendor"), "0x1b36\n").unwrap();
            std::fs::write(d.join("config"), [0u8; 64]).unwrap();
            if let Some(drv) = driver {
                symlink(self.0.join("drivers").join(drv), d.join("driver")).unwrap();
            }
            if let Some(g) = group {
                let gdir = self.0.join("groups").join(g.to_string());
                std::fs::create_dir_all(gdir.join("devices")).unwrap();
                symlink(&gdir, d.join("iommu_group")).unwrap();
                symlink(&d, gdir.join("devices").join(bdf)).unwrap();
            }
            d
        }
        fn dev(&self) -> PathBuf {
            self.0.join("dev")
        }
    }

    impl Drop for Tree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn host_interrupts_sum_the_devices_vfio_lines() {
        let text = "           CPU0       CPU1\n\
          24:        100         20  IR-PCI-MSIX-0000:00:04.0    0-edge      vfio-msix[0](0000:00:04.0)\n\
          25:          3          4  IR-PCI-MSIX-0000:00:04.0    1-edge      vfio-msix[1](0000:00:04.0)\n\
          26:          9          9  IR-PCI-MSIX-0000:00:05.0    0-edge      vfio-msix[0](0000:00:05.0)\n\
          28:          5          0  IR-PCI-MSI-0000:00:06.0     0-edge      vfio-msi[0](0000:00:06.0)\n\
          27:         50          0  IR-PCI-MSIX-0000:00:04.0    0-edge      nvme0q0\n";
        assert_eq!(host_interrupts(text, "0000:00:04.0"), 127);
        assert_eq!(host_interrupts(text, "0000:00:06.0"), 5);
        assert_eq!(host_interrupts(text, "0000:00:07.0"), 0);
    }

    #[test]
    fn each_host_problem_has_its_message() {
        let t = Tree::new("errors");
        let e = check(&t.0.join("devices/0000:09:00.0"), &t.dev()).unwrap_err();
        assert!(matches!(e, HostCheckError::NotFound(_)), "{e}");
        assert!(e.to_string().contains("lspci -D"));
        let e = check(&t.0.join("drivers"), &t.dev()).unwrap_err();
        assert!(matches!(e, HostCheckError::NotPci(_)), "{e}");

        let nvme = t.device("0000:01:00.0", Some("nvme"), Some(5));
        let msg = check(&nvme, &t.dev()).unwrap_err().to_string();
        assert!(msg.contains("bound to nvme, not to vfio-pci"), "{msg}");
        assert!(
            msg.contains("echo 0000:01:00.0 > /sys/bus/pci/devices/0000:01:00.0/driver/unbind"),
            "{msg}"
        );
        assert!(
            msg.contains("echo vfio-pci > /sys/bus/pci/devices/0000:01:00.0/driver_override"),
            "{msg}"
        );
        assert!(
            msg.contains("echo 0000:01:00.0 > /sys/bus/pci/drivers_probe"),
            "{msg}"
        );
        let unbound = t.device("0000:02:00.0", None, Some(6));
        let msg = check(&unbound, &t.dev()).unwrap_err().to_string();
        assert!(
            msg.contains("bound to no driver") && !msg.contains("unbind"),
            "{msg}"
        );

        let no_iommu = t.device("0000:03:00.0", Some("vfio-pci"), None);
        let msg = check(&no_iommu, &t.dev()).unwrap_err().to_string();
        assert!(
            msg.contains("intel_iommu=on") && msg.contains("amd_iommu=on"),
            "{msg}"
        );

        let shared = t.device("0000:04:00.0", Some("vfio-pci"), Some(7));
        let nic = t.device("0000:04:00.1", Some("e1000e"), None);
        symlink(&nic, t.0.join("groups/7/devices/0000:04:00.1")).unwrap();
        let msg = check(&shared, &t.dev()).unwrap_err().to_string();
        assert!(
            msg.contains("IOMMU group 7 also holds 0000:04:00.1 (bound to e1000e)"),
            "{msg}"
        );

        let good = t.device("0000:05:00.0", Some("vfio-pci"), Some(8));
        let e = check(&good, &t.dev()).unwrap_err();
        assert!(matches!(e, HostCheckError::NoGroupDevice { .. }), "{e}");
        assert!(e.to_string().contains("modprobe vfio-pci"));
        std::fs::write(t.dev().join("8"), "").unwrap();
        let ok = check(&good, &t.dev()).unwrap();
        assert_eq!((ok.bdf.as_str(), ok.group), ("0000:05:00.0", 8));
    }
}
