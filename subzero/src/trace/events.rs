//! KVM's tracepoints that Subzero reads, and their raw records decoded with
//! the offsets the running kernel's format files give.

use std::collections::HashMap;
use std::path::Path;

use super::format::{read_event, EventFormat, Field, TracefsError};

/// One decoded record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// `kvm_exit`: the guest left hardware virtualization.
    Exit {
        /// The ISA's exit code (VMX basic reason with flags, or SVM exit code).
        reason: u64,
        /// The tracepoint's `isa`: 1 VMX, 2 SVM.
        isa: u64,
        /// Guest RIP at the exit.
        rip: u64,
    },
    /// `kvm_entry`: KVM entered the guest again.
    Entry,
    /// `kvm_userspace_exit`: KVM_RUN returned to Subzero.
    UserspaceExit {
        /// The `kvm_run.exit_reason` (KVM_EXIT_*).
        reason: u64,
    },
    /// `kvm_msr`: an MSR access KVM handled.
    Msr {
        /// The MSR index (ECX).
        index: u32,
        /// A WRMSR (else RDMSR).
        write: bool,
    },
    /// `kvm_cpuid`: a CPUID KVM answered.
    Cpuid {
        /// EAX on entry.
        leaf: u32,
    },
    /// `kvm_pio`: a port access.
    Pio {
        /// The port.
        port: u16,
        /// An OUT (else IN).
        write: bool,
    },
    /// `kvm_page_fault`: a nested page fault / EPT violation.
    PageFault {
        /// The guest-physical address.
        gpa: u64,
    },
}

/// The events read, by tracefs name. `kvm_exit` and `kvm_entry` are the
/// pair every hardware exit has; the rest add details when present.
pub const EVENTS: [&str; 7] = [
    "kvm_exit",
    "kvm_entry",
    "kvm_userspace_exit",
    "kvm_msr",
    "kvm_cpuid",
    "kvm_pio",
    "kvm_page_fault",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Exit,
    Entry,
    UserspaceExit,
    Msr,
    Cpuid,
    Pio,
    PageFault,
}

/// How to decode each event this kernel has.
#[derive(Clone, Debug)]
struct Decoder {
    kind: Kind,
    /// The fields used, in the order `decode` takes them.
    fields: Vec<Field>,
}

/// The formats of the events found, keyed by id.
#[derive(Clone, Debug, Default)]
pub struct Schema {
    by_id: HashMap<u64, Decoder>,
    /// (name, id) of each event found, in [`EVENTS`] order.
    pub found: Vec<(String, u64)>,
}

/// A format that lacks a field Subzero needs.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the {event} tracepoint has no {field} field")]
pub struct MissingField {
    event: String,
    field: &'static str,
}

fn fields_of(name: &str) -> Option<(Kind, &'static [&'static str])> {
    Some(match name {
        "kvm_exit" => (Kind::Exit, &["exit_reason", "isa", "guest_rip"]),
        "kvm_entry" => (Kind::Entry, &[]),
        "kvm_userspace_exit" => (Kind::UserspaceExit, &["reason"]),
        "kvm_msr" => (Kind::Msr, &["ecx", "write"]),
        "kvm_cpuid" => (Kind::Cpuid, &["function"]),
        "kvm_pio" => (Kind::Pio, &["port", "rw"]),
        "kvm_page_fault" => (Kind::PageFault, &["fault_address"]),
        _ => return None,
    })
}

