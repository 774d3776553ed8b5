//! The scenarios and the two /init scripts (busybox sh) that run them.
//!
//! Marker protocol, one marker per console line (a marker may be preceded by
//! other text on its line; the parser looks for it anywhere):
//! - L1 (the QEMU guest that runs subzero): `@@L1 INIT`, `@@L1 KVM present`,
//!   `@@L1 BEGIN <name>`, `@@L1 START <name>` (printed immediately before
//!   subzero is exec'd), `@@L1 END <name> rc=<exit code>`,
//!   `@@L1 STDERR <name> | <line>`, `@@L1 ALL_DONE`; when subzero survives
//!   its timeout (stuck in the kernel): `@@L1 HUNG <name> pid=<pid>`,
//!   `@@L1 DIAG <name> | <task state and kernel stack>` and `rc=hung`.
//! - L2 (the guest subzero boots): `@@L2 INIT scenario=<name>` first, then
//!   `@@L2 <KEY> <value>` facts, then `@@L2 POWEROFF`.
//! - A scenario's L1 driver ([`Scenario::driver`]) adds its own lines:
//!   `@@L1 STEP`, `@@L1 API` and `@@L1 CONSOLE` (see [`crate::api_scripts`]).

/// One L2 boot under subzero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scenario {
    /// Name, passed to the L2 init as `sz_scenario=<name>`.
    pub name: &'static str,
    /// `--vcpus`.
    pub vcpus: u32,
    /// `--memory` in MiB.
    pub memory_mib: u32,
    /// Whether L1 feeds subzero's stdin (after the guest's READY marker).
    pub stdin_handshake: bool,
    /// The L2 kernel inside L1: [`L1_L2_KERNEL`] (bzImage), [`L1_VMLINUX`]
    /// (ELF with its PVH note) or [`L1_VMLINUX_NOPVH`] (PVH note hidden).
    pub kernel: &'static str,
    /// More `subzero run` arguments.
    pub extra: &'static [&'static str],
    /// Instead of booting L2, run `subzero bench exits` in L1.
    pub bench: bool,
    /// The L2 initramfs inside L1: [`L1_L2_INITRD`], or [`L1_ROOTFS_INITRD`]
    /// for the disk root file system.
    pub initrd: &'static str,
    /// More words for the L2 kernel command line.
    pub cmdline_extra: &'static str,
    /// L1 shell run after `@@L1 BEGIN` and before subzero starts (`$name` is
    /// the scenario): prepares images, TAP devices, background helpers.
    pub before: &'static str,
    /// L1 shell run after subzero has exited: reports what L1 sees with
    /// `sz_check KEY VALUE` (`@@L1 CHECK <name> <KEY> <value>`).
    pub after: &'static str,
    /// Files L1 must carry for this scenario (beyond the common ones).
    pub assets: &'static [Asset],
    /// Not run unless named in `SUBZERO_LAB_SCENARIOS`.
    pub opt_in: bool,
    /// Seconds for this scenario if more than the lab's per-scenario timeout.
    pub min_timeout: u64,
    /// An L1 shell script run (under the scenario's timeout, its stdout on
    /// L1's console) in place of one VMM command: it starts and drives VMMs
    /// itself, e.g. through their API sockets ([`crate::api_scripts`]).
    /// L1's init writes it to `/tmp/<name>.sh` with the variables
    /// [`crate::api_scripts::driver_file`] defines.
    pub driver: &'static str,
    /// Runs in the second L1, the one with an IOMMU and an NVMe controller
    /// to pass through ([`crate::pt_scripts`]).
    pub iommu: bool,
}

/// Files that only some scenarios need in L1's initramfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asset {
    /// [`L1_BLOCK_IMAGE`]: ext4 holding `/known.bin` ([`KNOWN_FILE`]).
    BlockImage,
    /// [`L1_ROOTFS_IMAGE`] (ext4 with busybox and [`ROOTFS_INIT`] as
    /// `/sbin/init`) and [`L1_ROOTFS_INITRD`] (loads virtio_blk and
    /// switches to it).
    Rootfs,
    /// The host's `qemu-system-x86_64` with the libraries `ldd` lists, at
    /// the same paths, and SeaBIOS's `bios-microvm.bin`.
    Qemu,
    /// The host's `/usr/bin/curl` with the libraries `ldd` lists.
    Curl,
    /// The peer Firecracker binary ([`L1_FIRECRACKER`]) with its
    /// libraries, when the host has one (see `SUBZERO_LAB_FIRECRACKER`),
    /// for `api-bench`, `boot-bench` and `virtio-bench`.
    Firecracker,
    /// Debian's perf ([`L1_PERF`], package `linux-perf`) with the libraries
    /// `ldd` lists, when the host has it.
    Perf,
    /// The soak's `/l2/soak.env` and the host's e2fsck with its libraries
    /// ([`crate::jail_scripts`]).
    Soak,
    /// The virtio benchmark's `/l2/vbench.env` (its rounds,
    /// [`crate::vbench_scripts`]).
    VirtioBench,
}

