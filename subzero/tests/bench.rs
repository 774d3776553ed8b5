//! The exit benchmark's cases on this machine's /dev/kvm.

mod common;

use kvm_ioctls::{IoEventAddress, NoDatamatch};
use subzero::bench::{self, Case, Driver, IOEVENTFD_PORT};
use subzero::demo::guest::{self, Params};
use subzero::vmm::exit::ExitKind;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

#[test]
fn ioeventfd_writes_complete_in_the_kernel() {
    if !common::kvm_available() {
        return;
    }
    let params = Params {
        pio_port: u64::from(IOEVENTFD_PORT),
        pio_writes: 300,
        ..Params::new()
    };
    let vm = guest::build(&params, "", Box::new(std::io::sink())).unwrap();
    let evt = EventFd::new(EFD_NONBLOCK).unwrap();
    let addr = IoEventAddress::Pio(u64::from(IOEVENTFD_PORT));
    vm.machine
        .vm
        .register_ioevent(&evt, &addr, NoDatamatch)
        .unwrap();
    let run = vm.machine.run().unwrap();
    // Only the power-off write reached userspace; the eventfd saw all 300.
    assert_eq!(run.total().get(ExitKind::IoOut), 1);
    assert_eq!(evt.read().unwrap(), 300);
    assert_eq!(vm.pio_probe.lock().unwrap().counts().writes, 0);
}

#[test]
fn every_case_and_driver_runs_to_power_off() {
    if !common::kvm_available() {
        return;
    }
    for case in Case::ALL {
        for driver in [
            Driver::Raw,
            Driver::Dispatch,
            Driver::Subzero,
            Driver::Seccomp,
            Driver::Traced,
        ] {
            let ns = bench::run_once(case, driver, 50).unwrap();
            assert!(ns > 0.0 && ns.is_finite(), "{case:?} {driver:?}: {ns}");
        }
    }
    let mut seen = Vec::new();
    let results = bench::run(&Case::ALL, 50, 1, &mut |r| seen.push(r.case)).unwrap();
    assert_eq!(seen, Case::ALL, "each case reported as it finishes");
    let text = bench::table(&results, 50, 1, std::time::Duration::from_secs(1));
    for case in Case::ALL {
        assert!(text.contains(case.name()), "{text}");
    }
}

#[test]
fn halts_are_woken_by_irqfd_interrupts_without_leaving_the_kernel() {
    if !common::kvm_available() {
        return;
    }
    let vm = bench::halt_wake::build(100).unwrap();
    let run = vm.machine.run().unwrap();
    let exits = run.total();
    // The halts and notifications stay in KVM; only the power-off comes out.
    assert_eq!(exits.get(ExitKind::Hlt), 0);
    assert_eq!(exits.get(ExitKind::IoOut), 1);
    assert_eq!(run.stop.reason, subzero::vmm::exit::StopReason::PowerOff);
    assert_eq!(vm.waker.finish(), 100, "one interrupt per halt");
}
