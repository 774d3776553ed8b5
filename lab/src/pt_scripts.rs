//! The PCI passthrough scenarios (issue 11). They run in a second L1 of
//! their own: a q35 machine with QEMU's Intel IOMMU (`intel-iommu`,
//! `caching-mode=on`, which VFIO inside a VM needs) and an NVMe controller
//! backed by [`nvme_image`], booted with `intel_iommu=on`. The first L1 stays
//! as it was.
//!
//! - `passthrough`: L1 reads the pattern through its own nvme driver, then
//!   stages the "not bound to vfio-pci" and "group in use" errors, binds the
//!   controller to vfio-pci and runs subzero with `--device`. L2 finds
//!   `/dev/nvme0n1`, prints the pattern's SHA-256 and its NVMe interrupts,
//!   runs the benchmark, writes [`WRITE_MARK`] at block [`WRITE_BLOCK`] and
//!   powers off. L1 rebinds the controller to nvme and reads the block back.
//! - `passthrough-virtio`: the same benchmark on a copy of the image through
//!   virtio-blk, for the comparison.
//! - `passthrough-errors` (in the first L1, which has no IOMMU): `--device`
//!   on one of L1's PCI devices gets the "no IOMMU" message.

use std::path::{Path, PathBuf};

use crate::payload::Payload;
use crate::LabError;

/// The NVMe image: this many MiB.
pub const IMAGE_MIB: usize = 64;
/// Seed of the pattern the host writes over the whole image.
pub const PATTERN_SEED: u64 = 0x0e11_2026;
/// MiB of the pattern that L1 and L2 hash.
pub const HASHED_MIB: usize = 16;
/// The 4 KiB block L2 writes (at 32 MiB, inside the pattern).
pub const WRITE_BLOCK: u64 = 8192;
/// What L2 writes there.
pub const WRITE_MARK: &str = "subzero-passthrough-wrote-this";
/// Seconds each random-read run lasts.
pub const RAND_SECS: u32 = 5;

/// Writes the NVMe image (the pattern) into `dir` and returns its path.
pub fn nvme_image(dir: &Path) -> Result<PathBuf, LabError> {
    let path = dir.join("nvme.img");
    let bytes = Payload::bytes(PATTERN_SEED, IMAGE_MIB << 20);
    std::fs::write(&path, bytes).map_err(|e| crate::failed(format!("{}: {e}", path.display())))?;
    Ok(path)
}

/// The SHA-256 that L1 and L2 should print for the hashed part.
pub fn pattern_sha256() -> String {
    crate::payload::payload_sha256(PATTERN_SEED, HASHED_MIB << 20)
}

/// QEMU arguments of the IOMMU L1, besides the common ones.
pub fn qemu_args(image: &Path) -> Vec<String> {
    vec![
        "-M".into(),
        "q35,kernel-irqchip=split".into(),
        "-device".into(),
        "intel-iommu,intremap=on,caching-mode=on".into(),
        "-drive".into(),
        format!("file={},if=none,id=nv0,format=raw", image.display()),
        "-device".into(),
        "nvme,serial=subzero-pt,drive=nv0".into(),
    ]
}

/// Kernel command line words of the IOMMU L1.
pub const L1_CMDLINE_EXTRA: &str = "intel_iommu=on";

