//! The Debian cloud kernel: resolve the package behind the
//! `linux-image-cloud-amd64` meta package, download it with `apt-get
//! download`, unpack it with `dpkg-deb -x`, all cached so that a second run
//! needs no network.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{elf, have_tool, LabError};

/// An unpacked kernel package.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The versioned package, e.g. `linux-image-6.1.0-56-cloud-amd64`.
    pub package: String,
    /// The kernel release (`uname -r`), the directory name under `lib/modules`.
    pub version: String,
    /// The bzImage, `boot/vmlinuz-<version>`.
    pub vmlinuz: PathBuf,
    /// The unpacked package root.
    pub root: PathBuf,
    /// The downloaded .deb.
    pub deb: PathBuf,
    /// Size of the .deb in bytes.
    pub deb_size: u64,
    /// Whether this run downloaded it (false: it came from the cache).
    pub downloaded: bool,
}

/// Picks the versioned kernel package out of `apt-cache depends` output,
/// e.g. `  Depends: linux-image-6.1.0-56-cloud-amd64`.
pub fn parse_apt_depends(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let l = l.trim().trim_start_matches('|');
        let dep = l.strip_prefix("Depends:")?.trim();
        let dep = dep.trim_start_matches('<').trim_end_matches('>');
        dep.starts_with("linux-image-").then(|| dep.to_string())
    })
}