impl Schema {
    /// Builds the schema from parsed formats (events Subzero does not use
    /// are ignored).
    pub fn from_formats(formats: &[EventFormat]) -> Result<Schema, MissingField> {
        let mut schema = Schema::default();
        for f in formats {
            let Some((kind, names)) = fields_of(&f.name) else {
                continue;
            };
            let fields = names
                .iter()
                .map(|n| {
                    f.field(n).cloned().ok_or_else(|| MissingField {
                        event: f.name.clone(),
                        field: n,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            schema.by_id.insert(f.id, Decoder { kind, fields });
            schema.found.push((f.name.clone(), f.id));
        }
        Ok(schema)
    }

    /// Reads the formats of [`EVENTS`] from an `events/kvm` directory.
    pub fn load(dir: &Path) -> Result<Schema, TracefsError> {
        let mut formats = Vec::new();
        for name in EVENTS {
            if let Some(f) = read_event(dir, name)? {
                formats.push(f);
            }
        }
        Schema::from_formats(&formats).map_err(|e| TracefsError::Format {
            path: dir.to_path_buf(),
            why: e.to_string(),
        })
    }

    /// Whether the event called `name` was found.
    pub fn has(&self, name: &str) -> bool {
        self.found.iter().any(|(n, _)| n == name)
    }

    /// Decodes one raw record; `None` for an event not in the schema or a
    /// record too short for its fields.
    pub fn decode(&self, raw: &[u8]) -> Option<Event> {
        let id = u16::from_ne_bytes(raw.get(..2)?.try_into().ok()?) as u64;
        let d = self.by_id.get(&id)?;
        let mut v = [0u64; 3];
        for (slot, f) in v.iter_mut().zip(&d.fields) {
            *slot = f.read(raw)?;
        }
        Some(match d.kind {
            Kind::Exit => Event::Exit {
                reason: v[0],
                isa: v[1],
                rip: v[2],
            },
            Kind::Entry => Event::Entry,
            Kind::UserspaceExit => Event::UserspaceExit { reason: v[0] },
            Kind::Msr => Event::Msr {
                index: v[0] as u32,
                write: v[1] != 0,
            },
            Kind::Cpuid => Event::Cpuid { leaf: v[0] as u32 },
            // kvm_pio's rw is KVM_PIO_IN (0) or KVM_PIO_OUT (1).
            Kind::Pio => Event::Pio {
                port: v[0] as u16,
                write: v[1] != 0,
            },
            Kind::PageFault => Event::PageFault { gpa: v[0] },
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    macro_rules! formats {
        ($dir:literal) => {
            [
                include_str!(concat!(
                    "../../tests/data/tracefs/",
                    $dir,
                    "/kvm_exit.format"
                )),
                include_str!(concat!(
                    "../../tests/data/tracefs/",
                    $dir,
                    "/kvm_entry.format"
                )),
                include_str!(concat!(
                    "../../tests/data/tracefs/",
                    $dir,
                    "/kvm_userspace_exit.format"
                )),
                include_str!(concat!(
                    "../../tests/data/tracefs/",
                    $dir,
                    "/kvm_msr.format"
                )),
                include_str!(concat!(
                    "../../tests/data/tracefs/",
                    $dir,
                    "/kvm_cpuid.format"
                )),
                include_str!(concat!(
                    "../../tests/data/tracefs/",
                    $dir,
                    "/kvm_pio.format"
                )),
                include_str!(concat!(
                    "../../tests/data/tracefs/",
                    $dir,
                    "/kvm_page_fault.format"
                )),
            ]
        };
    }

    /// The schema of a kernel whose format files are in tests/data.
    pub(crate) fn schema_618() -> (Schema, Vec<EventFormat>) {
        let formats: Vec<EventFormat> = formats!("6.18")
            .iter()
            .map(|t| EventFormat::parse(t).unwrap())
            .collect();
        (Schema::from_formats(&formats).unwrap(), formats)
    }

    /// A raw record of `format` with the named fields set.
    pub(crate) fn record(format: &EventFormat, values: &[(&str, u64)]) -> Vec<u8> {
        let len = format
            .fields
            .iter()
            .map(|f| f.offset + f.size)
            .max()
            .unwrap_or(8);
        let mut raw = vec![0u8; len];
        raw[..2].copy_from_slice(&(format.id as u16).to_ne_bytes());
        for (name, v) in values {
            let f = format.field(name).unwrap();
            raw[f.offset..f.offset + f.size].copy_from_slice(&v.to_ne_bytes()[..f.size]);
        }
        raw
    }

    fn find<'a>(formats: &'a [EventFormat], name: &str) -> &'a EventFormat {
        formats.iter().find(|f| f.name == name).unwrap()
    }

    fn check_kernel(formats: &[EventFormat]) {
        let schema = Schema::from_formats(formats).unwrap();
        assert_eq!(schema.found.len(), EVENTS.len());
        let exit = record(
            find(formats, "kvm_exit"),
            &[
                ("exit_reason", 0x7c),
                ("isa", 2),
                ("guest_rip", 0xffff_ffff_8100_1234),
            ],
        );
        assert_eq!(
            schema.decode(&exit),
            Some(Event::Exit {
                reason: 0x7c,
                isa: 2,
                rip: 0xffff_ffff_8100_1234
            })
        );
        let msr = record(find(formats, "kvm_msr"), &[("ecx", 0x6e0), ("write", 1)]);
        assert_eq!(
            schema.decode(&msr),
            Some(Event::Msr {
                index: 0x6e0,
                write: true
            })
        );
        let pio = record(find(formats, "kvm_pio"), &[("port", 0x3f8), ("rw", 1)]);
        assert_eq!(
            schema.decode(&pio),
            Some(Event::Pio {
                port: 0x3f8,
                write: true
            })
        );
        let pf = record(
            find(formats, "kvm_page_fault"),
            &[("fault_address", 0xd000_0000)],
        );
        assert_eq!(
            schema.decode(&pf),
            Some(Event::PageFault { gpa: 0xd000_0000 })
        );
        let cpuid = record(find(formats, "kvm_cpuid"), &[("function", 0x4000_0001)]);
        assert_eq!(
            schema.decode(&cpuid),
            Some(Event::Cpuid { leaf: 0x4000_0001 })
        );
        let entry = record(find(formats, "kvm_entry"), &[]);
        assert_eq!(schema.decode(&entry), Some(Event::Entry));
        // Truncated, or of an unknown id: nothing.
        assert_eq!(schema.decode(&exit[..12]), None);
        assert_eq!(schema.decode(&[0xff, 0xff, 0, 0]), None);
        assert_eq!(schema.decode(&[]), None);
    }

    #[test]
    fn decodes_records_of_linux_6_18() {
        check_kernel(&schema_618().1);
    }

    #[test]
    fn decodes_records_of_linux_6_1_whose_ids_differ() {
        let formats: Vec<EventFormat> = formats!("6.1")
            .iter()
            .map(|t| EventFormat::parse(t).unwrap())
            .collect();
        check_kernel(&formats);
        // The same event has another id on another kernel: never assume one.
        let id = |fs: &[EventFormat]| fs.iter().find(|f| f.name == "kvm_exit").unwrap().id;
        assert_ne!(id(&formats), id(&schema_618().1));
    }

    #[test]
    fn a_format_without_a_needed_field_is_refused() {
        let text = "name: kvm_msr\nID: 9\nformat:\n\tfield:unsigned int ecx;\toffset:8;\tsize:4;\tsigned:0;\n";
        let f = EventFormat::parse(text).unwrap();
        let e = Schema::from_formats(&[f]).unwrap_err();
        assert_eq!(e.to_string(), "the kvm_msr tracepoint has no write field");
    }
}
