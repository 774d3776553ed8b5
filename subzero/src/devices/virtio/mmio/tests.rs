use super::*;
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::testing::{TestDriver, DATA, MEM_SIZE};
use crate::devices::virtio::types;
use crate::devices::virtio::worker::DeviceWorker;
use crate::devices::virtio::{DeviceError, QueueCtx, VirtioDevice};

#[test]
fn identifies_as_a_version_2_device() {
    let mut d = TestDriver::raw(Box::new(Rng::default()));
    assert_eq!(d.read(regs::MAGIC_VALUE), MAGIC);
    assert_eq!(d.read(regs::VERSION), 2);
    assert_eq!(d.read(regs::DEVICE_ID), types::RNG);
    d.write(regs::DEVICE_FEATURES_SEL, 1);
    assert_eq!(d.read(regs::DEVICE_FEATURES) & 1, 1, "VERSION_1 offered");
    d.write(regs::QUEUE_SEL, 0);
    assert_eq!(d.read(regs::QUEUE_NUM_MAX), 256);
    d.write(regs::QUEUE_SEL, 1);
    assert_eq!(d.read(regs::QUEUE_NUM_MAX), 0, "no second queue");
}

#[test]
fn serves_a_request_and_interrupts() {
    let mut d = TestDriver::new(Box::new(Rng::default()));
    let head = d.add_chain(0, &[(DATA, 64, true)]);
    d.kick(0);
    assert_eq!(d.used(0), vec![(u32::from(head), 64)]);
    assert!(d.interrupts() >= 1);
    assert_eq!(d.read(regs::INTERRUPT_STATUS), 1);
    d.write(regs::INTERRUPT_ACK, 1);
    assert_eq!(d.read(regs::INTERRUPT_STATUS), 0);
    let counters = d.shared.counters().clone();
    assert_eq!(counters.eventfd_kicks.load(Ordering::Relaxed), 1);
}

