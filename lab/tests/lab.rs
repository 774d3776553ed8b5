//! Boots Debian's kernel as L2 under subzero, inside an L1 VM under QEMU
//! TCG with nested SVM. One L1 boot serves every test here.
//!
//! Without qemu-system-x86_64, a static busybox or apt-get these tests print
//! why and pass (skip), unless CI=true, where they fail. Settings:
//! `SUBZERO_LAB_*` environment variables, documented in lab/src/lib.rs.

use std::sync::OnceLock;

use subzero_lab::{images, outcome, run_from_env, scripts, LabError, LabRun, ScenarioRun};

static RUN: OnceLock<Result<LabRun, LabError>> = OnceLock::new();

fn lab() -> Option<&'static LabRun> {
    outcome(RUN.get_or_init(run_from_env))
}

#[test]
fn l1_loads_kvm_amd_and_runs_subzero() {
    let Some(run) = lab() else { return };
    let ctx = || {
        format!(
            "{}\nfull L1 console log: {}",
            run.l1_summary(),
            run.log_path.display()
        )
    };
    assert_eq!(
        run.l1.svm,
        Some(true),
        "L1 has no svm in /proc/cpuinfo\n{}",
        ctx()
    );
    for (m, res) in &run.l1.insmods {
        assert_eq!(res, "ok", "insmod {m} in L1 failed\n{}", ctx());
    }
    assert!(
        !run.l1.insmods.is_empty(),
        "L1 loaded no modules\n{}",
        ctx()
    );
    assert_eq!(
        run.l1.kvm_present,
        Some(true),
        "/dev/kvm missing in L1\n{}",
        ctx()
    );
    let (rc, version) = run.l1.version.clone().unwrap_or((-1, String::new()));
    assert!(
        rc == 0 && !version.trim().is_empty(),
        "`subzero --version` in L1 exited {rc} printing {version:?}\n{}",
        ctx()
    );
    assert!(
        run.l1.all_done_at.is_some(),
        "L1 did not finish its scenarios\n{}",
        ctx()
    );
}

#[test]
fn boot_prints_uname_and_powers_off() {
    let Some(run) = lab() else { return };
    let Some(sc) = run.scenario("boot") else {
        return;
    };
    let ctx = run.context(sc);
    assert_eq!(
        sc.l2("UNAME"),
        Some(run.kernel.version.as_str()),
        "guest's `uname -r` should be the .deb's kernel version\n{ctx}"
    );
    assert!(
        sc.l2("POWEROFF").is_some(),
        "guest did not reach poweroff\n{ctx}"
    );
    assert_eq!(
        sc.exit_code,
        Some(0),
        "subzero should exit 0 after the guest powers off\n{ctx}"
    );
    match (sc.boot_time(), sc.wall_time()) {
        (Some(boot), Some(wall)) => eprintln!(
            "lab: boot scenario: subzero start -> L2 init marker {:.2}s (host side); subzero wall {:.2}s; \
             whole lab {:.1}s",
            boot.as_secs_f64(),
            wall.as_secs_f64(),
            run.total.as_secs_f64()
        ),
        _ => eprintln!("lab: boot scenario: no boot time measured"),
    }
}

#[test]
fn smp_guest_sees_four_online_cpus() {
    let Some(run) = lab() else { return };
    let Some(sc) = run.scenario("smp") else {
        return;
    };
    let ctx = run.context(sc);
    assert_eq!(sc.l2("NPROC"), Some("4"), "guest's nproc\n{ctx}");
    assert_eq!(
        sc.l2("CPU_ONLINE"),
        Some("0-3"),
        "guest's /sys/devices/system/cpu/online\n{ctx}"
    );
    assert_eq!(
        sc.l2("CPUINFO_PROCESSORS"),
        Some("4"),
        "processor lines in the guest's /proc/cpuinfo\n{ctx}"
    );
    assert_eq!(sc.exit_code, Some(0), "subzero exit code\n{ctx}");
}

