//! Tracefs event formats. Each tracepoint's `events/<system>/<event>/format`
//! file gives its id and the offset, size and sign of each field in its raw
//! record. Both change between kernels, so they are always read from the
//! running kernel, never assumed.

use std::path::{Path, PathBuf};

/// Where tracefs is usually mounted, in the order they are tried.
pub const TRACEFS_MOUNTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// One field of a raw record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// Its name, e.g. `exit_reason`.
    pub name: String,
    /// Byte offset in the raw record.
    pub offset: usize,
    /// Size in bytes.
    pub size: usize,
    /// Whether it is signed.
    pub signed: bool,
}

/// One event's format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventFormat {
    /// The event's name, e.g. `kvm_exit`.
    pub name: String,
    /// Its id: the perf tracepoint config, and the record's `common_type`.
    pub id: u64,
    /// Its fields, common ones first.
    pub fields: Vec<Field>,
}

/// A format file that does not say what it must.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    /// No `ID:` line.
    #[error("no ID line")]
    NoId,
    /// No `name:` line.
    #[error("no name line")]
    NoName,
    /// A field line that does not parse.
    #[error("bad field line {0:?}")]
    BadField(String),
}

impl EventFormat {
    /// Parses the text of a `format` file.
    pub fn parse(text: &str) -> Result<EventFormat, FormatError> {
        let mut name = None;
        let mut id = None;
        let mut fields = Vec::new();
        for line in text.lines().map(str::trim) {
            if let Some(v) = line.strip_prefix("name:") {
                name = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("ID:") {
                id = v.trim().parse().ok();
            } else if line.starts_with("field:") {
                fields.push(parse_field(line).ok_or_else(|| FormatError::BadField(line.into()))?);
            }
        }
        Ok(EventFormat {
            name: name.ok_or(FormatError::NoName)?,
            id: id.ok_or(FormatError::NoId)?,
            fields,
        })
    }

    /// The field called `name`.
    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.iter().find(|f| f.name == name)
    }
}

/// `field:unsigned int exit_reason;\toffset:8;\tsize:4;\tsigned:0;`
fn parse_field(line: &str) -> Option<Field> {
    let mut parts = line.split(';').map(str::trim);
    let decl = parts.next()?.strip_prefix("field:")?;
    // The name is the declaration's last word, less any array suffix.
    let name = decl.split_whitespace().last()?;
    let name = name.split('[').next()?.to_string();
    let mut offset = None;
    let mut size = None;
    let mut signed = false;
    for part in parts {
        if let Some(v) = part.strip_prefix("offset:") {
            offset = v.parse().ok();
        } else if let Some(v) = part.strip_prefix("size:") {
            size = v.parse().ok();
        } else if let Some(v) = part.strip_prefix("signed:") {
            signed = v == "1";
        }
    }
    Some(Field {
        name,
        offset: offset?,
        size: size?,
        signed,
    })
}

impl Field {
    /// The field's value in `raw`, widened to 64 bits (sign-extended when
    /// signed); `None` when the record is too short or the size is not 1,
    /// 2, 4 or 8.
    pub fn read(&self, raw: &[u8]) -> Option<u64> {
        let bytes = raw.get(self.offset..self.offset.checked_add(self.size)?)?;
        let v = match self.size {
            1 => bytes[0] as i8 as i64 as u64 & mask(self.signed, 8),
            2 => i16::from_ne_bytes(bytes.try_into().ok()?) as i64 as u64 & mask(self.signed, 16),
            4 => i32::from_ne_bytes(bytes.try_into().ok()?) as i64 as u64 & mask(self.signed, 32),
            8 => u64::from_ne_bytes(bytes.try_into().ok()?),
            _ => return None,
        };
        Some(v)
    }
}

fn mask(signed: bool, bits: u32) -> u64 {
    if signed {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

/// Why the kvm events cannot be read from tracefs.
#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    /// Not mounted (or not readable) at any usual place.
    #[error(
        "tracefs is not mounted (looked in {}): mount it with \
         `mount -t tracefs nodev /sys/kernel/tracing`",
        TRACEFS_MOUNTS.join(", ")
    )]
    NotMounted,
    /// Mounted, but without KVM's events (KVM not loaded, or built without
    /// tracepoints).
    #[error("{0} has no events/kvm: is the kvm module loaded?")]
    NoKvmEvents(PathBuf),
    /// A format file could not be read or parsed.
    #[error("{path}: {why}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
}