#[test]
fn refuses_features_it_did_not_offer_and_drivers_without_version_1() {
    let mut d = TestDriver::raw(Box::new(Rng::default()));
    d.write(regs::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    d.write(regs::DRIVER_FEATURES_SEL, 0);
    d.write(regs::DRIVER_FEATURES, 1 << 5);
    d.write(regs::DRIVER_FEATURES_SEL, 1);
    d.write(regs::DRIVER_FEATURES, 1);
    d.write(regs::STATUS, 0xb);
    assert_eq!(d.status() & status::FEATURES_OK, 0);
    d.write(regs::STATUS, 0);
    d.write(regs::STATUS, 3);
    d.write(regs::STATUS, 0xb);
    assert_eq!(d.status() & status::FEATURES_OK, 0, "legacy driver refused");
}

#[test]
fn a_queue_size_that_is_not_a_power_of_two_needs_reset() {
    let mut d = TestDriver::raw(Box::new(Rng::default()));
    d.setup(|_, _| 24);
    assert!(d.needs_reset());
    assert_eq!(d.status() & status::DRIVER_OK, status::DRIVER_OK);
    // A reset recovers the device.
    d.setup(|_, _| 16);
    assert!(!d.needs_reset());
    d.add_chain(0, &[(DATA, 8, true)]);
    d.kick(0);
    assert_eq!(d.used(0).len(), 1);
}

#[test]
fn a_queue_outside_guest_memory_needs_reset() {
    let mut d = TestDriver::raw(Box::new(Rng::default()));
    d.write(regs::STATUS, 3);
    d.write(regs::DRIVER_FEATURES_SEL, 1);
    d.write(regs::DRIVER_FEATURES, 1);
    d.write(regs::STATUS, 0xb);
    d.write(regs::QUEUE_NUM, 16);
    d.write(regs::QUEUE_DESC_LOW, 0xffff_f000);
    d.write(regs::QUEUE_DESC_HIGH, 0xffff);
    d.write(regs::QUEUE_READY, 1);
    d.write(regs::STATUS, 0xf);
    assert!(d.needs_reset());
    d.kick(0);
    assert!(d.used(0).is_empty());
}

#[test]
fn bad_chains_are_returned_empty_and_the_device_goes_on() {
    let mut d = TestDriver::new(Box::new(Rng::default()));
    // Outside guest memory.
    d.add_chain(0, &[(MEM_SIZE as u64 - 8, 64, true)]);
    // Wrong direction for an rng: the buffer is device-readable.
    d.add_chain(0, &[(DATA, 64, false)]);
    // A loop: descriptor 5 points to itself.
    d.put_desc(0, 5, DATA, 8, 1 | 2, 5);
    d.publish(0, 5);
    // Then a good one.
    d.add_chain(0, &[(DATA, 32, true)]);
    d.kick(0);
    let used = d.used(0);
    assert_eq!(used.len(), 4);
    assert_eq!(used[0].1, 0);
    assert_eq!(used[1].1, 0, "nothing written to a read-only buffer");
    assert_eq!(used[2], (5, 0));
    assert_eq!(used[3].1, 32);
    assert!(!d.needs_reset());
}

#[test]
fn a_kick_through_mmio_is_counted_and_forwarded() {
    let mut d = TestDriver::new(Box::new(Rng::default()));
    d.add_chain(0, &[(DATA, 16, true)]);
    d.write(regs::QUEUE_NOTIFY, 0);
    d.worker.handle_kick(0);
    assert_eq!(d.used(0).len(), 1);
    let c = d.shared.counters().clone();
    assert_eq!(c.mmio_kicks.load(Ordering::Relaxed), 1);
    assert_eq!(c.eventfd_kicks.load(Ordering::Relaxed), 1);
}

#[test]
fn odd_sized_register_accesses_are_ignored() {
    let mut d = TestDriver::raw(Box::new(Rng::default()));
    let mut b = [0xffu8; 2];
    d.transport.read(regs::MAGIC_VALUE, &mut b);
    assert_eq!(b, [0, 0]);
    d.transport.write(regs::STATUS, &[1]);
    assert_eq!(d.status(), 0);
}

#[test]
fn an_available_index_far_ahead_needs_reset_instead_of_spinning() {
    let mut d = TestDriver::new(Box::new(Rng::default()));
    d.add_chain(0, &[(DATA, 8, true)]);
    // The driver claims 1000 entries on a 16-entry queue.
    let avail = 0x10_0000 + 0x4000 + 2;
    vm_memory::Bytes::write_obj(&d.mem, 1000u16, vm_memory::GuestAddress(avail)).unwrap();
    d.kick(0);
    assert!(d.needs_reset());
    let c = d.shared.counters().clone();
    assert_eq!(c.needs_reset.load(Ordering::Relaxed), 1);
}

#[test]
fn refused_chains_are_counted() {
    let mut d = TestDriver::new(Box::new(Rng::default()));
    d.add_chain(0, &[(MEM_SIZE as u64, 8, true)]);
    d.kick(0);
    let c = d.shared.counters().clone();
    assert_eq!(c.bad_chains.load(Ordering::Relaxed), 1);
}

/// Runs `f` on another thread; true if it did not finish within 3 s.
fn hangs(f: impl FnOnce() + Send + 'static) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    rx.recv_timeout(std::time::Duration::from_secs(3)).is_err()
}

#[test]
fn queue_rings_never_placed_need_reset_and_never_spin() {
    use vm_memory::{Bytes, GuestAddress};
    let mut d = TestDriver::raw(Box::new(Rng::default()));
    // A driver that never writes QueueDesc/QueueDriver/QueueDevice: all
    // three stay at the default address 0, which is valid guest RAM.
    d.write(regs::STATUS, 0);
    d.write(regs::STATUS, status::ACKNOWLEDGE | status::DRIVER);
    d.write(regs::DRIVER_FEATURES_SEL, 1);
    d.write(regs::DRIVER_FEATURES, 1); // VERSION_1
    d.write(regs::STATUS, 0xb);
    d.write(regs::QUEUE_SEL, 0);
    d.write(regs::QUEUE_NUM, 16);
    d.write(regs::QUEUE_READY, 1);
    d.write(regs::STATUS, 0xf);
    assert!(d.needs_reset(), "rings left at address 0 are refused");
    // avail.idx (GPA 2) = 1: one chain "available".
    d.mem.write_obj(1u16, GuestAddress(2)).unwrap();
    let shared = d.shared.clone();
    let spun = hangs(move || {
        let mut d = d;
        d.worker.handle_kick(0);
    });
    assert!(
        !spun,
        "process_queue never returns; transport lock held: {}",
        shared.device_busy()
    );
}

#[test]
fn buffers_kicked_before_driver_ok_are_served_at_driver_ok() {
    let mut d = TestDriver::raw(Box::new(Rng::default()));
    d.setup_before_ok(u64::MAX, |_, m| m.min(16));
    // Linux 5.18 virtio-rng: request_entropy() in probe, before DRIVER_OK.
    let head = d.add_chain(0, &[(DATA, 64, true)]);
    d.kick(0);
    d.write(
        regs::STATUS,
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK,
    );
    assert!(!d.needs_reset());
    // Nothing more from the driver: it waits for this buffer (and with
    // EVENT_IDX, avail_event is still 0, so its next add would not kick either).
    d.worker.handle_activated();
    assert_eq!(
        d.used(0),
        vec![(u32::from(head), 64)],
        "buffer posted before DRIVER_OK never used"
    );
}

#[test]
fn a_reset_clears_pending_interrupt_bits() {
    let mut d = TestDriver::new(Box::new(Rng::default()));
    d.add_chain(0, &[(DATA, 8, true)]);
    d.kick(0);
    assert_eq!(d.read(regs::INTERRUPT_STATUS), 1);
    d.write(regs::STATUS, 0);
    assert_eq!(d.read(regs::INTERRUPT_STATUS), 0);
}

#[test]
fn a_snapshot_restores_into_a_new_transport_that_serves_on() {
    let mut d = TestDriver::new(Box::new(Rng::default()));
    let first = d.add_chain(0, &[(DATA, 64, true)]);
    d.kick(0);
    d.write(regs::QUEUE_SEL, 0);
    let saved = d.shared.save();
    assert_eq!(saved.queues[0].next_used, 1);
    // The JSON round trip a snapshot file makes.
    let saved: TransportSnapshot =
        serde_json::from_str(&serde_json::to_string(&saved).unwrap()).unwrap();
    d.replace_transport(Box::new(Rng::default()));
    d.shared.restore(&saved).unwrap();
    assert_eq!(
        d.shared.save(),
        saved,
        "the restored state reads back the same"
    );
    assert_eq!(d.status(), saved.status);
    let second = d.add_chain(0, &[(DATA + 64, 32, true)]);
    d.kick(0);
    assert_eq!(
        d.used(0),
        vec![(u32::from(first), 64), (u32::from(second), 32)]
    );
}

#[test]
fn a_snapshot_of_another_device_or_a_broken_queue_is_refused() {
    let d = TestDriver::new(Box::new(Rng::default()));
    let saved = d.shared.save();
    let mut other = saved.clone();
    other.device_type = types::BLOCK;
    let e = d.shared.restore(&other).unwrap_err().to_string();
    assert!(e.contains("device type 2 where the VM has 4"), "{e}");
    let mut outside = saved.clone();
    outside.queues[0].used_ring = (MEM_SIZE as u64) + 0x1000;
    let e = d.shared.restore(&outside).unwrap_err().to_string();
    assert!(e.contains("outside guest memory"), "{e}");
    let mut size = saved;
    size.queues[0].size = 3;
    assert!(d.shared.restore(&size).is_err());
}

/// A device whose every request blocks until the test lets it go, like a
/// disk on a stalled backing store.
struct Stalled {
    started: std::sync::mpsc::Sender<()>,
    release: std::sync::mpsc::Receiver<()>,
}

impl VirtioDevice for Stalled {
    fn name(&self) -> &str {
        "stalled"
    }
    fn device_type(&self) -> u32 {
        types::BLOCK
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16]
    }
    fn features(&self) -> u64 {
        0
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == 0 {
            data[0] = 42;
        }
    }
    fn process_queue(&mut self, _q: usize, _ctx: &mut QueueCtx) -> Result<(), DeviceError> {
        let _ = self.started.send(());
        let _ = self.release.recv();
        Ok(())
    }
}