#[test]
fn memory_guest_sees_512_mib() {
    let Some(run) = lab() else { return };
    let Some(sc) = run.scenario("memory") else {
        return;
    };
    let ctx = run.context(sc);
    let kb: u64 = sc
        .l2("MEMTOTAL_KB")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("guest printed no MemTotal\n{ctx}"));
    let want = 512 * 1024;
    assert!(
        kb.abs_diff(want) * 10 <= want,
        "guest MemTotal {kb} kB is not within 10% of 512 MiB ({want} kB)\n{ctx}"
    );
    assert_eq!(sc.exit_code, Some(0), "subzero exit code\n{ctx}");
}

#[test]
fn panic_makes_subzero_fail_with_a_reason() {
    let Some(run) = lab() else { return };
    let Some(sc) = run.scenario("panic") else {
        return;
    };
    let ctx = run.context(sc);
    assert!(
        sc.l2("PANIC_TRIGGER").is_some(),
        "guest never got to trigger the panic\n{ctx}"
    );
    assert!(
        sc.l2("STILL_ALIVE").is_none(),
        "guest survived sysrq-c\n{ctx}"
    );
    match sc.exit_code {
        Some(0) => panic!("subzero exited 0 although the guest kernel panicked\n{ctx}"),
        Some(137) | None => {
            panic!("subzero did not exit by itself after the guest panicked\n{ctx}")
        }
        Some(_) => {}
    }
    assert!(
        sc.stderr.iter().any(|l| l.to_lowercase().contains("panic")),
        "subzero's stderr has no line mentioning the panic\n{ctx}"
    );
}

#[test]
fn stdin_reaches_the_guest_serial_port() {
    let Some(run) = lab() else { return };
    let Some(sc) = run.scenario("stdin") else {
        return;
    };
    let ctx = run.context(sc);
    assert!(sc.l2("READY").is_some(), "guest never printed READY\n{ctx}");
    let want = format!("[{}]", run.token);
    assert_eq!(
        sc.l2("ECHO"),
        Some(want.as_str()),
        "guest should echo the token fed to subzero's stdin\n{ctx}"
    );
    assert_eq!(sc.exit_code, Some(0), "subzero exit code\n{ctx}");
}

/// Boots the ELF vmlinux (extracted from the bzImage) like the boot scenario.
fn elf_vmlinux_boots(name: &str) {
    let Some(run) = lab() else { return };
    let Some(sc) = run.scenario(name) else { return };
    let ctx = run.context(sc);
    assert_eq!(
        sc.l2("UNAME"),
        Some(run.kernel.version.as_str()),
        "guest's `uname -r` should be the .deb's kernel version\n{ctx}"
    );
    assert_eq!(sc.exit_code, Some(0), "subzero exit code\n{ctx}");
}

#[test]
fn vmlinux_boots_through_its_pvh_note() {
    elf_vmlinux_boots("vmlinux-pvh");
}

#[test]
fn vmlinux_without_pvh_note_boots_at_its_64bit_entry() {
    let Some(run) = lab() else { return };
    if run.scenario("vmlinux-64").is_none() {
        return;
    }
    assert_eq!(
        run.l1.nopvh.as_deref(),
        Some("12 00 00 00 -> ff 00 00 00"),
        "L1 did not hide the PVH note (type 18 -> 255)\nfull L1 console log: {}",
        run.log_path.display()
    );
    elf_vmlinux_boots("vmlinux-64");
}

#[test]
fn stats_show_serial_exits_and_kvm_counters() {
    let Some(run) = lab() else { return };
    let Some(sc) = run.scenario("stats") else {
        return;
    };
    let ctx = || run.context(sc);
    assert_eq!(sc.exit_code, Some(0), "subzero --stats exit\n{}", ctx());
    eprintln!("lab: subzero run --stats, Debian kernel, 2 vCPUs:");
    for line in &sc.stderr {
        eprintln!("  {line}");
    }
    let row = |prefix: &str| sc.stderr.iter().find(|l| l.starts_with(prefix));
    // "serial 0x3f8   write   <count> ..." with a non-zero count.
    let serial = row("serial 0x3f8").filter(|l| l.contains("write"));
    let count: u64 = serial
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    assert!(count > 0, "no serial write exits in the stats\n{}", ctx());
    assert!(row("io-out").is_some(), "no io-out row\n{}", ctx());
    assert!(
        sc.stderr.iter().any(|l| l.contains("KVM's own counters")),
        "KVM counters missing\n{}",
        ctx()
    );
    let kvm_exits: u64 = row("exits ")
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    assert!(
        kvm_exits >= count,
        "KVM exits {kvm_exits} < serial exits {count}\n{}",
        ctx()
    );
}

