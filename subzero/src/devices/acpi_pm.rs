//! Hardware-reduced ACPI power management: the sleep control, sleep status
//! and reset registers that the FADT points at. Writing sleep type S5 with
//! SLP_EN powers off; writing the reset value resets.

use crate::arch::x86_64::layout::ports::{
    ACPI_PM_BASE, ACPI_RESET, ACPI_RESET_VALUE, ACPI_S5_SLEEP_TYPE, ACPI_SLEEP_CONTROL,
};
use crate::bus::{BusDevice, DeviceAction};

/// SLP_EN in the sleep control register.
const SLP_EN: u8 = 1 << 5;
/// SLP_TYP field in the sleep control register.
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0b111;

const SLEEP_CONTROL_OFFSET: u64 = (ACPI_SLEEP_CONTROL - ACPI_PM_BASE) as u64;
const RESET_OFFSET: u64 = (ACPI_RESET - ACPI_PM_BASE) as u64;

/// The register block.
#[derive(Default)]
pub struct AcpiPm;

impl BusDevice for AcpiPm {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
        let Some(&value) = data.first() else {
            return DeviceAction::None;
        };
        match offset {
            SLEEP_CONTROL_OFFSET if value & SLP_EN != 0 => {
                let sleep_type = (value >> SLP_TYP_SHIFT) & SLP_TYP_MASK;
                if sleep_type == ACPI_S5_SLEEP_TYPE {
                    DeviceAction::PowerOff
                } else {
                    log::info!("guest asked for unsupported sleep state S{sleep_type}; ignored");
                    DeviceAction::None
                }
            }
            RESET_OFFSET if value == ACPI_RESET_VALUE => DeviceAction::Reset,
            _ => DeviceAction::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s5_with_slp_en_powers_off() {
        let mut pm = AcpiPm;
        let s5 = (ACPI_S5_SLEEP_TYPE << SLP_TYP_SHIFT) | SLP_EN;
        assert_eq!(
            pm.write(SLEEP_CONTROL_OFFSET, &[s5]),
            DeviceAction::PowerOff
        );
        // Without SLP_EN, or another sleep type: nothing.
        assert_eq!(
            pm.write(SLEEP_CONTROL_OFFSET, &[ACPI_S5_SLEEP_TYPE << SLP_TYP_SHIFT]),
            DeviceAction::None
        );
        assert_eq!(
            pm.write(SLEEP_CONTROL_OFFSET, &[(3 << SLP_TYP_SHIFT) | SLP_EN]),
            DeviceAction::None
        );
    }

    #[test]
    fn reset_register_resets() {
        let mut pm = AcpiPm;
        assert_eq!(
            pm.write(RESET_OFFSET, &[ACPI_RESET_VALUE]),
            DeviceAction::Reset
        );
        assert_eq!(pm.write(RESET_OFFSET, &[0x42]), DeviceAction::None);
        assert_eq!(pm.write(RESET_OFFSET, &[]), DeviceAction::None);
    }
}
