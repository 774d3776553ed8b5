use super::*;

fn parse(json: &str) -> Result<VmResources, serde_json::Error> {
    serde_json::from_str(json)
}

#[test]
fn a_firecracker_config_file_parses() {
    let r = parse(
        r#"{
          "boot-source": {"kernel_image_path": "vmlinux", "boot_args": "console=ttyS0 reboot=k panic=1"},
          "drives": [{"drive_id": "rootfs", "path_on_host": "rootfs.ext4", "is_root_device": true, "is_read_only": false}],
          "machine-config": {"vcpu_count": 2, "mem_size_mib": 256, "smt": false},
          "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:AC:10:00:02"}],
          "vsock": {"guest_cid": 3, "uds_path": "/tmp/v.sock"},
          "entropy": {}
        }"#,
    )
    .unwrap();
    let cfg = r.vm_config().unwrap();
    assert_eq!(cfg.kernel, PathBuf::from("vmlinux"));
    assert_eq!(cfg.cmdline, "console=ttyS0 reboot=k panic=1");
    assert_eq!((cfg.memory, cfg.vcpus), (256 << 20, 2));
    assert_eq!(cfg.devices.disks[0].id.as_deref(), Some("rootfs"));
    assert_eq!(cfg.devices.nets[0].tap, "tap0");
    assert_eq!(cfg.devices.vsock.as_ref().unwrap().cid, 3);
    assert!(cfg.devices.rng);
}

#[test]
fn unknown_fields_are_named() {
    let e = parse(r#"{"machine-config": {"vcpu_count": 1, "mem_size_mib": 64, "vcpus": 2}}"#)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `vcpus`"), "{e}");
    let e = parse(r#"{"balloon": {}}"#).unwrap_err().to_string();
    assert!(e.contains("unknown field `balloon`"), "{e}");
}

#[test]
fn errors_name_the_setting_for_the_api_and_the_flag_for_the_cli() {
    let mut r = VmResources {
        boot_source: Some(BootSource {
            kernel_image_path: "k".into(),
            boot_args: None,
            initrd_path: None,
        }),
        ..Default::default()
    };
    r.machine_config.mem_size_mib = 1;
    let e = r.vm_config().unwrap_err();
    assert_eq!(
        e.to_string(),
        "machine-config.mem_size_mib: 1 MiB is too small: Subzero needs at least 32 MiB"
    );
    assert_eq!(
        e.for_cli(),
        "--memory 1 MiB is too small: Subzero needs at least 32 MiB"
    );
    r.machine_config.mem_size_mib = 64;
    r.machine_config.vcpu_count = 0;
    assert_eq!(
        r.vm_config().unwrap_err().for_cli(),
        "--vcpus must be at least 1"
    );
}

#[test]
fn what_subzero_does_not_offer_is_refused_not_ignored() {
    let mut r = parse(
        r#"{"boot-source": {"kernel_image_path": "k"},
            "drives": [{"drive_id": "d", "path_on_host": "x", "is_root_device": false,
                        "partuuid": "0eaa91a0-01"}]}"#,
    )
    .unwrap();
    let e = r.vm_config().unwrap_err().to_string();
    assert!(
        e.starts_with("drives[d].partuuid: a partition UUID is not supported"),
        "{e}"
    );
    r.drives[0].partuuid = Some(serde_json::Value::Null);
    r.drives[0].io_engine = Some("Async".into());
    let cfg = r.vm_config().unwrap();
    assert_eq!(cfg.devices.disks[0].engine, EngineChoice::Uring);
    r.drives[0].io_engine = Some("Posix".into());
    let e = r.vm_config().unwrap_err().to_string();
    assert!(e.starts_with("drives[d].io_engine:"), "{e}");
    r.drives[0].io_engine = None;
    r.drives[0].num_queues = Some(0);
    let e = r.vm_config().unwrap_err().to_string();
    assert!(e.starts_with("drives[d].num_queues:"), "{e}");
    r.drives[0].num_queues = None;
    r.drives[0].io_engine = None;
    r.machine_config.smt = true;
    assert!(r
        .vm_config()
        .unwrap_err()
        .to_string()
        .starts_with("machine-config.smt:"));
}

#[test]
fn no_boot_source_says_what_to_do() {
    let e = VmResources::default().vm_config().unwrap_err().to_string();
    assert!(e.contains("PUT /boot-source"), "{e}");
}

#[test]
fn root_drives_come_first_and_a_put_replaces_by_id() {
    let drive = |id: &str, root: bool| Drive {
        drive_id: id.into(),
        path_on_host: format!("{id}.img").into(),
        is_root_device: root,
        is_read_only: false,
        partuuid: None,
        cache_type: None,
        rate_limiter: None,
        io_engine: None,
        num_queues: None,
        socket: None,
    };
    let mut r = VmResources::default();
    r.put_drive(drive("data", false));
    r.put_drive(drive("root", true));
    r.put_drive(drive("data", false));
    let ids: Vec<_> = r.drives.iter().map(|d| d.drive_id.as_str()).collect();
    assert_eq!(ids, ["root", "data"]);
}

#[test]
fn machine_config_patch_changes_only_what_it_names() {
    let mut m = MachineConfig::default();
    m.update(serde_json::from_str(r#"{"mem_size_mib": 512}"#).unwrap());
    assert_eq!((m.vcpu_count, m.mem_size_mib), (1, 512));
}

#[test]
fn rate_limiters_take_firecrackers_shape() {
    let r = parse(
        r#"{"boot-source": {"kernel_image_path": "k"},
            "drives": [{"drive_id": "d", "path_on_host": "x", "is_root_device": true,
                        "rate_limiter": {
                          "bandwidth": {"size": 4194304, "one_time_burst": 1048576, "refill_time": 1000},
                          "ops": {"size": 100, "refill_time": 1000}}}],
            "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0",
                                    "rx_rate_limiter": {"ops": {"size": 1000, "refill_time": 100}},
                                    "tx_rate_limiter": {"bandwidth": {"size": 0, "refill_time": 100}}}]}"#,
    )
    .unwrap();
    let cfg = r.vm_config().unwrap();
    let disk = cfg.devices.disks[0].rate_limiter;
    assert_eq!(
        disk.bandwidth,
        Some(TokenBucketConfig {
            size: 4 << 20,
            one_time_burst: Some(1 << 20),
            refill_time: 1000
        })
    );
    assert_eq!(disk.ops.unwrap().size, 100);
    let net = &cfg.devices.nets[0];
    assert!(net.rx_rate_limiter.limits());
    assert!(
        !net.tx_rate_limiter.limits(),
        "a size of 0 is unlimited, as in Firecracker"
    );
    // GET /vm/config gives back what was put, without absent fields.
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(
        json["drives"][0]["rate_limiter"]["ops"],
        serde_json::json!({"size": 100, "refill_time": 1000})
    );
    assert_eq!(parse(&json.to_string()).unwrap(), r);
}