#[test]
fn exit_benchmark_runs_on_real_svm() {
    let Some(run) = lab() else { return };
    let Some(sc) = run.scenario("bench") else {
        return;
    };
    eprintln!("lab: subzero bench exits under nested SVM (numbers only, never asserted):");
    for line in &sc.output {
        eprintln!("  {}", line.text);
    }
    assert_eq!(sc.exit_code, Some(0), "{}", run.context(sc));
    for case in [
        "pio-write (userspace)",
        "mmio-write (userspace)",
        "ioeventfd",
        "hlt",
    ] {
        assert!(
            sc.output.iter().any(|l| l.text.contains(case)),
            "bench output lacks {case}\n{}",
            run.context(sc)
        );
    }
}

#[test]
fn subzero_stat_watches_a_booting_guest_live() {
    let Some(run) = lab() else { return };
    let Some(sc) = run.scenario("live") else {
        return;
    };
    let ctx = || run.context(sc);
    assert_eq!(
        sc.exit_code,
        Some(0),
        "subzero run --stats-socket\n{}",
        ctx()
    );
    // Lines from `subzero stat`: a refreshed view with exits per second.
    let refreshes = sc
        .stderr
        .iter()
        .filter(|l| l.starts_with("subzero stat: "))
        .count();
    assert!(
        refreshes >= 1,
        "no live refresh from subzero stat\n{}",
        ctx()
    );
    let busiest_io = sc
        .stderr
        .iter()
        .filter(|l| l.starts_with("io-out"))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .fold(0.0, f64::max);
    assert!(
        busiest_io > 0.0,
        "no io-out exits/s while the guest booted\n{}",
        ctx()
    );
    assert!(
        sc.stderr.iter().any(|l| l.contains("the VM ended after")),
        "subzero stat did not see the VM end\n{}",
        ctx()
    );
    eprintln!("lab: live view: {refreshes} refreshes; busiest io-out rate {busiest_io:.0}/s");
}

/// `sc.l2(key)` starts with "ok" (a `sz_try` in the guest succeeded).
fn l2_ok(sc: &ScenarioRun, key: &str) -> bool {
    sc.l2(key)
        .is_some_and(|v| v == "ok" || v.starts_with("ok "))
}

#[test]
fn block_guest_reads_and_writes_an_ext4_disk() {
    let Some(run) = lab() else { return };
    let Some(sc) = run.scenario("block") else {
        return;
    };
    let ctx = || run.context(sc);
    let sectors = (images::IMAGE_MIB as u64 * 1024 * 1024 / 512).to_string();
    assert_eq!(
        sc.l2("DISK_SECTORS"),
        Some(sectors.as_str()),
        "/sys/block/vda/size in the guest (512-byte sectors)\n{}",
        ctx()
    );
    assert_eq!(sc.l2("DISK_RO"), Some("0"), "vda read-only?\n{}", ctx());
    assert!(
        l2_ok(sc, "MOUNT"),
        "guest could not mount /dev/vda\n{}",
        ctx()
    );
    assert_eq!(
        sc.l2("KNOWN_SHA256"),
        Some(scripts::KNOWN_FILE.sha256().as_str()),
        "sha256 of /known.bin read by the guest from the disk\n{}",
        ctx()
    );
    assert!(
        l2_ok(sc, "WRITE"),
        "guest could not write /written.bin\n{}",
        ctx()
    );
    assert!(l2_ok(sc, "UMOUNT"), "guest could not unmount\n{}", ctx());
    assert_eq!(sc.exit_code, Some(0), "subzero exit code\n{}", ctx());
    assert_eq!(
        sc.l1("WRITTEN_SHA256"),
        Some(scripts::WRITTEN_FILE.sha256().as_str()),
        "sha256 of /written.bin that L1 read back from the image after subzero exited\n{}",
        ctx()
    );
    // --stats: "virtio-blk0  0x...  <eventfd kicks> <mmio kicks> <interrupts> <needs reset>".
    let row = sc
        .stderr
        .iter()
        .find(|l| {
            let mut w = l.split_whitespace();
            w.next() == Some("virtio-blk0") && w.next().is_some_and(|b| b.starts_with("0x"))
        })
        .unwrap_or_else(|| panic!("no virtio-blk0 row in the --stats table\n{}", ctx()));
    let cols: Vec<u64> = row
        .split_whitespace()
        .skip(2)
        .filter_map(|c| c.parse().ok())
        .collect();
    assert!(
        cols.len() >= 3 && cols[0] > 0 && cols[1] == 0 && cols[2] > 0,
        "virtio-blk0 should have kicks only through its ioeventfd (eventfd kicks > 0, \
         mmio kicks 0) and interrupts: {row:?}\n{}",
        ctx()
    );
    eprintln!("lab: block: {row}");
}

