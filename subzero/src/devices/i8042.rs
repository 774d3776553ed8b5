//! The i8042 keyboard controller, as much as Linux's i8042 and atkbd
//! drivers need: the controller's commands and command byte, a keyboard
//! that answers its commands, IRQ 1, and the one key press the VMM makes:
//! Ctrl-Alt-Del (the API's `SendCtrlAltDel`). Writing 0xfe to the command
//! port pulses the CPU reset line, which is how Linux reboots with
//! `reboot=k` or when ACPI reset fails.
//!
//! There is no mouse (AUX) port. The keyboard speaks scan code set 2 and
//! the controller does not translate, so the driver sees set 2 codes.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use vm_superio::Trigger;

use super::serial::IrqTrigger;
use crate::bus::{BusDevice, DeviceAction};

/// Offset of the command/status port from the data port.
pub const COMMAND_OFFSET: u64 = 4;

/// Controller commands (written to the command port).
mod cmd {
    pub const READ_CTR: u8 = 0x20;
    pub const WRITE_CTR: u8 = 0x60;
    pub const DISABLE_AUX: u8 = 0xa7;
    pub const ENABLE_AUX: u8 = 0xa8;
    pub const TEST_AUX: u8 = 0xa9;
    pub const SELF_TEST: u8 = 0xaa;
    pub const TEST_KBD: u8 = 0xab;
    pub const DISABLE_KBD: u8 = 0xad;
    pub const ENABLE_KBD: u8 = 0xae;
    pub const WRITE_OUTPUT_PORT: u8 = 0xd1;
    pub const WRITE_KBD_BUFFER: u8 = 0xd2;
    pub const RESET_CPU: u8 = 0xfe;
}

/// Status register bits.
mod status {
    pub const OUTPUT_FULL: u8 = 0x01;
    pub const SYSTEM: u8 = 0x04;
    pub const COMMAND: u8 = 0x08;
    pub const UNLOCKED: u8 = 0x10;
}

/// Command byte bits.
const CTR_KBD_INT: u8 = 0x01;
const CTR_SYSTEM: u8 = 0x04;
const CTR_AUX_DISABLED: u8 = 0x20;

/// Keyboard replies.
const KBD_ACK: u8 = 0xfa;
const KBD_SELF_TEST_OK: u8 = 0xaa;
/// An MF2 keyboard's identity.
const KBD_ID: [u8; 2] = [0xab, 0x83];

/// Ctrl, Alt and Delete pressed, then released, in scan code set 2.
pub const CTRL_ALT_DEL: [u8; 11] = [
    0x14, 0x11, 0xe0, 0x71, // make: left Ctrl, left Alt, Delete
    0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14, // break: Delete, Alt, Ctrl
];

/// Most bytes queued for the guest; more are dropped (a real controller
/// holds one).
const MAX_QUEUE: usize = 64;

/// What the controller keeps, as a snapshot saves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct I8042State {
    /// The command byte.
    pub command_byte: u8,
    /// A command waiting for its data byte (controller or keyboard).
    pub pending: Option<u16>,
    /// Bytes waiting for the guest to read.
    pub queue: Vec<u8>,
    /// Whether the last write went to the command port.
    pub last_was_command: bool,
}

impl Default for I8042State {
    fn default() -> Self {
        I8042State {
            command_byte: CTR_KBD_INT | CTR_SYSTEM | CTR_AUX_DISABLED,
            pending: None,
            queue: Vec::new(),
            last_was_command: false,
        }
    }
}

/// A keyboard-command data byte is pending: `KBD_PENDING | command`.
const KBD_PENDING: u16 = 0x100;

/// The controller, spanning ports 0x60-0x64.
pub struct I8042 {
    state: I8042State,
    queue: VecDeque<u8>,
    irq: IrqTrigger,
}

impl Default for I8042 {
    fn default() -> Self {
        I8042::new(IrqTrigger::None)
    }
}

impl I8042 {
    /// A controller raising IRQ 1 through `irq`.
    pub fn new(irq: IrqTrigger) -> Self {
        I8042::from_state(irq, I8042State::default())
    }

    /// A controller with a snapshot's state.
    pub fn from_state(irq: IrqTrigger, state: I8042State) -> Self {
        let queue = state.queue.iter().copied().take(MAX_QUEUE).collect();
        I8042 {
            state: I8042State {
                queue: Vec::new(),
                ..state
            },
            queue,
            irq,
        }
    }

