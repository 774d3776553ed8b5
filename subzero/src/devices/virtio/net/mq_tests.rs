//! Several queue pairs: the control queue, TAP queues attached and
//! detached as the driver puts pairs in use, frames on each pair.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress};

use super::tests::{frame, get, packet, recorder};
use super::*;
use crate::devices::virtio::mmio::regs;
use crate::devices::virtio::testing::{TestDriver, DATA};

/// A device on two socket pairs, whose queue attach calls are recorded as
/// (backend fd, attached).
struct Mq {
    d: TestDriver,
    hosts: Vec<UnixDatagram>,
    fds: Vec<i32>,
    attach: Arc<Mutex<Vec<(i32, bool)>>>,
    c: Arc<NetCounters>,
}

const CTRL: usize = 4;
const MQ: u64 = 1 << VIRTIO_NET_F_MQ;

fn mq() -> Mq {
    let (mut fds, mut hosts, mut raw) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..2 {
        let (dev, host) = UnixDatagram::pair().unwrap();
        host.set_nonblocking(true).unwrap();
        raw.push(dev.as_raw_fd());
        fds.push(OwnedFd::from(dev));
        hosts.push(host);
    }
    let attach = Arc::new(Mutex::new(Vec::new()));
    let log = attach.clone();
    let set_queue: SetQueue = Box::new(move |fd, on| {
        log.lock().unwrap().push((fd.as_raw_fd(), on));
        Ok(())
    });
    let net = Net::with_backends(fds, "mq", None, recorder().0, Some(set_queue)).unwrap();
    let c = net.counters();
    assert_eq!(net.pairs(), 2);
    assert_eq!(net.event_fds().len(), 4, "two TAP queues, two timers");
    Mq {
        d: TestDriver::new(Box::new(net)),
        hosts,
        fds: raw,
        attach,
        c,
    }
}

/// Sends a control command; returns (used length, ack).
fn command(m: &mut Mq, bytes: &[u8]) -> (u32, u8) {
    let (cmd, ack) = (DATA + 0x8_0000, DATA + 0x8_1000);
    m.d.mem.write_slice(bytes, GuestAddress(cmd)).unwrap();
    m.d.mem.write_obj(0xeeu8, GuestAddress(ack)).unwrap();
    let before = m.d.used(CTRL).len();
    m.d.add_chain(CTRL, &[(cmd, bytes.len() as u32, false), (ack, 1, true)]);
    m.d.kick(CTRL);
    let used = m.d.used(CTRL);
    assert_eq!(used.len(), before + 1);
    (used[before].1, m.d.mem.read_obj(GuestAddress(ack)).unwrap())
}

#[test]
fn a_second_pair_is_offered_and_used_once_the_driver_asks_for_it() {
    let mut m = mq();
    m.d.write(regs::DEVICE_FEATURES_SEL, 0);
    let f = u64::from(m.d.read(regs::DEVICE_FEATURES));
    assert_ne!(f & (1 << VIRTIO_NET_F_CTRL_VQ), 0);
    assert_ne!(f & MQ, 0);
    assert_eq!(
        m.d.read(regs::CONFIG + 8) & 0xffff,
        2,
        "max_virtqueue_pairs"
    );
    m.d.write(regs::QUEUE_SEL, CTRL as u32);
    assert_eq!(m.d.read(regs::QUEUE_NUM_MAX), 64, "the control queue");
    // Until the driver says otherwise only the first pair is in use: the
    // second TAP queue is detached (at open and again at DRIVER_OK).
    let detached = m.attach.lock().unwrap().clone();
    assert!(
        detached.iter().all(|&(fd, on)| fd == m.fds[1] && !on),
        "{detached:?}"
    );
    assert!(!detached.is_empty());

    let rx1 = rx_queue(1);
    m.d.add_chain(rx1, &[(DATA, 0x2000, true)]);
    m.d.kick(rx1);
    m.hosts[1].send(&packet(&frame(100, 1))).unwrap();
    m.d.source(pair_token(1));
    assert!(
        m.d.used(rx1).is_empty(),
        "a pair not in use delivers nothing"
    );

    assert_eq!(command(&mut m, &[4, 0, 2, 0]), (1, 0), "VQ_PAIRS_SET 2: OK");
    assert_eq!(*m.attach.lock().unwrap().last().unwrap(), (m.fds[1], true));
    m.hosts[1].send(&packet(&frame(200, 2))).unwrap();
    m.d.source(pair_token(1));
    let used = m.d.used(rx1);
    assert_eq!(used.len(), 1, "the second pair receives");
    assert_eq!(m.d.mem.read_obj::<u16>(GuestAddress(DATA + 10)).unwrap(), 1);
    assert_eq!(get(&m.c.rx_frames), 1);

    // Transmit on the second pair reaches the second TAP queue.
    let out = packet(&frame(80, 3));
    m.d.mem
        .write_slice(&out, GuestAddress(DATA + 0x4000))
        .unwrap();
    m.d.add_chain(tx_queue(1), &[(DATA + 0x4000, out.len() as u32, false)]);
    m.d.kick(tx_queue(1));
    let mut buf = vec![0u8; 4096];
    let n = m.hosts[1].recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], &out[..]);
}

#[test]
fn bad_control_commands_get_an_error_and_change_nothing() {
    let mut m = mq();
    let calls = m.attach.lock().unwrap().len();
    for bad in [
        &[4u8, 0, 3, 0][..],
        &[4, 0, 0, 0],
        &[4, 0, 2],
        &[4, 1, 2, 0],
        &[0, 0, 1, 0],
        &[4],
    ] {
        assert_eq!(command(&mut m, bad), (1, 1), "{bad:?}: VIRTIO_NET_ERR");
    }
    assert_eq!(m.attach.lock().unwrap().len(), calls, "no queue attached");
    assert_eq!(get(&m.c.ctrl_invalid), 6);
    // No ack byte: the chain comes back empty.
    let cmd = DATA + 0x8_0000;
    m.d.mem
        .write_slice(&[4, 0, 2, 0], GuestAddress(cmd))
        .unwrap();
    m.d.add_chain(CTRL, &[(cmd, 4, false)]);
    m.d.kick(CTRL);
    assert_eq!(m.d.used(CTRL).last().unwrap().1, 0);
    assert!(!m.d.needs_reset());
}

#[test]
fn a_reset_goes_back_to_one_pair() {
    let mut m = mq();
    assert_eq!(command(&mut m, &[4, 0, 2, 0]), (1, 0));
    m.d.write(regs::STATUS, 0);
    assert_eq!(*m.attach.lock().unwrap().last().unwrap(), (m.fds[1], false));
}

#[test]
fn a_snapshot_keeps_the_pairs_in_use() {
    let mut m = mq();
    assert_eq!(command(&mut m, &[4, 0, 2, 0]), (1, 0));
    let state = m.d.shared.save();
    let fresh = mq();
    let too_many = serde_json::json!({ "pairs_in_use": 3 });
    fresh.d.with_device(|dev| {
        assert!(
            dev.restore_state(&too_many).is_err(),
            "more pairs than the device has"
        );
    });
    fresh
        .d
        .with_device(|dev| dev.restore_state(&state.device).unwrap());
    assert_eq!(
        *fresh.attach.lock().unwrap().last().unwrap(),
        (fresh.fds[1], true)
    );
}
