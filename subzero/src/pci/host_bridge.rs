//! The host bridge at 00:00.0: a header with no BARs and nothing writable.
//! Its class (0x0600) is what a kernel probing ports 0xcf8/0xcfc looks for
//! to trust that configuration mechanism.

use super::{regs, Bar, PciDevice};

/// Red Hat's vendor id, with its generic PCIe host bridge device id.
const VENDOR: u32 = 0x1b36;
const DEVICE: u32 = 0x0008;
/// Class 06 (bridge), subclass 00 (host), prog-if 00.
const CLASS_HOST_BRIDGE: u32 = 0x0600_0000;

/// The root complex's host bridge.
#[derive(Debug, Default)]
pub struct HostBridge;

impl PciDevice for HostBridge {
    fn read_config(&mut self, offset: usize) -> u32 {
        match offset {
            regs::VENDOR_ID => DEVICE << 16 | VENDOR,
            regs::CLASS_REVISION => CLASS_HOST_BRIDGE,
            regs::SUBSYSTEM => DEVICE << 16 | VENDOR,
            _ => 0,
        }
    }

    fn write_config(&mut self, _offset: usize, _data: &[u8]) {}

    fn bars(&self) -> Vec<(usize, Bar)> {
        Vec::new()
    }

    fn decoding(&self) -> (bool, bool) {
        (false, false)
    }

    fn read_bar(&mut self, _index: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write_bar(&mut self, _index: usize, _offset: u64, _data: &[u8]) {}
}