#[test]
fn malformed_rate_limiters_are_refused_with_the_field() {
    let drive = |limiter: &str| {
        parse(&format!(
            r#"{{"drives": [{{"drive_id": "d", "path_on_host": "x", "is_root_device": false,
                             "rate_limiter": {limiter}}}]}}"#
        ))
        .map(|_| ())
        .unwrap_err()
        .to_string()
    };
    let e = drive(r#"{"bandwidth": {"size": 1, "refill_ms": 100}}"#);
    assert!(e.contains("unknown field `refill_ms`"), "{e}");
    let e = drive(r#"{"bandwidth": {"size": 1}}"#);
    assert!(e.contains("missing field `refill_time`"), "{e}");
    let e = drive(r#"{"bw": {"size": 1, "refill_time": 1}}"#);
    assert!(e.contains("unknown field `bw`"), "{e}");
    let e = drive(r#"{"ops": {"size": -1, "refill_time": 1}}"#);
    assert!(e.contains("invalid value"), "{e}");
}

#[test]
fn patches_carry_rate_limiters() {
    let u: DriveUpdate = serde_json::from_str(
        r#"{"drive_id": "d", "rate_limiter": {"ops": {"size": 10, "refill_time": 1000}}}"#,
    )
    .unwrap();
    assert_eq!(u.rate_limiter.unwrap().ops.unwrap().size, 10);
    assert_eq!(u.path_on_host, None);
    let n: NetworkInterfaceUpdate = serde_json::from_str(
        r#"{"iface_id": "eth0", "tx_rate_limiter": {"bandwidth": {"size": 1, "refill_time": 1}}}"#,
    )
    .unwrap();
    assert!(n.rx_rate_limiter.is_none() && n.tx_rate_limiter.unwrap().limits());
    assert!(serde_json::from_str::<NetworkInterfaceUpdate>(
        r#"{"iface_id": "eth0", "host_dev_name": "tap1"}"#
    )
    .is_err());
}