/// The plain boot: 1 vCPU, 256 MiB, the bzImage. Scenarios differ from it.
const BOOT: Scenario = Scenario {
    name: "boot",
    vcpus: 1,
    memory_mib: 256,
    stdin_handshake: false,
    kernel: L1_L2_KERNEL,
    extra: &[],
    bench: false,
    initrd: L1_L2_INITRD,
    cmdline_extra: "",
    before: "",
    after: "",
    assets: &[],
    opt_in: false,
    min_timeout: 0,
    driver: "",
    iommu: false,
};

/// All scenarios, in the order L1 runs them.
///
/// `bench` (`subzero bench exits` on real SVM) is opt-in, with
/// `SUBZERO_LAB_SCENARIOS=bench`: in L1 its "hlt + irqfd wake" case loses a
/// wakeup in most runs and then hangs until the scenario timeout. The guest
/// halts with `sti; hlt` and an irqfd interrupt must wake it; TCG's SVM has
/// no NRIPS, and L1's KVM then appears to miss the interrupt that arrives
/// in the STI shadow. A Linux guest does the same but a later timer wakes it.
pub const SCENARIOS: &[Scenario] = &[
    BOOT,
    Scenario {
        name: "smp",
        vcpus: 4,
        ..BOOT
    },
    Scenario {
        name: "memory",
        memory_mib: 512,
        ..BOOT
    },
    Scenario {
        name: "panic",
        ..BOOT
    },
    Scenario {
        name: "stdin",
        stdin_handshake: true,
        ..BOOT
    },
    Scenario {
        name: "vmlinux-pvh",
        kernel: L1_VMLINUX,
        ..BOOT
    },
    Scenario {
        name: "vmlinux-64",
        kernel: L1_VMLINUX_NOPVH,
        ..BOOT
    },
    Scenario {
        name: "stats",
        vcpus: 2,
        extra: &["--stats"],
        ..BOOT
    },
    Scenario {
        name: "live",
        extra: &["--stats-socket", "/tmp/live.sock"],
        ..BOOT
    },
    Scenario {
        name: "hw-exits",
        driver: crate::hw_scripts::HW_EXITS_DRIVER,
        assets: &[Asset::Perf],
        // Five boots of at most BOOT_TIMEOUT_SECS each, and perf's report.
        min_timeout: 7 * crate::hw_scripts::BOOT_TIMEOUT_SECS + 30,
        ..BOOT
    },
    Scenario {
        name: "block",
        extra: &["--disk", "path=/tmp/block.img", "--stats"],
        before: "cp /l2/block.img /tmp/block.img\n",
        after: r#"sz_inspect /tmp/block.img WRITTEN_SHA256 'sha256sum < written.bin | cut -d" " -f1'
rm -f /tmp/block.img
"#,
        assets: &[Asset::BlockImage],
        ..BOOT
    },
    Scenario {
        name: "block-ro",
        extra: &["--disk", "path=/tmp/block-ro.img,readonly=on"],
        before: r#"cp /l2/block.img /tmp/block-ro.img
sz_check SHA256_BEFORE "$(sha256sum < /tmp/block-ro.img | cut -d' ' -f1)"
"#,
        after: r#"sz_check SHA256_AFTER "$(sha256sum < /tmp/block-ro.img | cut -d' ' -f1)"
rm -f /tmp/block-ro.img
"#,
        assets: &[Asset::BlockImage],
        ..BOOT
    },
    Scenario {
        name: "block-rate",
        extra: &["--disk", "path=/l2/block.img,readonly=on,bw=4M"],
        assets: &[Asset::BlockImage],
        ..BOOT
    },
    Scenario {
        name: "rootfs",
        extra: &["--disk", "path=/tmp/rootfs.img"],
        initrd: L1_ROOTFS_INITRD,
        cmdline_extra: "root=/dev/vda",
        before: "cp /l2/rootfs.img /tmp/rootfs.img\n",
        after: r#"sz_inspect /tmp/rootfs.img ROOT_WRITTEN 'cat etc/sz-written'
rm -f /tmp/rootfs.img
"#,
        assets: &[Asset::Rootfs],
        ..BOOT
    },
    Scenario {
        name: "net",
        extra: &["--net", "tap=sztap0,mac=52:54:00:12:34:56"],
        before: NET_BEFORE,
        after: NET_AFTER,
        ..BOOT
    },
    Scenario {
        name: "net-mq",
        vcpus: 2,
        extra: &["--net", "tap=szmq0,mac=52:54:00:12:34:57,queues=2"],
        before: NET_MQ_BEFORE,
        after: NET_MQ_AFTER,
        // Two pairs moved the 16 MiB at 0.6 to 3.6 MiB/s in L1 (one pair:
        // about 15): room for both ways at the slowest seen.
        min_timeout: 180,
        ..BOOT
    },
    Scenario {
        name: "vsock",
        extra: &["--vsock", "cid=3,uds=/tmp/vsock.sock"],
        before: VSOCK_BEFORE,
        after: VSOCK_AFTER,
        ..BOOT
    },
    Scenario {
        name: "rng",
        extra: &["--rng"],
        ..BOOT
    },
    Scenario {
        name: "api",
        driver: crate::api_scripts::API_DRIVER,
        before: crate::api_scripts::API_BEFORE,
        after: crate::api_scripts::API_AFTER,
        assets: &[Asset::BlockImage, Asset::Curl],
        min_timeout: 300,
        ..BOOT
    },
    Scenario {
        name: "passthrough-errors",
        before: crate::pt_scripts::ERRORS_BEFORE,
        ..BOOT
    },
    Scenario {
        name: "passthrough",
        extra: &["--device", "path=/tmp/pt-dev", "--stats"],
        before: crate::pt_scripts::PT_BEFORE,
        after: crate::pt_scripts::PT_AFTER,
        iommu: true,
        min_timeout: 240,
        ..BOOT
    },
    Scenario {
        name: "passthrough-virtio",
        extra: &["--disk", "path=/tmp/pt-copy.img,readonly=on", "--stats"],
        before: crate::pt_scripts::VIRTIO_BEFORE,
        iommu: true,
        min_timeout: 240,
        ..BOOT
    },
    Scenario {
        name: "bench",
        memory_mib: 0,
        kernel: "",
        bench: true,
        opt_in: true,
        ..BOOT
    },
    Scenario {
        name: "virtio-bench",
        vcpus: crate::vbench_scripts::VCPUS,
        memory_mib: crate::vbench_scripts::MEMORY_MIB,
        cmdline_extra: "reboot=k",
        driver: crate::vbench_scripts::VIRTIO_BENCH_DRIVER,
        before: crate::vbench_scripts::VIRTIO_BENCH_BEFORE,
        after: crate::vbench_scripts::VIRTIO_BENCH_AFTER,
        assets: &[
            Asset::Qemu,
            Asset::Firecracker,
            Asset::Perf,
            Asset::VirtioBench,
        ],
        opt_in: true,
        min_timeout: crate::vbench_scripts::TIMEOUT_SECS,
        ..BOOT
    },
    Scenario {
        name: "api-bench",
        driver: crate::api_scripts::API_BENCH_DRIVER,
        after: "sz_reap\nrm -f /tmp/bench.*\n",
        assets: &[Asset::Firecracker],
        opt_in: true,
        min_timeout: 1200,
        ..BOOT
    },
    Scenario {
        name: "boot-bench",
        vcpus: crate::boot_scripts::VCPUS,
        memory_mib: crate::boot_scripts::MEMORY_MIB,
        cmdline_extra: "reboot=k",
        driver: crate::boot_scripts::BOOT_BENCH_DRIVER,
        after: "sz_reap\nrm -f /tmp/bb.*\n",
        assets: &[Asset::Qemu, Asset::Firecracker, Asset::Perf],
        opt_in: true,
        // Every boot at its timeout, and two perf reports.
        min_timeout: crate::boot_scripts::TIMEOUT_SECS,
        ..BOOT
    },
    Scenario {
        name: "jail",
        driver: crate::jail_scripts::JAIL_DRIVER,
        before: crate::jail_scripts::JAIL_BEFORE,
        after: crate::jail_scripts::JAIL_AFTER,
        assets: &[Asset::BlockImage],
        min_timeout: 180,
        ..BOOT
    },
    Scenario {
        name: "soak",
        driver: crate::jail_scripts::SOAK_DRIVER,
        before: crate::jail_scripts::SOAK_BEFORE,
        after: crate::jail_scripts::SOAK_AFTER,
        assets: &[Asset::BlockImage, Asset::Soak],
        opt_in: true,
        min_timeout: 1800,
        ..BOOT
    },
];