#[test]
fn block_readonly_refuses_writes_and_leaves_the_image_unchanged() {
    let Some(run) = lab() else { return };
    let Some(sc) = run.scenario("block-ro") else {
        return;
    };
    let ctx = || run.context(sc);
    assert_eq!(sc.l2("DISK_RO"), Some("1"), "/sys/block/vda/ro\n{}", ctx());
    assert!(
        l2_ok(sc, "MOUNT"),
        "guest could not mount /dev/vda\n{}",
        ctx()
    );
    assert!(
        sc.l2("MOUNT_OPTIONS").is_some_and(|o| o.starts_with("ro")),
        "the read-only disk should be mounted ro\n{}",
        ctx()
    );
    assert_eq!(
        sc.l2("KNOWN_SHA256"),
        Some(scripts::KNOWN_FILE.sha256().as_str()),
        "reads from the read-only disk\n{}",
        ctx()
    );
    for key in ["FS_WRITE", "DEV_WRITE"] {
        assert!(
            sc.l2(key).is_some_and(|v| v.starts_with("failed")),
            "{key} on the read-only disk should fail\n{}",
            ctx()
        );
    }
    let before = sc.l1("SHA256_BEFORE");
    assert!(
        before.is_some_and(|b| b.len() == 64),
        "no image checksum from L1\n{}",
        ctx()
    );
    assert_eq!(
        sc.l1("SHA256_AFTER"),
        before,
        "the read-only image changed\n{}",
        ctx()
    );
    assert_eq!(sc.exit_code, Some(0), "subzero exit code\n{}", ctx());
    eprintln!(
        "lab: block-ro: fs write: {}; device write: {}",
        sc.l2("FS_WRITE").unwrap_or(""),
        sc.l2("DEV_WRITE").unwrap_or("")
    );
}

#[test]
fn rootfs_boots_from_the_virtio_disk() {
    let Some(run) = lab() else { return };
    let Some(sc) = run.scenario("rootfs") else {
        return;
    };
    let ctx = || run.context(sc);
    assert_eq!(
        sc.l2("SWITCH_ROOT"),
        Some("/dev/vda"),
        "the initramfs should switch to root=/dev/vda\n{}",
        ctx()
    );
    assert_eq!(
        sc.l2("ROOTFS_INIT"),
        Some("pid=1"),
        "the disk's /sbin/init should run as PID 1\n{}",
        ctx()
    );
    assert_eq!(
        sc.l2("ROOT_MOUNT"),
        Some("/dev/vda ext4 rw"),
        "/ should be /dev/vda (ext4, rw)\n{}",
        ctx()
    );
    let marker = format!("disk-{}", run.token);
    assert_eq!(
        sc.l2("DISK_MARKER"),
        Some(marker.as_str()),
        "a file only this run's disk has\n{}",
        ctx()
    );
    assert_eq!(
        sc.l2("INITRAMFS_INIT"),
        Some("absent"),
        "the initramfs' /init is still visible\n{}",
        ctx()
    );
    assert!(l2_ok(sc, "REMOUNT_RO"), "remount / ro\n{}", ctx());
    assert_eq!(sc.exit_code, Some(0), "subzero exit code\n{}", ctx());
    assert_eq!(
        sc.l1("ROOT_WRITTEN"),
        Some(format!("rootfs-write {marker}").as_str()),
        "the file the disk's init wrote, read back by L1 from the image\n{}",
        ctx()
    );
}