#[test]
fn register_accesses_do_not_wait_for_a_request_in_hand() {
    let (started_tx, started) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    let mut d = TestDriver::new(Box::new(Stalled {
        started: started_tx,
        release: release_rx,
    }));
    let mut worker = std::mem::replace(
        &mut d.worker,
        DeviceWorker::new(d.shared.clone(), Vec::new()),
    );
    let io = std::thread::spawn(move || worker.handle_activated());
    started.recv().unwrap();
    // The device thread is inside a request now. A vCPU's accesses to
    // every kind of register must still complete.
    let (done_tx, done) = std::sync::mpsc::channel();
    let vcpu = std::thread::spawn(move || {
        let status = d.status();
        d.write(regs::QUEUE_SEL, 0);
        let ready = d.read(regs::QUEUE_READY);
        let config = d.read(regs::CONFIG);
        let generation = d.read(regs::CONFIG_GENERATION);
        let isr = d.read(regs::INTERRUPT_STATUS);
        d.write(regs::INTERRUPT_ACK, isr);
        let _ = done_tx.send((status, ready, config, generation));
        d
    });
    // Generous: the old design never got here while the request was held.
    let got = done.recv_timeout(std::time::Duration::from_secs(20));
    release.send(()).unwrap();
    io.join().unwrap();
    let _d = vcpu.join().unwrap();
    let (status, ready, config, generation) =
        got.expect("a register access waited for the device's I/O");
    assert_eq!(status & status::DRIVER_OK, status::DRIVER_OK);
    assert_eq!((ready, config, generation), (1, 42, 0));
}