/// Size of the virtio benchmark's disk and of its sequential runs
/// ([`crate::vbench_scripts`]).
pub const BENCH_BYTES: &str = "64M";
/// Size of each of the virtio benchmark's TCP transfers: about 10 s each
/// way under Firecracker in L1, 3 under QEMU.
pub const BENCH_TCP_BYTES: &str = "32M";

/// The net-mq scenario's L1 side: no TAP yet, so subzero creates `szmq0`
/// as a multi-queue TAP with one queue per pair; a background job gives it
/// 169.254.0.1/16 once it appears and then starts the net scenario's two
/// servers on it.
const NET_MQ_BEFORE: &str = r#"(
    n=0
    while [ ! -e /sys/class/net/szmq0 ] && [ $n -lt 1200 ]; do sleep 0.1; n=$((n + 1)); done
    ip addr add 169.254.0.1/16 dev szmq0
    ip link set szmq0 up
    lab-peer gen $SZ_NET_FILE | lab-peer listen tcp:169.254.0.1:8000 --timeout $SZ_TIMEOUT >/dev/null 2>/tmp/net.down.err &
    sz_track $!
    lab-peer listen tcp:169.254.0.1:8001 --timeout $SZ_TIMEOUT </dev/null >/tmp/net.up.bin 2>/tmp/net.up.err &
    sz_track $!
) &
sz_track $!
"#;
const NET_MQ_AFTER: &str = r#"sz_reap
sz_check UPLOAD_SHA256 "$(sha256sum < /tmp/net.up.bin | cut -d' ' -f1)"
sz_check SERVER_DOWN "$(cat /tmp/net.down.err)"
sz_check SERVER_UP "$(cat /tmp/net.up.err)"
rm -f /tmp/net.up.bin
"#;

