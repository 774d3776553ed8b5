//! Just enough of the i8042 keyboard controller for a guest to reset the
//! machine: writing 0xfe to the command port pulses the CPU reset line, which
//! is how Linux reboots with `reboot=k` or when ACPI reset fails.

use crate::bus::{BusDevice, DeviceAction};

/// The command that pulses the reset line.
const CMD_RESET_CPU: u8 = 0xfe;

/// The controller, spanning ports 0x60-0x64 (offset 0 data, offset 4 command).
#[derive(Default)]
pub struct I8042;

/// Offset of the command/status port from the data port.
pub const COMMAND_OFFSET: u64 = 4;

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status 0: output buffer empty, input buffer empty, nothing to read.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            DeviceAction::Reset
        } else {
            DeviceAction::None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_reset_command_on_command_port_resets() {
        let mut dev = I8042;
        assert_eq!(dev.write(COMMAND_OFFSET, &[0xfe]), DeviceAction::Reset);
        assert_eq!(dev.write(COMMAND_OFFSET, &[0xad]), DeviceAction::None);
        assert_eq!(dev.write(0, &[0xfe]), DeviceAction::None);
        let mut status = [0xffu8];
        dev.read(COMMAND_OFFSET, &mut status);
        assert_eq!(status, [0]);
    }
}
