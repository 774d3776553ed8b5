//! Host-KVM test: a tiny guest drives a virtio-rng device through the
//! virtio-mmio transport. Its queue kicks must reach the device thread
//! through KVM's ioeventfd, so the number of exits to userspace does not
//! grow with the number of requests.

mod common;

use subzero::demo::virtio::{run_virtio, SETUP_WRITES};
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