/// The net scenario's L1 side: a persistent TAP with 169.254.0.1/16 (busybox
/// `tunctl`; subzero opens it by name), a server that sends [`NET_FILE`] on
/// port 8000, and one that stores what it receives on port 8001.
const NET_BEFORE: &str = r#"tunctl -t sztap0 >/dev/null
ip addr add 169.254.0.1/16 dev sztap0
ip link set sztap0 up
lab-peer gen $SZ_NET_FILE | lab-peer listen tcp:169.254.0.1:8000 --timeout $SZ_TIMEOUT >/dev/null 2>/tmp/net.down.err &
sz_track $!
lab-peer listen tcp:169.254.0.1:8001 --timeout $SZ_TIMEOUT </dev/null >/tmp/net.up.bin 2>/tmp/net.up.err &
sz_track $!
"#;

const NET_AFTER: &str = r#"sz_reap
sz_check UPLOAD_SHA256 "$(sha256sum < /tmp/net.up.bin | cut -d' ' -f1)"
sz_check SERVER_DOWN "$(cat /tmp/net.down.err)"
sz_check SERVER_UP "$(cat /tmp/net.up.err)"
rm -f /tmp/net.up.bin
tunctl -d sztap0 >/dev/null
"#;

/// The vsock scenario's L1 side, one step after the other: connect through
/// subzero's Unix socket to the guest's listener on port 5000 (retrying
/// until the guest listens), exchange 1 MiB each way; only then listen on
/// `/tmp/vsock.sock_5001` for the guest's own connection. The guest's
/// connection succeeding thus also proves L1 had all of the first stream.
const VSOCK_BEFORE: &str = r#"rm -f /tmp/vsock.sock /tmp/vsock.sock_5001
(
    lab-peer gen $SZ_VSOCK_A_HOST | lab-peer connect vsock-uds:/tmp/vsock.sock:5000 --retry $SZ_TIMEOUT >/tmp/vs.a.bin 2>/tmp/vs.a.err &
    sz_track $!
    wait $!
    lab-peer gen $SZ_VSOCK_B_HOST | lab-peer listen unix:/tmp/vsock.sock_5001 --timeout $SZ_TIMEOUT >/tmp/vs.b.bin 2>/tmp/vs.b.err &
    sz_track $!
    wait $!
) &
sz_vsock_job=$!
"#;

const VSOCK_AFTER: &str = r#"sz_reap $sz_vsock_job
sz_check A_OK "$(grep '^lab-peer: OK' /tmp/vs.a.err)"
sz_check A_SHA256 "$(sha256sum < /tmp/vs.a.bin | cut -d' ' -f1)"
sz_check B_SHA256 "$(sha256sum < /tmp/vs.b.bin | cut -d' ' -f1)"
sz_check A_LOG "$(cat /tmp/vs.a.err)"
sz_check B_LOG "$(cat /tmp/vs.b.err)"
rm -f /tmp/vs.a.bin /tmp/vs.b.bin
"#;

/// A payload that L1 or L2 makes with `lab-peer gen $SZ_<VAR>` and whose
/// SHA-256 the host computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blob {
    /// Shell variable (without `SZ_`) holding `"<seed> <bytes>"`.
    pub var: &'static str,
    /// Generator seed.
    pub seed: u64,
    /// Length in bytes.
    pub bytes: usize,
}

impl Blob {
    /// The SHA-256 the VMs should print for it.
    pub fn sha256(&self) -> String {
        crate::payload::payload_sha256(self.seed, self.bytes)
    }

    /// The bytes themselves (for disk images built on the host).
    pub fn data(&self) -> Vec<u8> {
        crate::payload::Payload::bytes(self.seed, self.bytes)
    }
}

