//! Hardware exit reasons from KVM's tracepoints, on this machine's
//! /dev/kvm: the exerciser makes a known number of port writes, CPUIDs and
//! RDMSRs, and the hardware section must show exactly those.
//!
//! What can be checked depends on the host. Where tracing is impossible
//! (no tracefs, no permission) the report must say why, and the test says
//! it skipped. This project's development host runs a paravirtual KVM that
//! fires kvm_pio, kvm_cpuid, kvm_msr and kvm_userspace_exit but never
//! kvm_exit: there the port, CPUID and MSR breakdowns are checked exactly,
//! and the per-reason counts are skipped with that reason. On a host with real VMX or SVM every count is checked.

mod common;

use subzero::demo::guest::{self, Params, PROBE_PORT};
use subzero::stats::hw_report::HardwareReport;
use subzero::vmm::hw_trace::HwTrace;

const WRITES: u64 = 1000;
const CPUIDS: u64 = 300;
const RDMSRS: u64 = 200;

fn traced_run(params: &Params, enabled: bool) -> HardwareReport {
    let mut vm = guest::build(params, "hi", Box::new(std::io::sink())).expect("build");
    let buses = vm.machine.buses.clone();
    let mut hw = HwTrace::start(&mut vm.machine, enabled);
    vm.machine.run().expect("run");
    hw.finish();
    hw.report(&buses, &[], None)
}

#[test]
fn the_hardware_table_counts_exactly_the_exits_the_guest_made() {
    if !common::kvm_available() {
        return;
    }
    let hw = traced_run(
        &Params {
            pio_writes: WRITES,
            cpuids: CPUIDS,
            rdmsrs: RDMSRS,
            ..Params::new()
        },
        true,
    );
    if hw.status == "unavailable" {
        let why = hw.note.unwrap_or_default();
        assert!(!why.is_empty(), "an unavailable trace must say why");
        eprintln!("skipped: KVM's tracepoints cannot be read here: {why}");
        return;
    }
    assert_eq!(hw.status, "traced", "{hw:?}");
    assert_eq!(hw.lost, 0, "no record may be lost in so short a run");
    // kvm_pio fires on every host: the probe's port, written from KVM to
    // Subzero, exactly WRITES times.
    let probe = hw
        .io
        .iter()
        .find(|r| r.port == PROBE_PORT && r.access == "write")
        .unwrap_or_else(|| panic!("no row for the probe port in {:?}", hw.io));
    assert_eq!(probe.count, WRITES, "{probe:?}");
    assert_eq!(probe.to_userspace, WRITES, "{probe:?}");
    assert_eq!(probe.in_kvm, 0, "{probe:?}");
    // The serial port took "hi": two bytes.
    let serial = hw.io.iter().find(|r| r.port == 0x3f8).expect("serial row");
    assert_eq!(serial.count, 2, "{serial:?}");
    // kvm_cpuid and kvm_msr fire wherever KVM itself answers the guest.
    let leaf0 = hw.cpuid.iter().find(|c| c.leaf == 0).expect("leaf 0 row");
    assert_eq!(leaf0.count, CPUIDS, "{:?}", hw.cpuid);
    let apic_base = hw
        .msrs
        .iter()
        .find(|m| m.index == 0x1b && m.access == "read")
        .unwrap_or_else(|| panic!("no IA32_APIC_BASE row in {:?}", hw.msrs));
    assert_eq!(apic_base.count, RDMSRS);
    assert_eq!(apic_base.name, "IA32_APIC_BASE");
    if hw.total_exits == 0 {
        eprintln!(
            "skipped: exact CPUID and MSR exit counts: this host's KVM does not fire \
             kvm:kvm_exit ({})",
            hw.note.as_deref().unwrap_or("no note")
        );
        return;
    }
    let reason = |names: &[&str]| {
        hw.reasons
            .iter()
            .filter(|r| names.contains(&r.reason.as_str()))
            .map(|r| r.count)
            .sum::<u64>()
    };
    assert_eq!(reason(&["cpuid", "CPUID"]), CPUIDS, "{:?}", hw.reasons);
    assert_eq!(reason(&["msr", "MSR_READ"]), RDMSRS, "{:?}", hw.reasons);
    // Port writes: the message, the probe, and the power-off.
    assert_eq!(
        reason(&["io", "IO_INSTRUCTION"]),
        2 + WRITES + 1,
        "{:?}",
        hw.reasons
    );
}

#[test]
fn no_trace_turns_it_off_and_says_so() {
    if !common::kvm_available() {
        return;
    }
    let hw = traced_run(&Params::new(), false);
    assert_eq!(hw.status, "off");
    assert!(
        hw.note.as_deref().unwrap_or("").contains("--no-trace"),
        "{hw:?}"
    );
    let mut table = String::new();
    hw.to_table(&mut table);
    assert!(table.contains("hardware exit reasons: off"), "{table}");
}