/// Resolves, downloads (if not cached) and unpacks the kernel package that
/// `meta` (normally `linux-image-cloud-amd64`) depends on. A versioned package
/// name (`linux-image-6.1.0-...`) is used as it is.
pub fn fetch(cache: &Path, meta: &str, log: &dyn Fn(&str)) -> Result<Kernel, LabError> {
    let debs = cache.join("debs");
    let unpacked = cache.join("kernel");
    for d in [&debs, &unpacked] {
        fs::create_dir_all(d)
            .map_err(|e| LabError::Failed(format!("creating {}: {e}", d.display())))?;
    }

    let package = if meta.chars().nth(12).is_some_and(|c| c.is_ascii_digit()) {
        meta.to_string()
    } else {
        match resolve(meta) {
            Ok(p) => p,
            Err(why) => match newest_cached(&unpacked) {
                Some(p) => {
                    log(&format!("{why}; using the cached {p}"));
                    p
                }
                None => return Err(LabError::Unavailable(why)),
            },
        }
    };

    let root = unpacked.join(&package);
    let mut downloaded = false;
    let deb = match find_deb(&debs, &package) {
        Some(deb) => deb,
        None => {
            if !have_tool("apt-get") {
                return Err(LabError::Unavailable(format!(
                    "{package} is not cached in {} and apt-get is not available to download it",
                    debs.display()
                )));
            }
            log(&format!("downloading {package} with apt-get download"));
            let tmp = debs.join(".download");
            let _ = fs::remove_dir_all(&tmp);
            fs::create_dir_all(&tmp)
                .map_err(|e| LabError::Failed(format!("{}: {e}", tmp.display())))?;
            let out = Command::new("apt-get")
                .args(["download", "-q", "-o", "APT::Sandbox::User=root", &package])
                .current_dir(&tmp)
                .output()
                .map_err(|e| LabError::Unavailable(format!("running apt-get download: {e}")))?;
            if !out.status.success() {
                return Err(LabError::Unavailable(format!(
                    "apt-get download {package} failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            let got = find_deb(&tmp, &package).ok_or_else(|| {
                LabError::Failed(format!("apt-get download {package} produced no .deb"))
            })?;
            let dest = debs.join(got.file_name().unwrap());
            fs::rename(&got, &dest)
                .map_err(|e| LabError::Failed(format!("{}: {e}", dest.display())))?;
            let _ = fs::remove_dir_all(&tmp);
            let _ = fs::remove_dir_all(&root);
            downloaded = true;
            dest
        }
    };
    let deb_size = fs::metadata(&deb).map(|m| m.len()).unwrap_or(0);

    if !root.join(".complete").exists() {
        if !have_tool("dpkg-deb") {
            return Err(LabError::Unavailable(
                "dpkg-deb is not available to unpack the kernel".into(),
            ));
        }
        let tmp = unpacked.join(format!(".{package}.tmp"));
        let _ = fs::remove_dir_all(&tmp);
        log(&format!("unpacking {} with dpkg-deb -x", deb.display()));
        let out = Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(&tmp)
            .output()
            .map_err(|e| LabError::Failed(format!("running dpkg-deb: {e}")))?;
        if !out.status.success() {
            return Err(LabError::Failed(format!(
                "dpkg-deb -x {} failed: {}",
                deb.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        fs::write(tmp.join(".complete"), deb.display().to_string())
            .and_then(|_| {
                let _ = fs::remove_dir_all(&root);
                fs::rename(&tmp, &root)
            })
            .map_err(|e| LabError::Failed(format!("{}: {e}", root.display())))?;
    }

    let modules = root.join("lib/modules");
    let version = fs::read_dir(&modules)
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .ok_or_else(|| {
            LabError::Failed(format!("no kernel version under {}", modules.display()))
        })?;
    let vmlinuz = root.join("boot").join(format!("vmlinuz-{version}"));
    if !vmlinuz.is_file() {
        return Err(LabError::Failed(format!(
            "{} is missing",
            vmlinuz.display()
        )));
    }
    Ok(Kernel {
        package,
        version,
        vmlinuz,
        root,
        deb,
        deb_size,
        downloaded,
    })
}

fn resolve(meta: &str) -> Result<String, String> {
    if !have_tool("apt-cache") {
        return Err("apt-cache is not available to resolve the kernel package".into());
    }
    let out = Command::new("apt-cache")
        .args(["depends", meta])
        .output()
        .map_err(|e| format!("running apt-cache depends {meta}: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    parse_apt_depends(&text).ok_or_else(|| {
        format!(
            "`apt-cache depends {meta}` named no linux-image package (run `apt-get update`?): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })
}

fn newest_cached(unpacked: &Path) -> Option<String> {
    let mut found: Vec<String> = fs::read_dir(unpacked)
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join(".complete").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    found.sort_by_key(|a| version_key(a));
    found.pop()
}

/// Sort key that orders `linux-image-6.1.0-9-...` before `...-10-...`.
fn version_key(s: &str) -> Vec<(u64, String)> {
    s.split(['-', '.'])
        .map(|p| (p.parse().unwrap_or(0), p.to_string()))
        .collect()
}

fn find_deb(dir: &Path, package: &str) -> Option<PathBuf> {
    let prefix = format!("{package}_");
    fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with(&prefix) && n.ends_with(".deb")
        })
}

/// A kernel module ready for the initramfs.
#[derive(Debug)]
pub struct Module {
    /// File name to use in the initramfs, always ending in `.ko`.
    pub file_name: String,
    /// Uncompressed module bytes.
    pub data: Vec<u8>,
}

/// The modules needed for `/dev/kvm` on AMD (`kvm_amd` and what it depends
/// on, per each module's `.modinfo`), in insmod order and uncompressed
/// (busybox insmod cannot read .ko.xz/.ko.zst).
pub fn kvm_modules(k: &Kernel) -> Result<Vec<Module>, LabError> {
    modules(k, &["kvm_amd"])
}

/// L1's modules: KVM, plus `tun` (TAP devices for the net scenario),
/// `loop` (L1 mounts the block scenario's image to check what the guest
/// wrote), and VFIO (the passthrough scenarios bind an NVMe controller to
/// vfio-pci).
pub const L1_MODULES: &[&str] = &["kvm_amd", "tun", "loop", "vfio_iommu_type1", "vfio_pci"];

/// The guest's virtio drivers: transport, block, net, vsock and rng.
pub const VIRTIO_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_blk",
    "virtio_net",
    "vmw_vsock_virtio_transport",
    "virtio_rng",
];

/// The named modules (`-` and `_` are the same) and everything they depend
/// on, per each module's `.modinfo` (Debian's package has no modules.dep),
/// in insmod order (dependencies first), uncompressed. Each file is named
/// `<name>.ko` with underscores: `virtio-rng.ko` becomes `virtio_rng.ko`.
pub fn modules(k: &Kernel, names: &[&str]) -> Result<Vec<Module>, LabError> {
    let dir = k.root.join("lib/modules").join(&k.version).join("kernel");
    let mut index = BTreeMap::new();
    index_modules(&dir, &mut index);
    let mut order = Vec::new();
    for name in names {
        add_with_deps(&name.replace('-', "_"), &index, &mut order, 0)?;
    }
    Ok(order)
}

fn module_name(file: &str) -> Option<String> {
    let base = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|ext| file.strip_suffix(ext))?;
    Some(base.replace('-', "_"))
}

fn index_modules(dir: &Path, index: &mut BTreeMap<String, PathBuf>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            index_modules(&p, index);
        } else if let Some(name) = module_name(&e.file_name().to_string_lossy()) {
            index.insert(name, p);
        }
    }
}

fn add_with_deps(
    name: &str,
    index: &BTreeMap<String, PathBuf>,
    order: &mut Vec<Module>,
    depth: usize,
) -> Result<(), LabError> {
    let file_name = format!("{name}.ko");
    if order.iter().any(|m| m.file_name == file_name) {
        return Ok(());
    }
    if depth > 16 {
        return Err(LabError::Failed(format!(
            "module dependency loop at {name}"
        )));
    }
    let path = index.get(name).ok_or_else(|| {
        LabError::Failed(format!("module {name} not found in the kernel package"))
    })?;
    let data = read_module(path)?;
    let deps = elf::modinfo(&data, "depends").unwrap_or_default();
    for dep in deps.split(',').filter(|d| !d.is_empty()) {
        add_with_deps(&dep.replace('-', "_"), index, order, depth + 1)?;
    }
    order.push(Module { file_name, data });
    Ok(())
}

fn read_module(path: &Path) -> Result<Vec<u8>, LabError> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else if name.ends_with(".gz") {
        Some("gzip")
    } else {
        None
    };
    match tool {
        None => fs::read(path).map_err(|e| LabError::Failed(format!("{name}: {e}"))),
        Some(tool) => {
            let out = Command::new(tool)
                .arg("-dc")
                .arg(path)
                .output()
                .map_err(|e| {
                    LabError::Failed(format!("{tool} -dc {name} (is {tool} installed?): {e}"))
                })?;
            if !out.status.success() {
                return Err(LabError::Failed(format!(
                    "{tool} -dc {name} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                )));
            }
            Ok(out.stdout)
        }
    }
}

/// The compressed payload of a bzImage: (compressor tool, payload bytes
/// without the 4-byte uncompressed size the kernel build appends, that size).
pub fn bzimage_payload(bz: &[u8]) -> Result<(&'static str, &[u8], u32), String> {
    if bz.len() < 0x250 || &bz[0x202..0x206] != b"HdrS" {
        return Err("not a bzImage (no HdrS header)".into());
    }
    let u32_at = |o: usize| u32::from_le_bytes(bz[o..o + 4].try_into().unwrap());
    let version = u16::from_le_bytes([bz[0x206], bz[0x207]]);
    if version < 0x208 {
        return Err(format!("boot protocol {version:#x} has no payload fields"));
    }
    let setup_sects = match bz[0x1f1] {
        0 => 4,
        n => n as usize,
    };
    let start = (setup_sects + 1) * 512 + u32_at(0x248) as usize;
    let len = u32_at(0x24c) as usize;
    let payload = bz
        .get(start..start + len)
        .filter(|p| p.len() > 8)
        .ok_or("payload outside the file")?;
    let tool = if payload.starts_with(&[0x1f, 0x8b]) {
        "gzip"
    } else if payload.starts_with(b"\xfd7zXZ\0") {
        "xz"
    } else if payload.starts_with(&[0x02, 0x21, 0x4c, 0x18]) {
        "lz4"
    } else if payload.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        "zstd"
    } else if payload.starts_with(b"BZh") {
        "bzip2"
    } else {
        return Err(format!(
            "unknown payload compression {:02x?}",
            &payload[..4]
        ));
    };
    let size = u32::from_le_bytes(payload[len - 4..].try_into().unwrap());
    Ok((tool, &payload[..len - 4], size))
}

/// The ELF vmlinux inside the kernel's bzImage, extracted once into the
/// unpacked package (`<root>/vmlinux`). Needs the payload's decompressor
/// (`lz4` for Debian's kernels).
pub fn vmlinux(k: &Kernel) -> Result<PathBuf, LabError> {
    let out = k.root.join("vmlinux");
    if out.is_file() {
        return Ok(out);
    }
    let bz = fs::read(&k.vmlinuz)
        .map_err(|e| LabError::Failed(format!("{}: {e}", k.vmlinuz.display())))?;
    let (tool, payload, size) = bzimage_payload(&bz)
        .map_err(|e| LabError::Failed(format!("{}: {e}", k.vmlinuz.display())))?;
    if !have_tool(tool) {
        return Err(LabError::Unavailable(format!(
            "{tool} is needed to extract vmlinux from {} (apt-get install {tool})",
            k.vmlinuz.display()
        )));
    }
    let tmp = k.root.join("vmlinux.tmp");
    let compressed = k.root.join("vmlinux.payload");
    fs::write(&compressed, payload)
        .map_err(|e| LabError::Failed(format!("{}: {e}", compressed.display())))?;
    let res = Command::new(tool)
        .arg("-dc")
        .arg(&compressed)
        .stdout(
            fs::File::create(&tmp)
                .map_err(|e| LabError::Failed(format!("{}: {e}", tmp.display())))?,
        )
        .output()
        .map_err(|e| LabError::Failed(format!("running {tool}: {e}")))?;
    let _ = fs::remove_file(&compressed);
    let got = fs::metadata(&tmp).map(|m| m.len()).unwrap_or(0);
    if !res.status.success() || got != u64::from(size) {
        return Err(LabError::Failed(format!(
            "{tool} -dc of the bzImage payload gave {got} bytes (want {size}), {}: {}",
            res.status,
            String::from_utf8_lossy(&res.stderr).trim()
        )));
    }
    fs::rename(&tmp, &out).map_err(|e| LabError::Failed(format!("{}: {e}", out.display())))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_depends_output() {
        let text = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n";
        assert_eq!(
            parse_apt_depends(text).as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        let text =
            "x\n  PreDepends: foo\n |Depends: <linux-image-6.2-cloud-amd64>\n  Depends: bar\n";
        assert_eq!(
            parse_apt_depends(text).as_deref(),
            Some("linux-image-6.2-cloud-amd64")
        );
        assert_eq!(parse_apt_depends("W: Unable to locate package\n"), None);
    }

    #[test]
    fn bzimage_payload_is_found_and_its_size_trailer_split_off() {
        let mut bz = vec![0u8; 0x1000];
        bz[0x1f1] = 3; // setup_sects: payload area starts at 4 * 512
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        bz[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        bz[0x248..0x24c].copy_from_slice(&0x10u32.to_le_bytes()); // payload_offset
        bz[0x24c..0x250].copy_from_slice(&16u32.to_le_bytes()); // payload_length
        let p = 4 * 512 + 0x10;
        bz[p..p + 12].copy_from_slice(&[0x02, 0x21, 0x4c, 0x18, 9, 9, 9, 9, 9, 9, 9, 9]);
        bz[p + 12..p + 16].copy_from_slice(&53_243_444u32.to_le_bytes());
        let (tool, payload, size) = bzimage_payload(&bz).unwrap();
        assert_eq!((tool, payload.len(), size), ("lz4", 12, 53_243_444));
        bz[p] = 0x1f;
        bz[p + 1] = 0x8b;
        assert_eq!(bzimage_payload(&bz).unwrap().0, "gzip");
        bz[0x202] = b'X';
        assert!(bzimage_payload(&bz).is_err());
    }

    #[test]
    fn module_names_and_versions() {
        assert_eq!(module_name("kvm-amd.ko").as_deref(), Some("kvm_amd"));
        assert_eq!(module_name("kvm.ko.xz").as_deref(), Some("kvm"));
        assert_eq!(module_name("modules.dep"), None);
        let mut v = [
            "linux-image-6.1.0-10-cloud-amd64",
            "linux-image-6.1.0-9-cloud-amd64",
        ];
        v.sort_by_key(|a| version_key(a));
        assert_eq!(v[1], "linux-image-6.1.0-10-cloud-amd64");
    }
}