/// `/known.bin` in the block image.
pub const KNOWN_FILE: Blob = Blob {
    var: "KNOWN_FILE",
    seed: 1001,
    bytes: 1 << 20,
};
/// What the block scenario's guest writes to `/written.bin`.
pub const WRITTEN_FILE: Blob = Blob {
    var: "WRITTEN_FILE",
    seed: 1002,
    bytes: 1 << 20,
};
/// What L1 serves to the net scenario's guest (and gets back).
pub const NET_FILE: Blob = Blob {
    var: "NET_FILE",
    seed: 1003,
    bytes: 16 << 20,
};
/// vsock, connection A (L1 connects): L1's stream.
pub const VSOCK_A_HOST: Blob = Blob {
    var: "VSOCK_A_HOST",
    seed: 1004,
    bytes: 1 << 20,
};
/// vsock, connection A: the guest's stream.
pub const VSOCK_A_GUEST: Blob = Blob {
    var: "VSOCK_A_GUEST",
    seed: 1005,
    bytes: 1 << 20,
};
/// vsock, connection B (the guest connects): L1's stream.
pub const VSOCK_B_HOST: Blob = Blob {
    var: "VSOCK_B_HOST",
    seed: 1006,
    bytes: 1 << 20,
};
/// vsock, connection B: the guest's stream.
pub const VSOCK_B_GUEST: Blob = Blob {
    var: "VSOCK_B_GUEST",
    seed: 1007,
    bytes: 1 << 20,
};
/// The api scenario's guest writes it to its disk before the snapshot and
/// reads it back after the restore.
pub const API_FILE: Blob = Blob {
    var: "API_FILE",
    seed: 1008,
    bytes: 1 << 20,
};
/// api: what L1 sends to the restored guest's vsock listener.
pub const API_VSOCK_HOST: Blob = Blob {
    var: "API_VSOCK_HOST",
    seed: 1009,
    bytes: 256 << 10,
};
/// api: what the restored guest's vsock listener sends to L1.
pub const API_VSOCK_GUEST: Blob = Blob {
    var: "API_VSOCK_GUEST",
    seed: 1010,
    bytes: 256 << 10,
};
/// api: what L1 sends to the restored guest's TCP listener.
pub const API_TCP_HOST: Blob = Blob {
    var: "API_TCP_HOST",
    seed: 1011,
    bytes: 256 << 10,
};
/// api: what the restored guest's TCP listener sends to L1.
pub const API_TCP_GUEST: Blob = Blob {
    var: "API_TCP_GUEST",
    seed: 1012,
    bytes: 256 << 10,
};
/// Every payload, defined as shell variables in both init scripts.
pub const BLOBS: &[Blob] = &[
    KNOWN_FILE,
    WRITTEN_FILE,
    NET_FILE,
    VSOCK_A_HOST,
    VSOCK_A_GUEST,
    VSOCK_B_HOST,
    VSOCK_B_GUEST,
    API_FILE,
    API_VSOCK_HOST,
    API_VSOCK_GUEST,
    API_TCP_HOST,
    API_TCP_GUEST,
];

pub(crate) fn blob_vars() -> String {
    let mut s: String = BLOBS
        .iter()
        .map(|b| format!("SZ_{}='{} {}'\n", b.var, b.seed, b.bytes))
        .collect();
    s.push_str(&format!("SZ_BENCH_BYTES={BENCH_BYTES}\n"));
    s.push_str(&format!("SZ_BENCH_TCP_BYTES={BENCH_TCP_BYTES}\n"));
    s
}

/// Exits per run and rounds of `subzero bench exits` in the lab, where a
/// userspace exit costs about 100 us and an irqfd-woken HLT about 300 us.
pub const BENCH_ARGS: &[&str] = &["bench", "exits", "--exits", "500", "--rounds", "3"];

/// Where things live inside L1.
pub const L1_SUBZERO: &str = "/bin/subzero";
/// QEMU inside L1 (the host's binary, at the same path).
pub const L1_QEMU: &str = "/usr/bin/qemu-system-x86_64";
/// SeaBIOS for QEMU's microvm machine, inside L1 (the host's path).
pub const L1_MICROVM_BIOS: &str = "/usr/share/seabios/bios-microvm.bin";
/// The L2 kernel inside L1.
pub const L1_L2_KERNEL: &str = "/l2/bzImage";
/// The ELF vmlinux extracted from the bzImage, inside L1.
pub const L1_VMLINUX: &str = "/l2/vmlinux";
/// The same vmlinux with its PVH note's type overwritten (made by L1's init),
/// so a loader must use the 64-bit entry point.
pub const L1_VMLINUX_NOPVH: &str = "/l2/vmlinux-nopvh";
/// The L2 initramfs inside L1.
pub const L1_L2_INITRD: &str = "/l2/initrd.cpio.gz";
/// The rootfs scenario's initramfs: only what mounting `root=` needs.
pub const L1_ROOTFS_INITRD: &str = "/l2/rootfs-initrd.cpio.gz";
/// The block scenarios' ext4 image (L1 copies it before each use).
pub const L1_BLOCK_IMAGE: &str = "/l2/block.img";
/// The rootfs scenario's ext4 image.
pub const L1_ROOTFS_IMAGE: &str = "/l2/rootfs.img";
/// The helper binary, in L1 and in both L2 initramfs images.
pub const LAB_PEER: &str = "/bin/lab-peer";
/// curl inside L1 (the host's binary, at the same path).
pub const L1_CURL: &str = "/usr/bin/curl";
/// perf inside L1 (the host's binary, at the same path).
pub const L1_PERF: &str = "/usr/bin/perf";
/// The peer Firecracker inside L1.
pub const L1_FIRECRACKER: &str = "/usr/bin/firecracker";

impl Scenario {
    /// The L2 kernel command line.
    pub fn cmdline(&self) -> String {
        let mut c = format!("console=ttyS0 quiet panic=-1 sz_scenario={}", self.name);
        if !self.cmdline_extra.is_empty() {
            c.push(' ');
            c.push_str(self.cmdline_extra);
        }
        c
    }

