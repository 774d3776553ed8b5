//! ACPI tables: RSDP, XSDT, FADT (hardware-reduced), MADT, MCFG and DSDT.
//!
//! The RSDP sits at [`layout::RSDP_START`], inside the BIOS area Linux scans; the other
//! tables follow from [`layout::ACPI_TABLES_START`] in the order XSDT, FADT, MADT, MCFG,
//! DSDT. With PCI, the DSDT holds a `PNP0A08` host bridge whose `_CRS` gives the bus
//! range and the I/O and memory windows, and a `PNP0C02` device that reserves the ECAM
//! window the MCFG announces.
//! The platform is hardware-reduced: no PM1/GPE blocks and no SCI. Power-off and reset
//! go through the FADT sleep control and reset registers in the
//! [`layout::ports::ACPI_PM_BASE`] block. Linux ignores SCI_INT and skips the PIT and
//! the legacy PIC on such a platform.

use acpi_tables::fadt::{FADTBuilder, Flags, FADT};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{EnabledStatus, IoApic, ProcessorLocalApic};
use acpi_tables::mcfg::MCFG;
use acpi_tables::{aml, rsdp::Rsdp, sdt::Sdt, xsdt::XSDT, Aml};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::layout::{self, ports};

/// An MMIO device described in the DSDT (virtio-mmio devices use hid "LNRO0005").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcpiMmioDevice {
    /// `_HID`: a 7-character PNP id or an 8-character ACPI id, e.g. `"LNRO0005"`.
    pub hid: &'static str,
    /// `_UID`, unique among devices with the same `_HID`.
    pub uid: u32,
    /// Base of the device's MMIO window (the window must end at or below 4 GiB).
    pub base: u64,
    /// Length of the MMIO window in bytes (non-zero).
    pub len: u32,
    /// The device's interrupt: an IOAPIC pin, edge-triggered, active high.
    pub gsi: u32,
}

/// What the ACPI tables describe.
#[derive(Clone, Debug)]
pub struct AcpiConfig<'a> {
    /// Number of vCPUs; their APIC ids and ACPI processor uids are `0..num_vcpus`.
    pub num_vcpus: u8,
    /// MMIO devices to put in the DSDT, named `V000`, `V001`, ... in this order.
    pub mmio_devices: &'a [AcpiMmioDevice],
    /// With PCI: its 64-bit memory window (the ECAM, I/O and 32-bit windows are
    /// fixed in [`layout`]). `None` leaves PCI out of the tables.
    pub pci_mem64: Option<std::ops::Range<u64>>,
}

/// Errors from [`create_acpi_tables`].
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The VM has no vCPUs.
    #[error("the ACPI tables need at least one vCPU")]
    NoVcpus,
    /// More MMIO devices than the DSDT has names for (`V000` to `VFFF`).
    #[error("too many MMIO devices for the DSDT: {count} (at most {max})")]
    TooManyDevices {
        /// Devices asked for.
        count: usize,
        /// Most devices supported.
        max: usize,
    },
    /// An MMIO device cannot be described.
    #[error("MMIO device {index} ({device:?}): {problem}")]
    InvalidMmioDevice {
        /// Position in [`AcpiConfig::mmio_devices`].
        index: usize,
        /// The device.
        device: AcpiMmioDevice,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// The PCI 64-bit window is empty or not above 4 GiB.
    #[error("the PCI 64-bit window {0:#x?} must be non-empty and above 4 GiB")]
    BadPciWindow(std::ops::Range<u64>),
    /// The tables do not fit below [`layout::ACPI_TABLES_END`].
    #[error("the ACPI tables would end at {end:#x}, past the end of the ACPI area at {limit:#x}")]
    TablesTooLarge {
        /// Where the last table would end.
        end: u64,
        /// [`layout::ACPI_TABLES_END`].
        limit: u64,
    },
    /// Writing a table into guest memory failed.
    #[error("cannot write the {table} to guest memory")]
    GuestMemory {
        /// Which table.
        table: &'static str,
        /// The guest memory error.
        #[source]
        source: GuestMemoryError,
    },
}

