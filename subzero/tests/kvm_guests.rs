//! Host-KVM tests: the embedded exerciser guest on this machine's /dev/kvm.
//! Each test asks the guest for an exact number of exits and checks that
//! the VMM saw exactly those, at the right device.

mod common;

use subzero::demo::guest::{Params, PROBE_VALUE};
use subzero::demo::{self, run_exerciser, GREETING};
use subzero::vmm::exit::{ExitKind, StopReason};

#[test]
fn demo_guest_greets_and_every_exit_is_accounted_for() {
    if !common::kvm_available() {
        return;
    }
    let report = demo::run(false).expect("demo runs");
    assert_eq!(report.console, GREETING, "serial output");
    assert_eq!(report.problems(), Vec::<String>::new(), "{report}");
    let exits = report.run.total();
    assert_eq!(exits.get(ExitKind::IoOut), GREETING.len() as u64 + 8 + 1);
    assert_eq!(exits.get(ExitKind::Hlt), 3);
    assert_eq!(report.run.stop.reason, StopReason::PowerOff);
    let text = report.to_string();
    assert!(text.contains("io-out"), "{text}");
}

#[test]
fn port_io_round_trips_are_counted_exactly() {
    if !common::kvm_available() {
        return;
    }
    let params = Params {
        pio_reads: 250,
        pio_writes: 1000,
        ..Params::new()
    };
    let r = run_exerciser(&params, "", false).expect("guest runs");
    let exits = r.run.total();
    assert_eq!(exits.get(ExitKind::IoIn), 250);
    // 1000 probe writes + the power-off write; no message.
    assert_eq!(exits.get(ExitKind::IoOut), 1001);
    assert_eq!((r.pio.reads, r.pio.writes), (250, 1000));
    assert_eq!(
        r.pio.last_written,
        u64::from(PROBE_VALUE),
        "IN value echoed by OUT"
    );
    assert_eq!(
        exits.get(ExitKind::MmioRead) + exits.get(ExitKind::MmioWrite),
        0
    );
    assert_eq!(r.run.stop.reason, StopReason::PowerOff);
}

#[test]
fn mmio_round_trips_are_counted_exactly() {
    if !common::kvm_available() {
        return;
    }
    let params = Params {
        mmio_reads: 500,
        mmio_writes: 100,
        ..Params::new()
    };
    let r = run_exerciser(&params, "", false).expect("guest runs");
    let exits = r.run.total();
    assert_eq!(exits.get(ExitKind::MmioRead), 500);
    assert_eq!(exits.get(ExitKind::MmioWrite), 100);
    assert_eq!((r.mmio.reads, r.mmio.writes), (500, 100));
    assert_eq!(
        r.mmio.last_written,
        u64::from(PROBE_VALUE),
        "load value echoed by store"
    );
}

#[test]
fn hlt_exits_reach_the_vmm() {
    if !common::kvm_available() {
        return;
    }
    let params = Params {
        halts: 7,
        ..Params::new()
    };
    let r = run_exerciser(&params, "", false).expect("guest runs");
    assert_eq!(r.run.total().get(ExitKind::Hlt), 7);
    assert_eq!(r.run.stop.reason, StopReason::PowerOff);
}

#[test]
fn serial_output_is_byte_exact() {
    if !common::kvm_available() {
        return;
    }
    let message = "line one\nline two: ~!@#$%^&*()\n";
    let r = run_exerciser(&Params::new(), message, false).expect("guest runs");
    assert_eq!(r.console, message);
    assert_eq!(r.run.total().get(ExitKind::IoOut), message.len() as u64 + 1);
}