    /// The command L1 runs: subzero and its arguments (or the driver).
    pub fn command(&self) -> Vec<String> {
        if !self.driver.is_empty() {
            return vec!["/bin/sh".into(), format!("/tmp/{}.sh", self.name)];
        }
        let mut args: Vec<String> = if self.bench {
            let mut v = vec![L1_SUBZERO.to_string()];
            v.extend(BENCH_ARGS.iter().map(|a| a.to_string()));
            return v;
        } else {
            vec![
                L1_SUBZERO.into(),
                "run".into(),
                "--kernel".into(),
                self.kernel.into(),
                "--initrd".into(),
                self.initrd.into(),
                "--cmdline".into(),
                self.cmdline(),
                "--memory".into(),
                format!("{}M", self.memory_mib),
                "--vcpus".into(),
                self.vcpus.to_string(),
            ]
        };
        args.extend(self.extra.iter().map(|a| a.to_string()));
        args
    }
}

pub use crate::l2_scripts::{l2_init, rootfs_initrd_init, ROOTFS_INIT};

pub(crate) fn sh_quote(s: &str) -> String {
    assert!(!s.contains('\''), "cannot quote {s:?}");
    format!("'{s}'")
}

/// The L1 guest's /init: mounts, loads the KVM modules (`modules`, file
/// names under /lib/modules in insmod order), checks /dev/kvm, runs
/// `subzero --version` and then every scenario, each under
/// `timeout -s KILL <timeout_secs>`, and powers off.
///
/// `pvh_note_offset`: where in /l2/vmlinux the PVH note's type field is; when
/// given, L1 makes /l2/vmlinux-nopvh with that field set to 0xff.
pub fn l1_init(
    scenarios: &[Scenario],
    modules: &[String],
    token: &str,
    timeout_secs: u64,
    pvh_note_offset: Option<usize>,
) -> String {
    let mut s = String::from("#!/bin/sh\n");
    s.push_str(&format!("SZ_MODULES={}\n", sh_quote(&modules.join(" "))));
    s.push_str(&format!("SZ_TOKEN={}\n", sh_quote(token)));
    s.push_str(&format!("SZ_TIMEOUT={timeout_secs}\n"));
    s.push_str(&blob_vars());
    s.push_str(
        r#"export PATH=/bin:/sbin:/usr/bin:/usr/sbin
/bin/busybox mkdir -p /proc /sys /dev /tmp /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# As on a systemd host: --stats reads KVM's tracepoints through tracefs.
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
echo "@@L1 INIT uptime=$(cut -d' ' -f1 /proc/uptime)"
if grep -qw svm /proc/cpuinfo; then echo "@@L1 SVM yes"; else echo "@@L1 SVM no"; fi
if grep -qw npt /proc/cpuinfo; then echo "@@L1 NPT yes"; else echo "@@L1 NPT no"; fi
for m in $SZ_MODULES; do
    if out=$(insmod /lib/modules/$m 2>&1); then echo "@@L1 INSMOD $m ok"; else echo "@@L1 INSMOD $m failed: $out"; fi
done
if [ -c /dev/kvm ]; then echo "@@L1 KVM present"; else echo "@@L1 KVM missing"; fi
/bin/subzero --version >/tmp/version 2>&1
rc=$?
echo "@@L1 VERSION rc=$rc $(head -n 1 /tmp/version)"

SZ_MAIN=$$
sz_hung=0
trap 'sz_hung=1' USR1

# sz_watch NAME PID: if subzero (PID) outlives its timeout (it cannot be
# killed, e.g. stuck in the kernel), report each task's state and kernel
# stack, then wake the main shell out of `wait` so the next scenario runs.
sz_watch() {
    sleep $((SZ_TIMEOUT + 15))
    kill -0 $2 2>/dev/null || exit 0
    echo "@@L1 HUNG $1 pid=$2"
    for t in /proc/$2/task/*; do
        echo "@@L1 DIAG $1 | task ${t##*/} state=$(cut -d' ' -f3 $t/stat 2>/dev/null) wchan=$(cat $t/wchan 2>/dev/null)"
        sed "s/^/@@L1 DIAG $1 |   /" $t/stack 2>/dev/null
    done
    kill -USR1 $SZ_MAIN
}

# sz_run NAME MODE SUBZERO-ARGS...   (MODE: plain | handshake | live)
# In live mode, `subzero stat` watches the run's stats socket
# (/tmp/live.sock) and its output follows the run's stderr.
# Runs subzero under `timeout -s KILL`, its stdout (the L2 console) straight
# to this console, its stderr to a file printed after the END marker. In
# handshake mode a reader copies subzero's stdout to the console and writes
# $SZ_TOKEN to subzero's stdin once the guest has printed READY.
sz_run() {
    name=$1
    mode=$2
    shift 2
    rd=
    if [ "$mode" = handshake ]; then
        rm -f /tmp/sin /tmp/sout
        mkfifo /tmp/sin /tmp/sout
        (
            echo "@@L1 START $name"
            exec timeout -s KILL $SZ_TIMEOUT "$@" </tmp/sin >/tmp/sout 2>/tmp/err.$name
        ) &
        pid=$!
        (
            exec 3>/tmp/sin
            sent=0
            while IFS= read -r l || [ -n "$l" ]; do
                echo "$l"
                case "$l" in
                *"@@L2 READY"*)
                    if [ $sent = 0 ]; then
                        echo "$SZ_TOKEN" >&3
                        sent=1
                        echo "@@L1 SENT $name"
                    fi
                    ;;
                esac
            done </tmp/sout
        ) &
        rd=$!
    else
        (
            echo "@@L1 START $name"
            exec timeout -s KILL $SZ_TIMEOUT "$@" </dev/null 2>/tmp/err.$name
        ) &
        pid=$!
        if [ "$mode" = live ]; then
            (
                n=0
                until [ -S /tmp/live.sock ] || [ $n -ge 100 ]; do sleep 0.1; n=$((n + 1)); done
                exec timeout -s KILL $SZ_TIMEOUT /bin/subzero stat /tmp/live.sock >/tmp/stat.$name 2>&1
            ) &
            st=$!
        fi
    fi
    sz_watch $name $pid &
    wd=$!
    sz_hung=0
    wait $pid
    rc=$?
    [ $sz_hung = 1 ] && rc=hung
    kill $wd 2>/dev/null
    if [ -n "$rd" ]; then
        [ $sz_hung = 1 ] && kill $rd 2>/dev/null
        wait $rd
    fi
    echo
    echo "@@L1 END $name rc=$rc"
    while IFS= read -r l || [ -n "$l" ]; do echo "@@L1 STDERR $name | $l"; done </tmp/err.$name
    if [ "$mode" = live ]; then
        wait $st
        while IFS= read -r l || [ -n "$l" ]; do echo "@@L1 STDERR $name | $l"; done </tmp/stat.$name
    fi
}