const OEM_ID: [u8; 6] = *b"SUBZRO";
const OEM_REVISION: u32 = 1;
/// FADT minor version: ACPI 6.3, like Cloud Hypervisor; Linux does not check it.
const FADT_MINOR_VERSION: u8 = 3;
const MADT_REVISION: u8 = 5;
const DSDT_REVISION: u8 = 6;
/// IA-PC boot architecture flags (FADT offset 109).
const IAPC_VGA_NOT_PRESENT: u16 = 1 << 2;
const IAPC_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;
/// MADT flag: the system also has dual 8259 PICs.
const MADT_PCAT_COMPAT: u32 = 1;
const HEADER_LEN: usize = 36;
const RSDP_LEN: u64 = 36;
/// The XSDT lists the FADT, the MADT and the MCFG.
const XSDT_LEN: u64 = HEADER_LEN as u64 + 3 * 8;
/// MCFG: header, 8 reserved bytes, one 16-byte allocation.
const MCFG_LEN: u64 = HEADER_LEN as u64 + 8 + 16;
/// Device names are `V` and three hex digits.
const MAX_MMIO_DEVICES: usize = 0x1000;

const _: () = assert!(layout::RSDP_START + RSDP_LEN <= layout::ACPI_TABLES_START);

fn aml_bytes(aml: &dyn Aml) -> Vec<u8> {
    let mut bytes = Vec::new();
    aml.to_aml_bytes(&mut bytes);
    bytes
}

const fn align8(addr: u64) -> u64 {
    (addr + 7) & !7
}

/// A table with the standard header, `len` bytes long (zeros after the header).
fn new_sdt(signature: [u8; 4], len: u32, revision: u8, table_id: [u8; 8]) -> Sdt {
    Sdt::new(signature, len, revision, OEM_ID, table_id, OEM_REVISION)
}

/// A byte-wide System I/O register.
fn io_register(port: u16) -> GAS {
    GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        port.into(),
    )
}

fn validate(cfg: &AcpiConfig) -> Result<(), AcpiError> {
    if cfg.num_vcpus == 0 {
        return Err(AcpiError::NoVcpus);
    }
    if cfg.mmio_devices.len() > MAX_MMIO_DEVICES {
        return Err(AcpiError::TooManyDevices {
            count: cfg.mmio_devices.len(),
            max: MAX_MMIO_DEVICES,
        });
    }
    for (index, &device) in cfg.mmio_devices.iter().enumerate() {
        let hid_ok = matches!(device.hid.len(), 7 | 8)
            && device
                .hid
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        let end = device.base.checked_add(u64::from(device.len));
        let problem = if !hid_ok {
            "_HID must be 7 or 8 uppercase letters and digits"
        } else if device.len == 0 || end.is_none_or(|end| end > 1 << 32) {
            "the MMIO window must be non-empty and end at or below 4 GiB"
        } else if device.gsi >= layout::IOAPIC_NUM_PINS {
            "the GSI is not one of the IOAPIC's pins"
        } else {
            continue;
        };
        return Err(AcpiError::InvalidMmioDevice {
            index,
            device,
            problem,
        });
    }
    if let Some(w) = &cfg.pci_mem64 {
        if w.start < layout::MMIO_GAP_END || w.end <= w.start {
            return Err(AcpiError::BadPciWindow(w.clone()));
        }
    }
    Ok(())
}