/// L1, before subzero: find the controller, read the pattern, stage two
/// errors, bind it to vfio-pci, and make `/tmp/pt-dev` point at it.
pub const PT_BEFORE: &str = r#"sz_pt=
for d in /sys/bus/pci/devices/*; do [ "$(cat $d/class)" = 0x010802 ] && sz_pt=$d; done
sz_bdf=${sz_pt##*/}
sz_check NVME "$sz_bdf"
sz_l1_wait() { n=0; while [ ! -b "$1" ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done; }
sz_l1_wait /dev/nvme0n1
sz_check L1_SHA "$(dd if=/dev/nvme0n1 bs=1M count=16 2>/dev/null | sha256sum | cut -d' ' -f1)"
dd if=/dev/nvme0n1 of=/tmp/pt-copy.img bs=1M count=64 2>/dev/null
sz_check ERR_NOT_BOUND "$(/bin/subzero run --kernel /l2/bzImage --device path=$sz_pt 2>&1)"
echo "$sz_bdf" >"$sz_pt/driver/unbind"
echo vfio-pci >"$sz_pt/driver_override"
echo "$sz_bdf" >/sys/bus/pci/drivers_probe
sz_check DRIVER "$(basename "$(readlink "$sz_pt/driver")")"
sz_grp=$(basename "$(readlink "$sz_pt/iommu_group")")
sz_check VFIO "$(ls /dev/vfio | tr '\n' ' ')"
(exec 9<>/dev/vfio/$sz_grp; sleep 30) &
sz_hold=$!
sleep 1
sz_check ERR_IN_USE "$(/bin/subzero run --kernel /l2/bzImage --device path=$sz_pt 2>&1)"
kill $sz_hold 2>/dev/null
wait $sz_hold 2>/dev/null
ln -sfn "$sz_pt" /tmp/pt-dev
"#;

/// L1, before `passthrough-virtio`: the image copy (made by `passthrough`,
/// or here when it ran alone).
pub const VIRTIO_BEFORE: &str = r#"[ -e /tmp/pt-copy.img ] || dd if=/dev/nvme0n1 of=/tmp/pt-copy.img bs=1M count=64 2>/dev/null
"#;

/// L1, after subzero: give the controller back to nvme and read L2's block.
pub const PT_AFTER: &str = r#"echo "$sz_bdf" >"$sz_pt/driver/unbind"
echo >"$sz_pt/driver_override"
echo "$sz_bdf" >/sys/bus/pci/drivers_probe
sz_l1_wait /dev/nvme0n1
sz_check REBOUND "$(basename "$(readlink "$sz_pt/driver")")"
sz_check READBACK "$(dd if=/dev/nvme0n1 bs=4096 skip=8192 count=1 2>/dev/null | head -c 30)"
"#;

/// L1, for `passthrough-errors`: `--device` on a host without an IOMMU.
pub const ERRORS_BEFORE: &str = r#"sz_any=$(ls -d /sys/bus/pci/devices/* | tail -n 1)
sz_check ERR_NO_IOMMU "$(/bin/subzero run --kernel /l2/bzImage --device path=$sz_any 2>&1)"
sz_check ERR_NOT_PCI "$(/bin/subzero run --kernel /l2/bzImage --device path=/sys/bus/pci 2>&1)"
sz_check ERR_MISSING "$(/bin/subzero run --kernel /l2/bzImage --device path=/sys/bus/pci/devices/0000:7f:1f.7 2>&1)"
"#;

/// L2's part of `passthrough` and `passthrough-virtio`: hash, interrupts,
/// the benchmark on DEV, and (passthrough only) the write.
pub const L2_CASES: &str = r#"passthrough)
    # Warnings on the console from here (after boot, so the exit counts stay
    # comparable): an nvme timeout then shows, and is not taken for a frozen L1.
    echo 5 >/proc/sys/kernel/printk
    sz_wait /dev/nvme0n1
    echo "@@L2 SHA $(dd if=/dev/nvme0n1 bs=1M count=16 2>/dev/null | sz_sha)"
    grep -i nvme /proc/interrupts | while IFS= read -r l; do echo "@@L2 NVME_IRQ $l"; done
    echo "@@L2 BENCH_STARTS"
    echo "@@L2 BENCH_RAND $(lab-peer rand read /dev/nvme0n1 5 2>&1)"
    echo "@@L2 BENCH_SEQ $(lab-peer seq read /dev/nvme0n1 32M 2>&1)"
    printf 'subzero-passthrough-wrote-this' | dd of=/dev/nvme0n1 bs=4096 seek=8192 conv=sync,fsync 2>/dev/null
    sync
    echo "@@L2 WROTE $?"
    ;;
passthrough-virtio)
    sz_load virtio_mmio virtio_blk
    sz_wait /dev/vda
    echo "@@L2 SHA $(dd if=/dev/vda bs=1M count=16 2>/dev/null | sz_sha)"
    echo "@@L2 BENCH_RAND $(lab-peer rand read /dev/vda 5 2>&1)"
    echo "@@L2 BENCH_SEQ $(lab-peer seq read /dev/vda 32M 2>&1)"
    ;;
passthrough-errors)
    echo "@@L2 PCI_DEVICES $(ls /sys/bus/pci/devices 2>/dev/null | tr '\n' ' ')"
    dmesg | grep -E 'MMCONFIG|ECAM|PCI: Using|PCI Root|PCI host bridge' | while IFS= read -r l; do echo "@@L2 DMESG $l"; done
    ;;
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scripts::{L1_L2_KERNEL, L1_SUBZERO, LAB_PEER};

    #[test]
    fn the_scripts_use_the_lab_paths_and_constants() {
        for s in [PT_BEFORE, ERRORS_BEFORE] {
            assert!(s.contains(&format!(
                "{L1_SUBZERO} run --kernel {L1_L2_KERNEL} --device"
            )));
        }
        assert!(LAB_PEER.ends_with("/lab-peer"));
        assert!(L2_CASES.contains(&format!("lab-peer rand read /dev/nvme0n1 {RAND_SECS}")));
        assert!(L2_CASES.contains(&format!("printf '{WRITE_MARK}'")));
        assert!(L2_CASES.contains(&format!("seek={WRITE_BLOCK}")));
        assert!(PT_AFTER.contains(&format!("skip={WRITE_BLOCK}")));
        assert!(PT_AFTER.contains(&format!("head -c {}", WRITE_MARK.len())));
        assert!(PT_BEFORE.contains(&format!("count={HASHED_MIB} ")));
        assert!(PT_BEFORE.contains(&format!("count={IMAGE_MIB} ")));
        let args = qemu_args(Path::new("/x/nvme.img")).join(" ");
        assert!(args.contains("intel-iommu,intremap=on,caching-mode=on"));
        assert!(args.contains("file=/x/nvme.img,if=none,id=nv0,format=raw"));
    }
}