    /// The state now, for a snapshot.
    pub fn state(&self) -> I8042State {
        I8042State {
            queue: self.queue.iter().copied().collect(),
            ..self.state.clone()
        }
    }

    /// Presses and releases Ctrl-Alt-Del on the keyboard.
    pub fn ctrl_alt_del(&mut self) {
        for b in CTRL_ALT_DEL {
            self.push(b);
        }
    }

    fn push(&mut self, b: u8) {
        if self.queue.len() >= MAX_QUEUE {
            return;
        }
        let was_empty = self.queue.is_empty();
        self.queue.push_back(b);
        if was_empty {
            self.interrupt();
        }
    }

    fn interrupt(&self) {
        if self.state.command_byte & CTR_KBD_INT != 0 {
            if let Err(e) = self.irq.trigger() {
                log::warn!("i8042: cannot raise IRQ 1: {e}");
            }
        }
    }

    fn status(&self) -> u8 {
        let mut s = status::UNLOCKED;
        if !self.queue.is_empty() {
            s |= status::OUTPUT_FULL;
        }
        if self.state.command_byte & CTR_SYSTEM != 0 {
            s |= status::SYSTEM;
        }
        if self.state.last_was_command {
            s |= status::COMMAND;
        }
        s
    }

    fn command(&mut self, c: u8) -> DeviceAction {
        self.state.pending = None;
        match c {
            cmd::READ_CTR => self.push(self.state.command_byte),
            cmd::WRITE_CTR | cmd::WRITE_OUTPUT_PORT | cmd::WRITE_KBD_BUFFER => {
                self.state.pending = Some(u16::from(c))
            }
            cmd::SELF_TEST => self.push(0x55),
            cmd::TEST_KBD => self.push(0x00),
            // No AUX port: its test fails (clock line stuck low).
            cmd::TEST_AUX => self.push(0x01),
            cmd::DISABLE_AUX | cmd::ENABLE_AUX | cmd::DISABLE_KBD | cmd::ENABLE_KBD => {}
            cmd::RESET_CPU => return DeviceAction::Reset,
            _ => log::debug!("i8042: command {c:#x} ignored"),
        }
        DeviceAction::None
    }

    fn data(&mut self, v: u8) {
        match self.state.pending.take() {
            Some(p) if p == u16::from(cmd::WRITE_CTR) => self.state.command_byte = v,
            Some(p) if p == u16::from(cmd::WRITE_OUTPUT_PORT) => {}
            Some(p) if p == u16::from(cmd::WRITE_KBD_BUFFER) => self.push(v),
            // The argument of a keyboard command (LEDs, rate, scan set).
            Some(p) if p & KBD_PENDING != 0 => {
                self.push(KBD_ACK);
                if p as u8 == 0xf0 && v == 0 {
                    self.push(0x02);
                }
            }
            _ => self.keyboard(v),
        }
    }

    /// A byte for the keyboard itself.
    fn keyboard(&mut self, c: u8) {
        match c {
            0xff => {
                self.queue.clear();
                self.push(KBD_ACK);
                self.push(KBD_SELF_TEST_OK);
            }
            0xf2 => {
                self.push(KBD_ACK);
                KBD_ID.iter().for_each(|&b| self.push(b));
            }
            // Set LEDs, typematic rate, scan code set: an argument follows.
            0xed | 0xf3 | 0xf0 => {
                self.push(KBD_ACK);
                self.state.pending = Some(KBD_PENDING | u16::from(c));
            }
            0xee => self.push(0xee),
            _ => self.push(KBD_ACK),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(first) = data.first_mut() else {
            return;
        };
        *first = match offset {
            0 => {
                let b = self.queue.pop_front().unwrap_or(0);
                if !self.queue.is_empty() {
                    self.interrupt();
                }
                b
            }
            COMMAND_OFFSET => self.status(),
            _ => 0xff,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
        let Some(&v) = data.first() else {
            return DeviceAction::None;
        };
        match offset {
            0 => {
                self.state.last_was_command = false;
                self.data(v);
                DeviceAction::None
            }
            COMMAND_OFFSET => {
                self.state.last_was_command = true;
                self.command(v)
            }
            _ => DeviceAction::None,
        }
    }
}

#[cfg(test)]
mod tests;