#[test]
fn net_guest_pings_and_moves_16_mib_over_tcp() {
    let Some(run) = lab() else { return };
    let Some(sc) = run.scenario("net") else {
        return;
    };
    let ctx = || run.context(sc);
    assert_eq!(
        sc.l2("MAC"),
        Some("52:54:00:12:34:56"),
        "the guest's eth0 MAC should be the one given to --net\n{}",
        ctx()
    );
    // The driver's accepted features, one '0'/'1' per bit: checksum and
    // TSO offloads both ways, mergeable rx buffers, event index, virtio 1.
    let features = sc.l2("NET_FEATURES").unwrap_or("");
    for (bit, name) in [
        (0, "CSUM"),
        (1, "GUEST_CSUM"),
        (5, "MAC"),
        (7, "GUEST_TSO4"),
        (11, "HOST_TSO4"),
        (15, "MRG_RXBUF"),
        (16, "STATUS"),
        (29, "RING_EVENT_IDX"),
        (32, "VERSION_1"),
    ] {
        assert_eq!(
            features.as_bytes().get(bit),
            Some(&b'1'),
            "virtio-net feature {name} (bit {bit}) not negotiated: {features:?}\n{}",
            ctx()
        );
    }
    assert!(
        sc.l2("PING")
            .is_some_and(|p| p.contains("3 packets transmitted, 3 packets received")),
        "guest ping of L1 (169.254.0.1)\n{}",
        ctx()
    );
    let want = scripts::NET_FILE.sha256();
    assert_eq!(
        sc.l2("DOWNLOAD_SHA256"),
        Some(want.as_str()),
        "sha256 of the 16 MiB the guest fetched from L1\n{}",
        ctx()
    );
    assert!(l2_ok(sc, "UPLOAD"), "guest upload to L1\n{}", ctx());
    assert_eq!(
        sc.l1("UPLOAD_SHA256"),
        Some(want.as_str()),
        "sha256 of what L1 received back from the guest\n{}",
        ctx()
    );
    assert_eq!(sc.exit_code, Some(0), "subzero exit code\n{}", ctx());
    eprintln!(
        "lab: net: L1 server (guest download): {}",
        sc.l1("SERVER_DOWN").unwrap_or("-")
    );
    eprintln!(
        "lab: net: L1 server (guest upload): {}",
        sc.l1("SERVER_UP").unwrap_or("-")
    );
}

#[test]
fn vsock_streams_reach_the_guest_and_the_host() {
    let Some(run) = lab() else { return };
    let Some(sc) = run.scenario("vsock") else {
        return;
    };
    let ctx = || run.context(sc);
    assert!(
        sc.l1("A_OK")
            .is_some_and(|l| l.starts_with("lab-peer: OK ")),
        "CONNECT 5000 through subzero's Unix socket got no OK line\n{}",
        ctx()
    );
    let checks = [
        (
            sc.l2("VSOCK_A_SHA256"),
            scripts::VSOCK_A_HOST,
            "guest listener (port 5000) received from L1",
        ),
        (
            sc.l1("A_SHA256"),
            scripts::VSOCK_A_GUEST,
            "L1 (connected through the Unix socket) received from the guest",
        ),
        (
            sc.l2("VSOCK_B_SHA256"),
            scripts::VSOCK_B_HOST,
            "guest (connected to CID 2 port 5001) received from L1",
        ),
        (
            sc.l1("B_SHA256"),
            scripts::VSOCK_B_GUEST,
            "L1 listener on /tmp/vsock.sock_5001 received from the guest",
        ),
    ];
    for (got, blob, what) in checks {
        assert_eq!(
            got,
            Some(blob.sha256().as_str()),
            "sha256 of the 1 MiB the {what}\n{}",
            ctx()
        );
    }
    assert_eq!(sc.exit_code, Some(0), "subzero exit code\n{}", ctx());
}

