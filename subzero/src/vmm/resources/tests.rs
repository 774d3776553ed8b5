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
                        "rate_limiter": {"bandwidth": {"size": 1, "refill_time": 100}}}]}"#,
    )
    .unwrap();
    let e = r.vm_config().unwrap_err().to_string();
    assert!(
        e.starts_with("drives[d].rate_limiter: a rate limiter is not supported"),
        "{e}"
    );
    r.drives[0].rate_limiter = Some(serde_json::Value::Null);
    r.drives[0].io_engine = Some("Async".into());
    let e = r.vm_config().unwrap_err().to_string();
    assert!(e.starts_with("drives[d].io_engine:"), "{e}");
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