# sz_check KEY VALUE...: reports what L1 sees for the current scenario.
sz_check() {
    k=$1
    shift
    echo "@@L1 CHECK $name $k $(printf '%s' "$*" | tr '\n' ' ')"
}

# sz_inspect IMAGE KEY COMMAND: loop-mounts the ext4 IMAGE read-only and
# reports the output of the shell COMMAND, run at its root, as KEY.
sz_inspect() {
    mkdir -p /tmp/mnt
    if out=$(mount -t ext4 -o loop,ro "$1" /tmp/mnt 2>&1); then
        sz_check "$2" "$(cd /tmp/mnt && sh -c "$3" 2>&1)"
        umount /tmp/mnt
    else
        sz_check "$2" "mount failed: $out"
    fi
}

# sz_track PID: a background helper that sz_reap stops.
sz_track() { echo "$1" >>/tmp/sz.pids; }

# sz_reap [JOB...]: gives the tracked helpers and JOBs 5 s to finish once
# subzero has exited, then kills whatever is left.
sz_reap() {
    n=0
    while [ $n -lt 50 ]; do
        alive=
        for p in "$@" $(cat /tmp/sz.pids 2>/dev/null); do
            case "$(cut -d' ' -f3 /proc/$p/stat 2>/dev/null)" in "" | Z) ;; *) alive=1 ;; esac
        done
        [ -z "$alive" ] && break
        sleep 0.1
        n=$((n + 1))
    done
    [ $n -ge 50 ] && sz_check REAPED "helpers still running after 5 s were killed"
    kill "$@" $(cat /tmp/sz.pids 2>/dev/null) 2>/dev/null
    wait "$@" 2>/dev/null
    rm -f /tmp/sz.pids
}