/// `Device (PCI0)`, the host bridge, and `Device (MRES)`, the motherboard
/// resource that reserves the ECAM window (Linux trusts the MCFG only then).
fn pci_aml(mem64: &std::ops::Range<u64>) -> Vec<u8> {
    let io_start = ports::PCI_IO_START;
    let io_end = (u32::from(io_start) + ports::PCI_IO_SIZE - 1) as u16;
    let bus = aml::AddressSpace::new_bus_number(0u16, 0u16);
    let cfg_ports = aml::IO::new(
        ports::PCI_CONFIG,
        ports::PCI_CONFIG,
        1,
        ports::PCI_CONFIG_LEN as u8,
    );
    let io = aml::AddressSpace::new_io(io_start, io_end, None);
    let mem32 = aml::AddressSpace::new_memory(
        aml::AddressSpaceCacheable::NotCacheable,
        true,
        layout::PCI_MEM32_START as u32,
        (layout::PCI_MEM32_END - 1) as u32,
        None,
    );
    let mem64 = aml::AddressSpace::new_memory(
        aml::AddressSpaceCacheable::NotCacheable,
        true,
        mem64.start,
        mem64.end - 1,
        None,
    );
    let crs = aml::ResourceTemplate::new(vec![&bus, &cfg_ports, &io, &mem32, &mem64]);
    let hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0A08"));
    let cid = aml::Name::new("_CID".into(), &aml::EISAName::new("PNP0A03"));
    let adr = aml::Name::new("_ADR".into(), &aml::ZERO);
    let seg = aml::Name::new("_SEG".into(), &aml::ZERO);
    let uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let bbn = aml::Name::new("_BBN".into(), &aml::ZERO);
    let crs = aml::Name::new("_CRS".into(), &crs);
    let pci0 = aml::Device::new(
        "PCI0".into(),
        vec![&hid, &cid, &adr, &seg, &uid, &bbn, &crs],
    );

    let ecam = aml::Memory32Fixed::new(
        false,
        layout::PCI_ECAM_START as u32,
        layout::PCI_ECAM_SIZE as u32,
    );
    let mres_crs = aml::ResourceTemplate::new(vec![&ecam]);
    let mres_hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C02"));
    let mres_uid = aml::Name::new("_UID".into(), &aml::ONE);
    let mres_crs = aml::Name::new("_CRS".into(), &mres_crs);
    let mres = aml::Device::new("MRES".into(), vec![&mres_hid, &mres_uid, &mres_crs]);
    let mut bytes = aml_bytes(&pci0);
    bytes.extend(aml_bytes(&mres));
    bytes
}

fn build_mcfg() -> Vec<u8> {
    let mut mcfg = MCFG::new(OEM_ID, *b"SUBZMCFG", OEM_REVISION);
    mcfg.add_ecam(layout::PCI_ECAM_START, 0, 0, 0);
    aml_bytes(&mcfg)
}

/// `Device (Vnnn)` for one validated MMIO device.
fn mmio_device_aml(index: usize, dev: &AcpiMmioDevice) -> Vec<u8> {
    let name = format!("V{index:03X}");
    // validate() checked base + len <= 4 GiB, so base fits in 32 bits.
    let window = aml::Memory32Fixed::new(true, dev.base as u32, dev.len);
    let irq = aml::Interrupt::new(true, true, false, false, dev.gsi);
    let crs = aml::ResourceTemplate::new(vec![&window, &irq]);
    let hid = aml::Name::new("_HID".into(), &dev.hid);
    let uid = aml::Name::new("_UID".into(), &dev.uid);
    let crs = aml::Name::new("_CRS".into(), &crs);
    aml_bytes(&aml::Device::new(
        name.as_str().into(),
        vec![&hid, &uid, &crs],
    ))
}

