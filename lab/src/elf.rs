//! Just enough ELF reading for the lab: is a binary statically linked (it
//! must run in an initramfs without libraries), and what does a kernel
//! module's `.modinfo` say (its `depends=` list decides the insmod order).

/// True when the 64-bit little-endian ELF file has no `PT_INTERP` program
/// header, i.e. it needs no dynamic loader (static or static-pie).
pub fn is_static(bytes: &[u8]) -> Result<bool, String> {
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        return Err("not an ELF file".into());
    }
    if bytes[4] != 2 || bytes[5] != 1 {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(bytes[0x20..0x28].try_into().unwrap()) as usize;
    let phentsize = u16_at(0x36);
    let phnum = u16_at(0x38);
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        let Some(p) = bytes.get(o..o + 4) else {
            return Err("truncated program header table".into());
        };
        const PT_INTERP: u32 = 3;
        if u32::from_le_bytes(p.try_into().unwrap()) == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The value of `key=` in a kernel module's `.modinfo` strings, found by
/// scanning for a NUL-delimited `key=value` string.
pub fn modinfo(module: &[u8], key: &str) -> Option<String> {
    let needle = format!("{key}=");
    let needle = needle.as_bytes();
    let mut start = 0;
    while let Some(pos) = find(&module[start..], needle) {
        let at = start + pos;
        if at == 0 || module[at - 1] == 0 {
            let value = &module[at + needle.len()..];
            let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
            return Some(String::from_utf8_lossy(&value[..end]).into_owned());
        }
        start = at + 1;
    }
    None
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// File offset of the type field of the PVH entry note
/// (`XEN_ELFNOTE_PHYS32_ENTRY`, name "Xen", type 18) in an ELF64 file's
/// PT_NOTE segments. Overwriting that type hides the PVH entry point.
pub fn pvh_note_type_offset(bytes: &[u8]) -> Option<usize> {
    const PT_NOTE: u32 = 4;
    const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 || bytes[5] != 1 {
        return None;
    }
    let u32_at = |o: usize| -> Option<u32> {
        Some(u32::from_le_bytes(bytes.get(o..o + 4)?.try_into().ok()?))
    };
    let u64_at = |o: usize| -> Option<u64> {
        Some(u64::from_le_bytes(bytes.get(o..o + 8)?.try_into().ok()?))
    };
    let phoff = u64_at(0x20)? as usize;
    let phentsize = u16::from_le_bytes([bytes[0x36], bytes[0x37]]) as usize;
    let phnum = u16::from_le_bytes([bytes[0x38], bytes[0x39]]) as usize;
    let align4 = |n: usize| n.div_ceil(4) * 4;
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32_at(ph)? != PT_NOTE {
            continue;
        }
        let (off, size) = (u64_at(ph + 8)? as usize, u64_at(ph + 32)? as usize);
        let mut o = off;
        while o + 12 <= off + size {
            let (namesz, descsz, ty) =
                (u32_at(o)? as usize, u32_at(o + 4)? as usize, u32_at(o + 8)?);
            let name = bytes.get(o + 12..o + 12 + namesz)?;
            if name == b"Xen\0" && ty == XEN_ELFNOTE_PHYS32_ENTRY {
                return Some(o + 8);
            }
            o += 12 + align4(namesz) + align4(descsz);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modinfo_finds_nul_delimited_fields() {
        let m = b"\x7fELFjunkdepends=no\0license=GPL\0depends=irqbypass,foo\0name=kvm\0";
        assert_eq!(modinfo(m, "depends").as_deref(), Some("irqbypass,foo"));
        assert_eq!(modinfo(m, "name").as_deref(), Some("kvm"));
        assert_eq!(modinfo(m, "vermagic"), None);
        assert_eq!(modinfo(b"depends=\0", "depends").as_deref(), Some(""));
    }

    #[test]
    fn static_check_reads_program_headers() {
        let mut elf = vec![0u8; 64 + 2 * 56];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes());
        elf[64..68].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        assert_eq!(is_static(&elf), Ok(true));
        elf[64 + 56..64 + 60].copy_from_slice(&3u32.to_le_bytes()); // PT_INTERP
        assert_eq!(is_static(&elf), Ok(false));
        assert!(is_static(b"#!/bin/sh\n").is_err());
    }

    /// An ELF64 header with one PT_NOTE segment holding `notes`.
    fn elf_with_notes(notes: &[(&[u8], &[u8], u32)]) -> Vec<u8> {
        let mut data = Vec::new();
        for (name, desc, ty) in notes {
            data.extend_from_slice(&(name.len() as u32).to_le_bytes());
            data.extend_from_slice(&(desc.len() as u32).to_le_bytes());
            data.extend_from_slice(&ty.to_le_bytes());
            for part in [name, desc] {
                data.extend_from_slice(part);
                while data.len() % 4 != 0 {
                    data.push(0);
                }
            }
        }
        let mut elf = vec![0u8; 64 + 56];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2;
        elf[5] = 1;
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        elf[64..68].copy_from_slice(&4u32.to_le_bytes()); // PT_NOTE
        elf[64 + 8..64 + 16].copy_from_slice(&120u64.to_le_bytes()); // p_offset
        elf[64 + 32..64 + 40].copy_from_slice(&(data.len() as u64).to_le_bytes()); // p_filesz
        elf.extend_from_slice(&data);
        elf
    }

    #[test]
    fn finds_the_pvh_note() {
        let elf = elf_with_notes(&[
            (b"GNU\0", &[1; 20], 3),
            (b"Xen\0", b"linux\0", 6),
            (b"Xen\0", &[0, 0, 0, 1], 18),
        ]);
        // 120 + (12 + 4 + 20) + (12 + 4 + 8) = 180, the third note; +8 = type.
        assert_eq!(pvh_note_type_offset(&elf), Some(188));
        assert_eq!(u32::from_le_bytes(elf[188..192].try_into().unwrap()), 18);
        let elf = elf_with_notes(&[(b"Xen\0", b"linux\0", 6)]);
        assert_eq!(pvh_note_type_offset(&elf), None);
    }

    #[test]
    fn this_test_binary_is_dynamic_unless_built_static() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(is_static(&exe).is_ok());
    }
}
