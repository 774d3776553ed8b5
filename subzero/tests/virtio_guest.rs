//! Host-KVM test: a tiny guest drives a virtio-rng device through the
//! virtio-mmio transport. Its queue kicks must reach the device thread
//! through KVM's ioeventfd, so the number of exits to userspace does not
//! grow with the number of requests.

mod common;

use subzero::demo::virtio::{run_virtio, SETUP_WRITES};
use subzero::stats::report::VirtioRow;
use subzero::vmm::exit::{ExitKind, StopReason};

#[test]
fn virtio_kicks_bypass_userspace_and_data_arrives() {
    if !common::kvm_available() {
        return;
    }
    let few = run_virtio(1, 512).expect("virtio guest runs");
    let many = run_virtio(200, 64).expect("virtio guest runs");
    for r in [&few, &many] {
        assert_eq!(r.problems(), Vec::<String>::new(), "{r}");
        assert_eq!(r.run.stop.reason, StopReason::PowerOff);
        assert_eq!(r.device.eventfd_kicks, r.params.requests, "{r}");
        assert_eq!(r.device.mmio_kicks, 0, "{r}");
        assert!(r.device.interrupts >= 1, "{r}");
        assert_eq!(r.device.needs_reset, 0, "{r}");
    }
    // 200 kicks cost no more userspace exits than one.
    assert_eq!(few.run.total().get(ExitKind::MmioWrite), SETUP_WRITES);
    assert_eq!(many.run.total().get(ExitKind::MmioWrite), SETUP_WRITES);
    assert_eq!(few.run.total().total(), many.run.total().total());
    // 512 bytes of getrandom output use well over 100 byte values.
    assert!(few.distinct_bytes > 100, "{few}");
    let text = many.to_string();
    assert!(
        text.contains("200 through the ioeventfd, 0 as MMIO exits"),
        "{text}"
    );
}

#[test]
fn stats_report_lists_eventfd_kicks_in_every_format() {
    use subzero::stats::report::StatsReport;
    if !common::kvm_available() {
        return;
    }
    let r = run_virtio(50, 16).expect("virtio guest runs");
    let buses = subzero::vmm::exit::Buses::default();
    let mut report = StatsReport::build(
        &r.run.per_vcpu,
        r.run.elapsed,
        r.run.ns_per_tick,
        &buses,
        None,
        None,
    );
    report.virtio = r.run.virtio.iter().map(VirtioRow::from).collect();
    let table = report.to_table();
    assert!(table.contains("virtio queue notifications"), "{table}");
    let row = table
        .lines()
        .find(|l| l.starts_with("virtio-rng0"))
        .unwrap_or_else(|| panic!("no device row: {table}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        &cols[..4],
        ["virtio-rng0", "0xd0000000", "50", "0"],
        "{row}"
    );
    assert_eq!(cols.get(6), Some(&"0"), "nothing throttled: {row}");
    // Each of the 50 requests was completed, and each came with a kick.
    assert_eq!(cols.get(7..9), Some(&["50", "1.00"][..]), "{row}");
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["virtio"][0]["eventfd_kicks"], 50);
    assert_eq!(json["virtio"][0]["mmio_kicks"], 0);
    assert_eq!(json["virtio"][0]["throttled"], 0);
    assert_eq!(json["virtio"][0]["completed"], 50);
    let prom = report.to_prometheus();
    assert!(
        prom.contains("subzero_virtio_eventfd_kicks_total{device=\"virtio-rng0\"} 50"),
        "{prom}"
    );
    assert!(
        prom.contains("subzero_virtio_throttled_total{device=\"virtio-rng0\"} 0"),
        "{prom}"
    );
    assert!(
        prom.contains("subzero_virtio_completed_total{device=\"virtio-rng0\"} 50"),
        "{prom}"
    );
}

/// Reads `len` bytes of guest memory at `addr`.
fn guest_bytes(m: &subzero::vmm::Machine, addr: u64, len: usize) -> Vec<u8> {
    use vm_memory::Bytes;
    let mut buf = vec![0u8; len];
    m.memory
        .read_slice(&mut buf, vm_memory::GuestAddress(addr))
        .expect("guest memory");
    buf
}

#[test]
fn linux_vm_describes_its_devices_in_acpi_and_on_request_the_command_line() {
    use subzero::vmm::config::{DevicesConfig, VmConfig};
    use subzero::vmm::device_config::DiskConfig;
    if !common::kvm_available() {
        return;
    }
    let dir = common::scratch("virtio-build");
    let kernel = dir.join("bzImage");
    common::fake_bzimage(&kernel, &[0xf4; 64]);
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let cfg = |mmio_cmdline| VmConfig {
        kernel: kernel.clone(),
        initrd: None,
        cmdline: "console=ttyS0".into(),
        memory: 64 << 20,
        vcpus: 1,
        devices: DevicesConfig {
            disks: vec![DiskConfig {
                path: disk.clone(),
                readonly: true,
                ..Default::default()
            }],
            rng: true,
            mmio_cmdline,
            ..Default::default()
        },
        host_unpack: false,
        unpack_cache: None,
    };
    for mmio_cmdline in [false, true] {
        let m = subzero::vmm::build_linux(&cfg(mmio_cmdline), Box::new(std::io::sink()))
            .expect("build");
        let names: Vec<_> = m
            .virtio
            .slots
            .iter()
            .map(|s| (s.name.clone(), s.base, s.gsi))
            .collect();
        assert_eq!(
            names,
            [
                ("virtio-blk0".to_string(), 0xd000_0000, 5),
                ("virtio-rng0".to_string(), 0xd000_1000, 6)
            ]
        );
        // Both devices are in the DSDT as LNRO0005 (ACPI area 0xe0000-0xfffff).
        let acpi = guest_bytes(&m, 0xe_0000, 0x2_0000);
        let hids = acpi.windows(8).filter(|w| w == b"LNRO0005").count();
        assert_eq!(hids, 2, "LNRO0005 entries in the DSDT");
        let cmdline = guest_bytes(&m, 0x2_0000, 256);
        let cmdline = String::from_utf8_lossy(&cmdline);
        let cmdline = cmdline.trim_end_matches('\0');
        if mmio_cmdline {
            assert_eq!(
                cmdline,
                "console=ttyS0 virtio_mmio.device=4K@0xd0000000:5 \
                 virtio_mmio.device=4K@0xd0001000:6"
            );
        } else {
            assert_eq!(cmdline, "console=ttyS0");
        }
    }
}