fn build_dsdt(cfg: &AcpiConfig) -> Vec<u8> {
    let mut dsdt = new_sdt(*b"DSDT", 36, DSDT_REVISION, *b"SUBZDSDT");

    // \_S5_: SLP_TYPa, SLP_TYPb, reserved, reserved.
    let slp_typ = ports::ACPI_S5_SLEEP_TYPE;
    let s5 = aml::Package::new(vec![&slp_typ, &slp_typ, &aml::ZERO, &aml::ZERO]);
    dsdt.append_slice(&aml_bytes(&aml::Name::new("_S5_".into(), &s5)));

    let com1_io = aml::IO::new(ports::SERIAL_COM1, ports::SERIAL_COM1, 1, 8);
    let com1_irq = aml::Interrupt::new(true, true, false, false, ports::SERIAL_COM1_IRQ);
    let com1_crs = aml::ResourceTemplate::new(vec![&com1_io, &com1_irq]);
    let com1_hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501"));
    let com1_uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let com1_crs = aml::Name::new("_CRS".into(), &com1_crs);
    let com1 = aml::Device::new("COM1".into(), vec![&com1_hid, &com1_uid, &com1_crs]);

    // The i8042's keyboard port: Linux's i8042 driver finds the controller
    // through this PNP0303 device (a hardware-reduced FADT says nothing of
    // legacy devices).
    let kbd_data = aml::IO::new(ports::I8042_DATA, ports::I8042_DATA, 1, 1);
    let kbd_cmd = aml::IO::new(ports::I8042_COMMAND, ports::I8042_COMMAND, 1, 1);
    let kbd_irq = aml::Interrupt::new(true, true, false, false, ports::I8042_IRQ);
    let kbd_crs = aml::ResourceTemplate::new(vec![&kbd_data, &kbd_cmd, &kbd_irq]);
    let kbd_hid = aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0303"));
    let kbd_crs = aml::Name::new("_CRS".into(), &kbd_crs);
    let kbd = aml::Device::new("PS2K".into(), vec![&kbd_hid, &kbd_crs]);

    let mut sb = aml_bytes(&com1);
    sb.extend(aml_bytes(&kbd));
    for (index, dev) in cfg.mmio_devices.iter().enumerate() {
        sb.extend(mmio_device_aml(index, dev));
    }
    if let Some(mem64) = &cfg.pci_mem64 {
        sb.extend(pci_aml(mem64));
    }
    dsdt.append_slice(&aml::Scope::raw("\\_SB_".into(), sb));
    dsdt.as_slice().to_vec()
}

fn build_madt(num_vcpus: u8) -> Vec<u8> {
    let mut madt = new_sdt(*b"APIC", 44, MADT_REVISION, *b"SUBZMADT");
    madt.write_u32(36, layout::APIC_START as u32);
    madt.write_u32(40, MADT_PCAT_COMPAT);
    for id in 0..num_vcpus {
        let lapic = ProcessorLocalApic::new(id, id, EnabledStatus::Enabled);
        madt.append_slice(&aml_bytes(&lapic));
    }
    madt.append_slice(&aml_bytes(&IoApic::new(0, layout::IOAPIC_START as u32, 0)));
    madt.as_slice().to_vec()
}

fn build_fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut fadt = FADTBuilder::new(OEM_ID, *b"SUBZFACP", OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup);
    fadt.fadt_minor_version = FADT_MINOR_VERSION;
    fadt.iapc_boot_arch = (IAPC_VGA_NOT_PRESENT | IAPC_CMOS_RTC_NOT_PRESENT).into();
    fadt.reset_reg = io_register(ports::ACPI_RESET);
    fadt.reset_value = ports::ACPI_RESET_VALUE;
    fadt.sleep_control_reg = io_register(ports::ACPI_SLEEP_CONTROL);
    fadt.sleep_status_reg = io_register(ports::ACPI_SLEEP_STATUS);
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(*b"SUBZERO ").into();
    aml_bytes(&fadt.finalize())
}

