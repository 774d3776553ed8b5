//! The reset vector. A PC starts (and restarts) at F000:FFF0, where firmware
//! lives. Subzero has no firmware, but Linux can still jump there to reboot:
//! with hardware-reduced ACPI and no EFI it picks the EFI reboot method,
//! which falls back to `machine_real_restart`, a far jump to F000:FFF0 in
//! real mode. The stub placed there pulses the i8042 reset line, so that
//! jump resets the VM instead of running off into zeroed memory.

use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::layout::{ports, RESET_VECTOR};

/// Real-mode code at the reset vector.
pub const RESET_STUB: [u8; 7] = [
    0xb0,
    0xfe, // mov al, 0xfe          (i8042: pulse reset)
    0xe6,
    ports::I8042_COMMAND as u8, // out 0x64, al
    0xf4,                       // hlt                          (never reached)
    0xeb,
    0xfd, // jmp short back to hlt
];

/// Writes [`RESET_STUB`] at [`RESET_VECTOR`].
pub fn write_reset_stub(mem: &GuestMemoryMmap) -> Result<(), GuestMemoryError> {
    mem.write_slice(&RESET_STUB, GuestAddress(RESET_VECTOR))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stub_fits_below_1_mib_and_targets_the_i8042() {
        assert!(RESET_VECTOR + RESET_STUB.len() as u64 <= 0x10_0000);
        assert_eq!(
            ports::I8042_COMMAND,
            0x64,
            "out imm8 needs the port in one byte"
        );
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_reset_stub(&mem).unwrap();
        let mut back = [0u8; 7];
        mem.read_slice(&mut back, GuestAddress(RESET_VECTOR))
            .unwrap();
        assert_eq!(back, RESET_STUB);
        // The hlt; jmp loop jumps back onto the hlt.
        assert_eq!(back[5..], [0xeb, 0xfd]);
    }
}
