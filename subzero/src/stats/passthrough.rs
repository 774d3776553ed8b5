//! The report's rows for PCI passthrough devices: what of their I/O still
//! left the guest (configuration and trapped BAR accesses), and how many
//! interrupts the device raised, which go from VFIO to KVM without Subzero.

use std::fmt::Write;

use serde::{Deserialize, Serialize};

/// One passthrough device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassthroughRow {
    /// Device name, e.g. "vfio-0000:00:04.0".
    pub device: String,
    /// Its slot on the guest's bus 0.
    pub slot: u8,
    /// Configuration-space accesses (each one exited).
    pub config_accesses: u64,
    /// Trapped BAR reads: the MSI-X table, and areas VFIO would not map.
    pub bar_reads: u64,
    /// Trapped BAR writes.
    pub bar_writes: u64,
    /// BAR placements the root complex refused.
    pub refused_placements: u64,
    /// The device's MSI-X interrupts on the host (`/proc/interrupts`), which
    /// KVM injected with no exit to userspace; absent when unreadable.
    pub host_interrupts: Option<u64>,
}

/// Appends the passthrough table to `o` (nothing without devices).
pub fn table(rows: &[PassthroughRow], o: &mut String) {
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "\nPCI passthrough (mapped BARs and interrupts never exit to userspace)\n\
         {:<22} {:>4} {:>8} {:>10} {:>11} {:>8} {:>11}",
        "device", "slot", "config", "bar reads", "bar writes", "refused", "interrupts"
    );
    for r in rows {
        let irqs = r.host_interrupts.map_or("-".to_string(), |n| n.to_string());
        let _ = writeln!(
            o,
            "{:<22} {:>4} {:>8} {:>10} {:>11} {:>8} {:>11}",
            r.device,
            r.slot,
            r.config_accesses,
            r.bar_reads,
            r.bar_writes,
            r.refused_placements,
            irqs
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_has_one_line_per_device() {
        let mut o = String::new();
        table(&[], &mut o);
        assert!(o.is_empty());
        let row = PassthroughRow {
            device: "vfio-0000:00:04.0".into(),
            slot: 1,
            config_accesses: 120,
            bar_reads: 3,
            bar_writes: 34,
            refused_placements: 0,
            host_interrupts: Some(812),
        };
        table(
            &[
                row.clone(),
                PassthroughRow {
                    host_interrupts: None,
                    ..row
                },
            ],
            &mut o,
        );
        let lines: Vec<_> = o.lines().collect();
        assert!(lines[1].starts_with("PCI passthrough"));
        assert!(
            lines[3].starts_with("vfio-0000:00:04.0") && lines[3].ends_with(" 812"),
            "{o}"
        );
        assert!(lines[4].ends_with(" -"), "{o}");
    }
}