/// Writes RSDP at [`layout::RSDP_START`] and the other tables from
/// [`layout::ACPI_TABLES_START`] (they must stay below [`layout::ACPI_TABLES_END`],
/// else error). Returns the RSDP address.
///
/// Nothing is written if the configuration is invalid or the tables do not fit.
pub fn create_acpi_tables(
    mem: &GuestMemoryMmap,
    cfg: &AcpiConfig,
) -> Result<GuestAddress, AcpiError> {
    validate(cfg)?;
    let dsdt = build_dsdt(cfg);
    let madt = build_madt(cfg.num_vcpus);

    let xsdt_addr = layout::ACPI_TABLES_START;
    let fadt_addr = align8(xsdt_addr + XSDT_LEN);
    let madt_addr = align8(fadt_addr + FADT::len() as u64);
    let mcfg_addr = align8(madt_addr + madt.len() as u64);
    let dsdt_addr = if cfg.pci_mem64.is_some() {
        align8(mcfg_addr + MCFG_LEN)
    } else {
        mcfg_addr
    };
    let end = dsdt_addr + dsdt.len() as u64;
    if end > layout::ACPI_TABLES_END {
        let limit = layout::ACPI_TABLES_END;
        return Err(AcpiError::TablesTooLarge { end, limit });
    }

    let fadt = build_fadt(dsdt_addr);
    let mut xsdt = XSDT::new(OEM_ID, *b"SUBZXSDT", OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    if cfg.pci_mem64.is_some() {
        xsdt.add_entry(mcfg_addr);
    }
    let rsdp = Rsdp::new(OEM_ID, xsdt_addr);
    let mut tables: Vec<(&'static str, u64, Vec<u8>)> = Vec::from([
        ("RSDP", layout::RSDP_START, aml_bytes(&rsdp)),
        ("XSDT", xsdt_addr, aml_bytes(&xsdt)),
        ("FADT", fadt_addr, fadt),
        ("MADT", madt_addr, madt),
        ("DSDT", dsdt_addr, dsdt),
    ]);
    if cfg.pci_mem64.is_some() {
        tables.push(("MCFG", mcfg_addr, build_mcfg()));
    }
    for (table, addr, bytes) in tables {
        mem.write_slice(&bytes, GuestAddress(addr))
            .map_err(|source| AcpiError::GuestMemory { table, source })?;
    }
    Ok(GuestAddress(layout::RSDP_START))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The i-th virtio-mmio device: 4 KiB slots from 0xd000_0000, GSIs from 5.
    fn virtio(i: u32) -> AcpiMmioDevice {
        let base = 0xd000_0000 + u64::from(i) * 0x1000;
        let gsi = 5 + i % 19;
        AcpiMmioDevice {
            hid: "LNRO0005",
            uid: i,
            base,
            len: 0x1000,
            gsi,
        }
    }

    fn cfg(num_vcpus: u8, mmio_devices: &[AcpiMmioDevice]) -> AcpiConfig<'_> {
        AcpiConfig {
            num_vcpus,
            mmio_devices,
            pci_mem64: None,
        }
    }

    fn guest_mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap()
    }

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b))
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
        haystack.windows(needle.len()).position(|w| w == needle)
    }

    /// Reads a whole SDT (length from its header) and checks signature and checksum.
    fn read_table(mem: &GuestMemoryMmap, addr: u64, sig: &[u8; 4]) -> Vec<u8> {
        assert!(addr >= layout::ACPI_TABLES_START, "{sig:?} at {addr:#x}");
        let mut header = [0u8; HEADER_LEN];
        mem.read_slice(&mut header, GuestAddress(addr)).unwrap();
        assert_eq!(&header[0..4], sig);
        let mut table = vec![0u8; u32_at(&header, 4) as usize];
        mem.read_slice(&mut table, GuestAddress(addr)).unwrap();
        assert_eq!(sum(&table), 0, "{sig:?} checksum");
        assert_eq!(&table[10..16], b"SUBZRO");
        assert!(addr + table.len() as u64 <= layout::ACPI_TABLES_END);
        table
    }

    /// Follows RSDP -> XSDT -> FADT, MADT and FADT -> DSDT; returns (FADT, MADT, DSDT).
    fn walk(mem: &GuestMemoryMmap, cfg: &AcpiConfig) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let rsdp_addr = create_acpi_tables(mem, cfg).unwrap();
        assert_eq!(rsdp_addr, GuestAddress(layout::RSDP_START));
        let mut rsdp = [0u8; 36];
        mem.read_slice(&mut rsdp, rsdp_addr).unwrap();
        assert_eq!(&rsdp[0..8], b"RSD PTR ");
        assert_eq!(rsdp[15], 2, "revision");
        assert_eq!(sum(&rsdp[..20]), 0, "RSDP checksum");
        assert_eq!(u32_at(&rsdp, 20), 36, "RSDP length");
        assert_eq!(sum(&rsdp), 0, "RSDP extended checksum");

        let xsdt = read_table(mem, u64_at(&rsdp, 24), b"XSDT");
        let entries = 2 + usize::from(cfg.pci_mem64.is_some());
        assert_eq!(xsdt.len(), 36 + 8 * entries);
        let fadt = read_table(mem, u64_at(&xsdt, 36), b"FACP");
        let madt = read_table(mem, u64_at(&xsdt, 44), b"APIC");
        let dsdt = read_table(mem, u64_at(&fadt, 140), b"DSDT");
        (fadt, madt, dsdt)
    }

    #[test]
    fn fadt_is_hardware_reduced_with_reset_and_sleep_registers() {
        let (fadt, _, _) = walk(&guest_mem(), &cfg(1, &[]));
        assert_eq!(fadt.len(), 276);
        assert_eq!(fadt[8], 6, "major revision");
        assert_eq!(fadt[131], FADT_MINOR_VERSION);
        assert_eq!(u32_at(&fadt, 40), 0, "32-bit DSDT unused, X_DSDT is set");
        let flags = u32_at(&fadt, 112);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        let iapc = u16::from_le_bytes([fadt[109], fadt[110]]);
        assert_eq!(
            iapc,
            (1 << 2) | (1 << 5),
            "VGA and CMOS absent, no 8042 flag"
        );
        // GAS: space id 1 (System I/O), 8 bits, offset 0, byte access, address.
        let gas = |off: usize, port: u16| {
            assert_eq!(fadt[off..off + 4], [1, 8, 0, 1]);
            assert_eq!(u64_at(&fadt, off + 4), u64::from(port));
        };
        gas(116, ports::ACPI_RESET);
        assert_eq!(fadt[128], ports::ACPI_RESET_VALUE);
        gas(244, ports::ACPI_SLEEP_CONTROL);
        gas(256, ports::ACPI_SLEEP_STATUS);
    }

    #[test]
    fn madt_lists_every_vcpu_and_the_ioapic() {
        for n in [1u8, 4, 255] {
            let (_, madt, _) = walk(&guest_mem(), &cfg(n, &[]));
            assert_eq!(u64::from(u32_at(&madt, 36)), layout::APIC_START);
            assert_eq!(u32_at(&madt, 40) & 1, 1, "PCAT_COMPAT");
            let (mut lapics, mut ioapics) = (vec![], vec![]);
            let mut off = 44;
            while off < madt.len() {
                let (kind, len) = (madt[off], madt[off + 1] as usize);
                match kind {
                    0 => lapics.push(madt[off..off + len].to_vec()),
                    1 => ioapics.push(madt[off..off + len].to_vec()),
                    _ => panic!("unexpected MADT entry type {kind}"),
                }
                off += len;
            }
            assert_eq!(off, madt.len());
            assert_eq!(lapics.len(), usize::from(n));
            for (i, e) in lapics.iter().enumerate() {
                assert_eq!(e.len(), 8);
                assert_eq!((e[2], e[3]), (i as u8, i as u8), "uid, APIC id");
                assert_eq!(u32_at(e, 4), 1, "enabled");
            }
            assert_eq!(ioapics.len(), 1);
            let io = &ioapics[0];
            assert_eq!(io.len(), 12);
            assert_eq!(io[2], 0, "IOAPIC id");
            assert_eq!(u64::from(u32_at(io, 4)), layout::IOAPIC_START);
            assert_eq!(u32_at(io, 8), 0, "GSI base");
        }
    }

    #[test]
    fn dsdt_has_s5_com1_and_mmio_devices() {
        let (_, _, dsdt) = walk(&guest_mem(), &cfg(2, &[virtio(0), virtio(1)]));
        let aml = &dsdt[36..];
        // Name (_S5_, Package (4) { 5, 5, 0, 0 })
        let s5 = find(aml, b"_S5_").expect("_S5_");
        let typ = ports::ACPI_S5_SLEEP_TYPE;
        assert_eq!(aml[s5 + 4], 0x12, "PackageOp");
        assert_eq!(aml[s5 + 6..s5 + 13], [4, 0x0a, typ, 0x0a, typ, 0, 0]);
        // _HID EISAID("PNP0501") is the DWORD 0x0105d041.
        assert!(
            find(aml, &[0x0c, 0x41, 0xd0, 0x05, 0x01]).is_some(),
            "PNP0501"
        );
        // IO (Decode16, 0x3f8, 0x3f8, 1, 8) and Interrupt (consumer, edge, high) { 4 }
        assert!(find(aml, &[0x47, 1, 0xf8, 3, 0xf8, 3, 1, 8]).is_some());
        assert!(find(aml, &[0x89, 6, 0, 0x03, 1, 4, 0, 0, 0]).is_some());
        // The keyboard controller: PNP0303 (0x0303d041), ports 0x60 and 0x64, IRQ 1.
        let kbd = find(aml, b"PS2K").expect("PS2K");
        let body = &aml[kbd..];
        assert!(
            find(body, &[0x0c, 0x41, 0xd0, 0x03, 0x03]).is_some(),
            "PNP0303"
        );
        assert!(find(body, &[0x47, 1, 0x60, 0, 0x60, 0, 1, 1]).is_some());
        assert!(find(body, &[0x47, 1, 0x64, 0, 0x64, 0, 1, 1]).is_some());
        assert!(find(body, &[0x89, 6, 0, 0x03, 1, 1, 0, 0, 0]).is_some());
        assert!(find(aml, b"\\_SB_").is_some());
        // Device V000 / V001: _HID "LNRO0005", Memory32Fixed (RW), Interrupt.
        for (name, dev) in [(b"V000", virtio(0)), (b"V001", virtio(1))] {
            let at = find(aml, name).expect("device name");
            let body = &aml[at..];
            assert!(find(body, b"_HID\x0dLNRO0005\0").is_some());
            let mut mem32 = vec![0x86, 9, 0, 1];
            mem32.extend((dev.base as u32).to_le_bytes());
            mem32.extend(dev.len.to_le_bytes());
            assert!(find(body, &mem32).is_some(), "{name:?} Memory32Fixed");
            let mut irq = vec![0x89, 6, 0, 0x03, 1];
            irq.extend(dev.gsi.to_le_bytes());
            assert!(find(body, &irq).is_some(), "{name:?} Interrupt");
        }
        assert_eq!(find(aml, b"V002"), None);
    }

    #[test]
    fn invalid_configs_are_rejected() {
        let mem = guest_mem();
        let err = |n, devs: &[AcpiMmioDevice]| create_acpi_tables(&mem, &cfg(n, devs)).unwrap_err();
        assert!(matches!(err(0, &[]), AcpiError::NoVcpus));
        let bad = [
            ("LNRO0005", 0xffff_f800, 0x1000, 5), // crosses 4 GiB
            ("LNRO0005", u64::MAX, 0x1000, 5),    // base + len overflows
            ("LNRO0005", 0xd000_0000, 0, 5),      // empty window
            ("LNRO0005", 0xd000_0000, 0x1000, layout::IOAPIC_NUM_PINS),
            ("lnro\"0005", 0xd000_0000, 0x1000, 5),
            ("LNRO00005", 0xd000_0000, 0x1000, 5),
        ];
        for (hid, base, len, gsi) in bad {
            let dev = AcpiMmioDevice {
                hid,
                uid: 1,
                base,
                len,
                gsi,
            };
            let e = err(1, &[virtio(0), dev]);
            let ok =
                matches!(e, AcpiError::InvalidMmioDevice { index: 1, device, .. } if device == dev);
            assert!(ok, "{dev:?}: {e}");
        }
        let e = err(1, &(0..3000).map(virtio).collect::<Vec<_>>());
        assert!(matches!(e, AcpiError::TablesTooLarge { .. }));
        let e = err(1, &vec![virtio(0); MAX_MMIO_DEVICES + 1]);
        assert!(matches!(e, AcpiError::TooManyDevices { .. }));
        // Nothing was written by the failed calls.
        let mut rsdp = [0u8; 8];
        mem.read_slice(&mut rsdp, GuestAddress(layout::RSDP_START))
            .unwrap();
        assert_eq!(rsdp, [0; 8]);

        let small = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let res = create_acpi_tables(&small, &cfg(1, &[]));
        assert!(matches!(
            res,
            Err(AcpiError::GuestMemory { table: "RSDP", .. })
        ));
    }

    #[test]
    fn pci_host_bridge_and_mcfg_are_announced() {
        let mem = guest_mem();
        let mem64 = layout::pci_mem64_window(256 << 20);
        let devs = [virtio(0)];
        let with_pci = AcpiConfig {
            pci_mem64: Some(mem64.clone()),
            ..cfg(2, &devs)
        };
        let (_, _, dsdt) = walk(&mem, &with_pci);
        let mut rsdp = [0u8; 36];
        mem.read_slice(&mut rsdp, GuestAddress(layout::RSDP_START))
            .unwrap();
        let xsdt = read_table(&mem, u64_at(&rsdp, 24), b"XSDT");
        assert_eq!(xsdt.len(), 36 + 24, "FADT, MADT, MCFG");
        let mcfg = read_table(&mem, u64_at(&xsdt, 52), b"MCFG");
        assert_eq!(mcfg.len(), 60);
        assert_eq!(u64_at(&mcfg, 44), layout::PCI_ECAM_START);
        assert_eq!(&mcfg[52..56], [0, 0, 0, 0], "segment 0, buses 0 to 0");

        let aml = &dsdt[36..];
        let pci0 = &aml[find(aml, b"PCI0").expect("PCI0")..];
        // PNP0A08 is 0x080ad041, PNP0A03 0x030ad041.
        assert!(
            find(pci0, &[0x0c, 0x41, 0xd0, 0x0a, 0x08]).is_some(),
            "PNP0A08"
        );
        assert!(
            find(pci0, &[0x0c, 0x41, 0xd0, 0x0a, 0x03]).is_some(),
            "PNP0A03"
        );
        // WordBusNumber 0-0, length 1.
        assert!(find(
            pci0,
            &[0x88, 13, 0, 2, 0x0c, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]
        )
        .is_some());
        // IO(Decode16, 0xcf8, 0xcf8, 1, 8)
        assert!(find(pci0, &[0x47, 1, 0xf8, 0x0c, 0xf8, 0x0c, 1, 8]).is_some());
        // WordIO 0xc000-0xffff.
        assert!(find(
            pci0,
            &[0x88, 13, 0, 1, 0x0c, 3, 0, 0, 0x00, 0xc0, 0xff, 0xff]
        )
        .is_some());
        // DWordMemory 0xc0000000-0xcfffffff.
        let mut m32 = vec![0x87, 23, 0, 0, 0x0c, 1, 0, 0, 0, 0];
        m32.extend(0xc000_0000u32.to_le_bytes());
        m32.extend(0xcfff_ffffu32.to_le_bytes());
        assert!(find(pci0, &m32).is_some(), "32-bit window");
        let mut m64 = vec![0x8a, 43, 0, 0, 0x0c, 1];
        m64.extend(0u64.to_le_bytes());
        m64.extend(mem64.start.to_le_bytes());
        m64.extend((mem64.end - 1).to_le_bytes());
        assert!(find(pci0, &m64).is_some(), "64-bit window");
        // The ECAM window is a motherboard resource.
        let mres = &aml[find(aml, b"MRES").expect("MRES")..];
        assert!(
            find(mres, &[0x0c, 0x41, 0xd0, 0x0c, 0x02]).is_some(),
            "PNP0C02"
        );
        let mut ecam = vec![0x86, 9, 0, 0];
        ecam.extend((layout::PCI_ECAM_START as u32).to_le_bytes());
        ecam.extend((layout::PCI_ECAM_SIZE as u32).to_le_bytes());
        assert!(find(mres, &ecam).is_some());

        let bad = AcpiConfig {
            pci_mem64: Some(0x1000..0x2000),
            ..cfg(1, &[])
        };
        assert!(matches!(
            create_acpi_tables(&guest_mem(), &bad),
            Err(AcpiError::BadPciWindow(_))
        ));
    }

    #[test]
    fn most_devices_that_fit_are_accepted() {
        // Many devices still fit in the ACPI area; every table stays valid.
        let devs: Vec<_> = (0..1000).map(virtio).collect();
        let (_, _, dsdt) = walk(&guest_mem(), &cfg(8, &devs));
        assert!(find(&dsdt, b"V3E7").is_some(), "device 999");
    }
}
