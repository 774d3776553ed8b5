use super::*;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

fn with_irq() -> (I8042, EventFd) {
    let evt = EventFd::new(EFD_NONBLOCK).unwrap();
    (
        I8042::new(IrqTrigger::Eventfd(evt.try_clone().unwrap())),
        evt,
    )
}

fn read(dev: &mut I8042, offset: u64) -> u8 {
    let mut b = [0u8];
    dev.read(offset, &mut b);
    b[0]
}

fn drain(dev: &mut I8042) -> Vec<u8> {
    let mut out = Vec::new();
    while read(dev, COMMAND_OFFSET) & status::OUTPUT_FULL != 0 {
        out.push(read(dev, 0));
    }
    out
}

#[test]
fn only_reset_command_on_command_port_resets() {
    let mut dev = I8042::default();
    assert_eq!(dev.write(COMMAND_OFFSET, &[0xfe]), DeviceAction::Reset);
    assert_eq!(dev.write(COMMAND_OFFSET, &[0xad]), DeviceAction::None);
    assert_eq!(dev.write(0, &[0xfe]), DeviceAction::None);
}

#[test]
fn the_controller_answers_linuxs_probe() {
    let mut dev = I8042::default();
    assert_eq!(read(&mut dev, COMMAND_OFFSET) & status::OUTPUT_FULL, 0);
    dev.write(COMMAND_OFFSET, &[cmd::SELF_TEST]);
    assert_eq!(drain(&mut dev), [0x55]);
    dev.write(COMMAND_OFFSET, &[cmd::READ_CTR]);
    let ctr = drain(&mut dev)[0];
    assert_eq!(ctr & CTR_KBD_INT, CTR_KBD_INT);
    dev.write(COMMAND_OFFSET, &[cmd::WRITE_CTR]);
    dev.write(0, &[ctr & !CTR_KBD_INT]);
    dev.write(COMMAND_OFFSET, &[cmd::READ_CTR]);
    assert_eq!(drain(&mut dev), [ctr & !CTR_KBD_INT]);
    dev.write(COMMAND_OFFSET, &[cmd::TEST_KBD]);
    assert_eq!(drain(&mut dev), [0x00]);
    dev.write(COMMAND_OFFSET, &[cmd::WRITE_KBD_BUFFER]);
    dev.write(0, &[0x42]);
    assert_eq!(drain(&mut dev), [0x42], "echoed through the output buffer");
}

#[test]
fn the_keyboard_acks_resets_and_identifies() {
    let mut dev = I8042::default();
    dev.write(0, &[0xff]);
    assert_eq!(drain(&mut dev), [KBD_ACK, KBD_SELF_TEST_OK]);
    dev.write(0, &[0xf2]);
    assert_eq!(drain(&mut dev), [KBD_ACK, 0xab, 0x83]);
    dev.write(0, &[0xed]);
    dev.write(0, &[0x07]);
    assert_eq!(
        drain(&mut dev),
        [KBD_ACK, KBD_ACK],
        "LEDs and their argument"
    );
    dev.write(0, &[0xf0]);
    dev.write(0, &[0x00]);
    assert_eq!(drain(&mut dev), [KBD_ACK, KBD_ACK, 0x02], "scan code set 2");
}

#[test]
fn ctrl_alt_del_is_queued_with_an_interrupt_per_byte() {
    let (mut dev, irq) = with_irq();
    dev.ctrl_alt_del();
    assert_eq!(irq.read().unwrap(), 1, "one interrupt for the first byte");
    let mut got = Vec::new();
    while read(&mut dev, COMMAND_OFFSET) & status::OUTPUT_FULL != 0 {
        got.push(read(&mut dev, 0));
        if read(&mut dev, COMMAND_OFFSET) & status::OUTPUT_FULL != 0 {
            assert_eq!(irq.read().unwrap(), 1, "another for the next byte");
        }
    }
    assert_eq!(got, CTRL_ALT_DEL);
    assert!(irq.read().is_err(), "no interrupt once the queue is empty");
}

#[test]
fn state_round_trips_and_a_flood_is_bounded() {
    let mut dev = I8042::default();
    for _ in 0..1000 {
        dev.ctrl_alt_del();
    }
    let state = dev.state();
    assert_eq!(state.queue.len(), MAX_QUEUE);
    let json = serde_json::to_string(&state).unwrap();
    let back: I8042State = serde_json::from_str(&json).unwrap();
    let mut restored = I8042::from_state(IrqTrigger::None, back);
    assert_eq!(restored.state(), state);
    assert_eq!(drain(&mut restored).len(), MAX_QUEUE);
}
