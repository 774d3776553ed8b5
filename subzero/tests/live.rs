//! `subzero stat SOCKET` (the binary) against a live stats server.

use std::process::Command;
use std::time::Instant;

use subzero::stats::hw_report::{HardwareReport, HwReasonRow, HwStatus};
use subzero::stats::live;
use subzero::stats::report::{ReasonRow, RipSamples, StatsReport, TargetRow, SCHEMA};

/// A report at `elapsed_s` seconds of a guest making 500 serial writes/s.
fn snapshot(elapsed_s: f64) -> StatsReport {
    let count = (elapsed_s * 500.0) as u64;
    StatsReport {
        schema: SCHEMA.into(),
        elapsed_s,
        total_exits: count,
        exits: vec![ReasonRow {
            reason: "io-out".into(),
            count,
            share: 1.0,
            total_ns: count * 1000,
            mean_ns: 1000.0,
            p50_ns: 1000,
            p99_ns: 1000,
            max_ns: 1000,
        }],
        targets: vec![TargetRow {
            space: "pio".into(),
            addr: 0x3f8,
            device: Some("serial".into()),
            access: "write".into(),
            count,
            total_ns: count * 1000,
            mean_ns: 1000.0,
        }],
        vcpus: vec![],
        kvm: None,
        rips: RipSamples {
            sample_period: 64,
            top: vec![],
            kaslr_slide: 0,
        },
        virtio: vec![],
        passthrough: vec![],
        log: vec![],
        hardware: Some(hardware(count * 2)),
    }
}

/// A traced hardware section with `npf` nested page faults.
fn hardware(npf: u64) -> HardwareReport {
    let mut hw = HardwareReport::without(HwStatus::Traced, "");
    hw.note = None;
    hw.isa = Some("svm".into());
    hw.total_exits = npf;
    hw.reasons = vec![HwReasonRow {
        reason: "npf".into(),
        code: 0x400,
        count: npf,
        share: 1.0,
        total_ns: npf * 2000,
        mean_ns: 2000.0,
        p50_ns: 2000,
        p99_ns: 2000,
        max_ns: 2000,
        to_userspace: 0,
        kvm_part_mean_ns: None,
        userspace_part_mean_ns: None,
        per_vcpu: vec![npf],
    }];
    hw
}

#[test]
fn stat_shows_exits_per_second_until_the_vm_ends() {
    let path = std::env::temp_dir().join(format!("subzero-stat-{}.sock", std::process::id()));
    let t0 = Instant::now();
    let server = live::serve(
        &path,
        Box::new(move || snapshot(t0.elapsed().as_secs_f64())),
    )
    .expect("serve");
    let child = Command::new(env!("CARGO_BIN_EXE_subzero"))
        .arg("stat")
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run subzero stat");
    // Two refreshes need three snapshots, one second apart.
    std::thread::sleep(std::time::Duration::from_millis(2600));
    drop(server); // the VM "ends": the socket closes
    let out = child.wait_with_output().expect("subzero stat exits");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("exit reason") && stdout.contains("exits/s"),
        "{stdout}"
    );
    let rate: f64 = stdout
        .lines()
        .find(|l| l.starts_with("io-out"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0.0);
    assert!(
        (450.0..550.0).contains(&rate),
        "io-out rate {rate}: {stdout}"
    );
    assert!(stdout.contains("serial pio 0x3f8 write"), "{stdout}");
    // The hardware reasons, per second too (twice the io-out rate).
    let npf: f64 = stdout
        .lines()
        .find(|l| l.starts_with("npf"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0.0);
    assert!(
        stdout.contains("hardware exit reason") && (900.0..1100.0).contains(&npf),
        "npf rate {npf}: {stdout}"
    );
    assert!(stderr.contains("the VM ended after"), "{stderr}");
}

#[test]
fn stat_on_a_missing_socket_says_what_to_do() {
    let out = Command::new(env!("CARGO_BIN_EXE_subzero"))
        .args(["stat", "/nonexistent/vm.sock"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("/nonexistent/vm.sock") && stderr.contains("--stats-socket"),
        "{stderr}"
    );
}

#[test]
fn stat_refuses_a_line_without_end_from_its_peer() {
    let path = std::env::temp_dir().join(format!("subzero-stat-flood-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || {
        use std::io::Write;
        let (mut s, _) = listener.accept().unwrap();
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..(live::MAX_LINE >> 20) + 2 {
            if s.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let out = Command::new(env!("CARGO_BIN_EXE_subzero"))
        .arg("stat")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("a line over 16 MiB"), "{stderr}");
    let _ = server.join();
    let _ = std::fs::remove_file(&path);
}