#[test]
fn rng_guest_reads_random_bytes_from_virtio_rng() {
    let Some(run) = lab() else { return };
    let Some(sc) = run.scenario("rng") else {
        return;
    };
    let ctx = || run.context(sc);
    assert!(
        sc.l2("RNG_CURRENT")
            .is_some_and(|c| c.starts_with("virtio_rng")),
        "/sys/class/misc/hw_random/rng_current should name virtio_rng\n{}",
        ctx()
    );
    assert_eq!(sc.l2("RNG_BYTES"), Some("4096"), "bytes read\n{}", ctx());
    let distinct: u32 = sc
        .l2("RNG_DISTINCT")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // 4096 random bytes take about 255.9 of the 256 values on average.
    assert!(
        distinct >= 240,
        "only {distinct} distinct byte values in 4 KiB from /dev/hwrng\n{}",
        ctx()
    );
    assert_eq!(sc.exit_code, Some(0), "subzero exit code\n{}", ctx());
}

/// The benchmark's measurements, in the order the guest takes them.
const BENCH_METRICS: &[(&str, &str)] = &[
    ("seq-write", "sequential write, 1 MiB O_DIRECT"),
    ("seq-read", "sequential read, 1 MiB O_DIRECT"),
    ("rand-read", "random read, 4 KiB O_DIRECT"),
    ("tcp-g2h", "TCP guest -> L1"),
    ("tcp-h2g", "TCP L1 -> guest"),
];

/// (metric, figure and unit) for each `@@L2 BENCH <metric> <line>`.
fn bench_figures(sc: &ScenarioRun) -> Vec<(String, Option<(f64, &'static str)>)> {
    BENCH_METRICS
        .iter()
        .map(|(m, _)| {
            let line = sc
                .output
                .iter()
                .find_map(|l| subzero_lab::parse::after(&l.text, &format!("@@L2 BENCH {m} ")));
            (
                m.to_string(),
                line.and_then(subzero_lab::parse::bench_figure),
            )
        })
        .collect()
}

#[test]
fn virtio_benchmark_against_qemu_microvm() {
    let Some(run) = lab() else { return };
    let Some(sz) = run.scenario("virtio-bench") else {
        return;
    };
    let Some(qemu) = run.scenario("virtio-bench-qemu") else {
        return;
    };
    let (a, b) = (bench_figures(sz), bench_figures(qemu));
    let mut table = String::from(
        "lab: virtio benchmark, same guest kernel, initramfs and backing files in L1 \
         (numbers only, never asserted):\n",
    );
    table.push_str(&format!(
        "  {:<36} {:>12} {:>12} {:>16}\n",
        "", "subzero", "QEMU microvm", "subzero / QEMU"
    ));
    let show = |f: &Option<(f64, &str)>| match f {
        Some((v, u)) => format!("{v:.1} {u}"),
        None => "-".into(),
    };
    for (((_, what), (_, x)), (_, y)) in BENCH_METRICS.iter().zip(&a).zip(&b) {
        let ratio = match (x, y) {
            (Some((x, _)), Some((y, _))) if *y > 0.0 => format!("{:.2}", x / y),
            _ => "-".into(),
        };
        table.push_str(&format!(
            "  {:<36} {:>12} {:>12} {:>16}\n",
            what,
            show(x),
            show(y),
            ratio
        ));
    }
    for (name, sc) in [("subzero", sz), ("QEMU", qemu)] {
        if let (Some(boot), Some(wall)) = (sc.boot_time(), sc.wall_time()) {
            table.push_str(&format!(
                "  {name}: start -> L2 init {:.2}s, whole run {:.1}s (host clock)\n",
                boot.as_secs_f64(),
                wall.as_secs_f64()
            ));
        }
    }
    eprint!("{table}");
    for (name, sc, figs) in [("subzero", sz, &a), ("QEMU", qemu, &b)] {
        let missing: Vec<&str> = figs
            .iter()
            .filter(|(_, f)| f.is_none())
            .map(|(m, _)| m.as_str())
            .collect();
        assert!(
            missing.is_empty() && sc.exit_code == Some(0),
            "the benchmark under {name} gave no figure for {missing:?} or failed\n{}",
            run.context(sc)
        );
    }
}