"#,
    );
    if let Some(off) = pvh_note_offset {
        s.push_str(&format!(
            r#"cp {vml} {nopvh}
printf '\377' | dd of={nopvh} bs=1 seek={off} conv=notrunc 2>/dev/null
echo "@@L1 NOPVH note type bytes: $(od -An -tx1 -j {off} -N 4 {vml}) -> $(od -An -tx1 -j {off} -N 4 {nopvh})"
"#,
            vml = L1_VMLINUX,
            nopvh = L1_VMLINUX_NOPVH,
        ));
    }
    for sc in scenarios {
        let mode = if sc.stdin_handshake {
            "handshake"
        } else if sc.extra.contains(&"--stats-socket") {
            "live"
        } else {
            "plain"
        };
        let args: Vec<String> = sc.command().iter().map(|a| sh_quote(a)).collect();
        s.push_str(&format!("name={}\necho \"@@L1 BEGIN $name\"\n", sc.name));
        if sc.min_timeout > timeout_secs {
            s.push_str(&format!("SZ_TIMEOUT={}\n", sc.min_timeout));
        }
        if !sc.driver.is_empty() {
            s.push_str(&crate::api_scripts::driver_file(
                sc,
                sc.min_timeout.max(timeout_secs),
            ));
        }
        s.push_str(sc.before);
        s.push_str(&format!("sz_run {} {mode} {}\n", sc.name, args.join(" ")));
        s.push_str(sc.after);
        if sc.min_timeout > timeout_secs {
            s.push_str(&format!("SZ_TIMEOUT={timeout_secs}\n"));
        }
    }
    s.push_str(
        r#"echo "@@L1 ALL_DONE uptime=$(cut -d' ' -f1 /proc/uptime)"
sync
poweroff -f
"#,
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l1_init_defines_variables_before_use_and_runs_each_scenario() {
        let s = l1_init(
            SCENARIOS,
            &["irqbypass.ko".into(), "kvm.ko".into()],
            "sz-abc",
            90,
            Some(1234),
        );
        let vars = s.find("SZ_MODULES='irqbypass.ko kvm.ko'").unwrap();
        assert!(vars < s.find("for m in $SZ_MODULES").unwrap());
        assert!(s.contains("SZ_TOKEN='sz-abc'\n"));
        assert!(s.contains("SZ_TIMEOUT=90\n"));
        assert!(s.contains(
            "sz_run smp plain '/bin/subzero' 'run' '--kernel' '/l2/bzImage' '--initrd' '/l2/initrd.cpio.gz' \
             '--cmdline' 'console=ttyS0 quiet panic=-1 sz_scenario=smp' '--memory' '256M' '--vcpus' '4'\n"
        ));
        assert!(s.contains("sz_run stdin handshake "));
        assert!(s.find("sz_run stdin").unwrap() < s.find("@@L1 ALL_DONE uptime").unwrap());
        assert!(s.starts_with("#!/bin/sh\n"));
        let patch = s
            .find("printf '\\377' | dd of=/l2/vmlinux-nopvh bs=1 seek=1234 conv=notrunc")
            .unwrap();
        assert!(
            patch
                < s.find(
                    "sz_run vmlinux-64 plain '/bin/subzero' 'run' '--kernel' '/l2/vmlinux-nopvh'"
                )
                .unwrap()
        );
        assert!(
            s.contains("sz_run vmlinux-pvh plain '/bin/subzero' 'run' '--kernel' '/l2/vmlinux' ")
        );
    }

    #[test]
    fn virtio_scenarios_run_their_l1_steps_around_the_vmm() {
        let s = l1_init(SCENARIOS, &[], "sz-abc", 60, None);
        assert!(s.contains("SZ_NET_FILE='1003 16777216'\n"));
        let begin = s.find("name=block\necho \"@@L1 BEGIN $name\"\n").unwrap();
        let copy = s.find("cp /l2/block.img /tmp/block.img\n").unwrap();
        let run = s
            .find(
                "sz_run block plain '/bin/subzero' 'run' '--kernel' '/l2/bzImage' '--initrd' \
                 '/l2/initrd.cpio.gz' '--cmdline' 'console=ttyS0 quiet panic=-1 sz_scenario=block' \
                 '--memory' '256M' '--vcpus' '1' '--disk' 'path=/tmp/block.img' '--stats'\n",
            )
            .unwrap();
        let check = s.find("sz_inspect /tmp/block.img WRITTEN_SHA256").unwrap();
        assert!(begin < copy && copy < run && run < check);
        assert!(s.contains(
            "'--initrd' '/l2/rootfs-initrd.cpio.gz' '--cmdline' \
             'console=ttyS0 quiet panic=-1 sz_scenario=rootfs root=/dev/vda'"
        ));
        // The benchmark gets a longer timeout, and the default comes back.
        let run = s
            .find("sz_run virtio-bench plain '/bin/sh' '/tmp/virtio-bench.sh'\n")
            .unwrap();
        let longer = format!("SZ_TIMEOUT={}\n", crate::vbench_scripts::TIMEOUT_SECS);
        let longer = s[..run].rfind(&longer).unwrap();
        assert!(s[longer..run].find("SZ_TIMEOUT=60\n").is_none());
        assert!(s[run..].contains("SZ_TIMEOUT=60\n"));
        assert!(s[longer..run].contains("ip addr add 169.254.0.1/16 dev sztap0\n"));
    }

    #[test]
    fn l2_init_knows_each_modules_dependencies() {
        let mods = [(
            "virtio_blk".to_string(),
            vec![
                "virtio_ring".to_string(),
                "virtio".into(),
                "virtio_blk".into(),
            ],
        )];
        let s = l2_init(&mods);
        assert!(s.starts_with("#!/bin/sh\n"));
        let var = s
            .find("SZ_MOD_virtio_blk='virtio_ring virtio virtio_blk'\n")
            .unwrap();
        assert!(var < s.find("sz_load virtio_mmio virtio_blk").unwrap());
        assert!(s.contains("SZ_WRITTEN_FILE='1002 1048576'\n"));
        for sc in SCENARIOS
            .iter()
            .filter(|s| s.initrd == L1_L2_INITRD && !s.bench)
        {
            let covered = s.contains(&format!("\n{})\n", sc.name))
                || s.contains(&format!("\n{} |", sc.name))
                || s.contains(&format!(" {} |", sc.name))
                || s.contains(&format!("| {})", sc.name))
                || sc.name.starts_with("vmlinux-");
            assert!(covered, "the L2 init has no case for {}", sc.name);
        }
        let r = rootfs_initrd_init(&["virtio_ring".into(), "virtio".into(), "virtio_blk".into()]);
        assert!(r.contains("SZ_MODULES='virtio_ring virtio virtio_blk'\n"));
        assert!(r.contains("exec $bb switch_root /newroot /sbin/init\n"));
    }
}