/// The directory holding KVM's events, under the first tracefs mount that
/// has them.
pub fn kvm_events_dir() -> Result<PathBuf, TracefsError> {
    let mut mounted = None;
    for root in TRACEFS_MOUNTS {
        let root = Path::new(root);
        if !root.join("events").is_dir() {
            continue;
        }
        let kvm = root.join("events/kvm");
        if kvm.is_dir() {
            return Ok(kvm);
        }
        mounted.get_or_insert(root.to_path_buf());
    }
    match mounted {
        Some(root) => Err(TracefsError::NoKvmEvents(root)),
        None => Err(TracefsError::NotMounted),
    }
}

/// Reads one event's format from `dir` (an `events/kvm` directory);
/// `Ok(None)` when this kernel has no such event.
pub fn read_event(dir: &Path, event: &str) -> Result<Option<EventFormat>, TracefsError> {
    let path = dir.join(event).join("format");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(TracefsError::Format {
                path,
                why: e.to_string(),
            })
        }
    };
    EventFormat::parse(&text)
        .map(Some)
        .map_err(|e| TracefsError::Format {
            path,
            why: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXIT_618: &str = include_str!("../../tests/data/tracefs/6.18/kvm_exit.format");
    const FAULT_618: &str = include_str!("../../tests/data/tracefs/6.18/kvm_page_fault.format");

    #[test]
    fn parses_a_real_kvm_exit_format() {
        let f = EventFormat::parse(EXIT_618).unwrap();
        assert_eq!(f.name, "kvm_exit");
        assert_eq!(f.id, 103);
        let reason = f.field("exit_reason").unwrap();
        assert_eq!((reason.offset, reason.size, reason.signed), (8, 4, false));
        let rip = f.field("guest_rip").unwrap();
        assert_eq!((rip.offset, rip.size), (16, 8));
        assert_eq!(f.field("isa").unwrap().offset, 24);
        assert!(f.field("common_pid").unwrap().signed);
        assert!(f.field("no_such_field").is_none());
    }

    #[test]
    fn parses_a_page_fault_format_with_u64_fields() {
        let f = EventFormat::parse(FAULT_618).unwrap();
        let gpa = f.field("fault_address").unwrap();
        assert_eq!((gpa.offset, gpa.size), (24, 8));
    }

    #[test]
    fn reads_fields_of_each_size_and_sign() {
        let mut raw = vec![0u8; 24];
        raw[0] = 0xff;
        raw[2..4].copy_from_slice(&(-2i16).to_ne_bytes());
        raw[4..8].copy_from_slice(&0x8000_0001u32.to_ne_bytes());
        raw[8..16].copy_from_slice(&0x1234_5678_9abc_def0u64.to_ne_bytes());
        let f = |offset, size, signed| Field {
            name: "x".into(),
            offset,
            size,
            signed,
        };
        assert_eq!(f(0, 1, false).read(&raw), Some(0xff));
        assert_eq!(f(0, 1, true).read(&raw), Some(u64::MAX));
        assert_eq!(f(2, 2, true).read(&raw), Some((-2i64) as u64));
        assert_eq!(f(4, 4, false).read(&raw), Some(0x8000_0001));
        assert_eq!(f(8, 8, false).read(&raw), Some(0x1234_5678_9abc_def0));
        // Past the end, or an odd size: nothing, never a panic.
        assert_eq!(f(20, 8, false).read(&raw), None);
        assert_eq!(f(usize::MAX, 8, false).read(&raw), None);
        assert_eq!(f(0, 3, false).read(&raw), None);
    }

    #[test]
    fn a_format_without_an_id_or_with_a_broken_field_is_refused() {
        assert_eq!(EventFormat::parse("name: x\n"), Err(FormatError::NoId));
        assert_eq!(EventFormat::parse("ID: 3\n"), Err(FormatError::NoName));
        assert!(matches!(
            EventFormat::parse("name: x\nID: 1\nformat:\n\tfield:int a;\toffset:x;\tsize:4;\n"),
            Err(FormatError::BadField(_))
        ));
    }

    #[test]
    fn array_fields_are_named_without_their_suffix() {
        let f = parse_field("field:char comm[16];\toffset:8;\tsize:16;\tsigned:0;").unwrap();
        assert_eq!((f.name.as_str(), f.offset, f.size), ("comm", 8, 16));
    }
}
