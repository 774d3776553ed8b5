//! Kernel symbols from a System.map (or /proc/kallsyms), to name sampled
//! guest RIPs. With KASLR the running kernel is shifted; the shift is found
//! from the guest's MSR_LSTAR, which holds the relocated address of
//! `entry_SYSCALL_64`.

use std::path::{Path, PathBuf};

/// The symbol MSR_LSTAR points at in a running x86_64 Linux.
pub const SYSCALL_ENTRY_SYMBOL: &str = "entry_SYSCALL_64";
/// A RIP further than this past the nearest symbol is left unnamed.
const MAX_OFFSET: u64 = 1 << 20;

/// Why a symbol file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SymbolsError {
    /// The file could not be read.
    #[error("cannot read symbol file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Debian's kernel packages ship a placeholder System.map.
    #[error(
        "{} is a placeholder System.map: the real one is in the kernel's -dbg package \
         (e.g. linux-image-$(uname -r)-dbg), or use the guest's /proc/kallsyms", path.display()
    )]
    Placeholder {
        /// The file.
        path: PathBuf,
    },
    /// No line looked like "ADDRESS TYPE NAME".
    #[error(
        "{} has no text symbols: expected System.map lines like \
         \"ffffffff81000000 T _stext\"", path.display()
    )]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// Text symbols sorted by address.
#[derive(Debug, Clone, Default)]
pub struct Symbols {
    entries: Vec<(u64, String)>,
}

impl Symbols {
    /// Parses System.map text; keeps text (T/t/W/w) symbols.
    pub fn parse(text: &str) -> Symbols {
        let entries: Vec<(u64, String)> = text
            .lines()
            .filter_map(|line| {
                let mut parts = line.split_whitespace();
                let addr = u64::from_str_radix(parts.next()?, 16).ok()?;
                let kind = parts.next()?;
                let name = parts.next()?;
                matches!(kind, "T" | "t" | "W" | "w").then(|| (addr, name.to_string()))
            })
            .collect();
        Symbols::from_entries(entries)
    }

    /// Reads symbols from an ELF file (a vmlinux with its symbol table) or
    /// a System.map / kallsyms text file.
    pub fn load(path: &Path) -> Result<Symbols, SymbolsError> {
        // An unstripped vmlinux with DWARF is some hundreds of MiB.
        const MAX: u64 = 2 << 30;
        let bytes = crate::files::read_regular(path, MAX).map_err(|source| SymbolsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        if bytes.starts_with(b"\x7fELF") {
            let entries = elf_functions(&bytes).unwrap_or_default();
            if entries.is_empty() {
                return Err(SymbolsError::Empty {
                    path: path.to_path_buf(),
                });
            }
            return Ok(Symbols::from_entries(entries));
        }
        let text = String::from_utf8_lossy(&bytes);
        let symbols = Symbols::parse(&text);
        if symbols.entries.is_empty() && text.contains("The real System.map is in") {
            return Err(SymbolsError::Placeholder {
                path: path.to_path_buf(),
            });
        }
        if symbols.entries.is_empty() {
            return Err(SymbolsError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(symbols)
    }

    fn from_entries(mut entries: Vec<(u64, String)>) -> Symbols {
        entries.sort();
        Symbols { entries }
    }

    /// Number of symbols.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The KASLR shift of a running kernel whose MSR_LSTAR is `lstar`, or
    /// `None` when the map lacks the syscall entry or LSTAR is below it.
    pub fn slide_for_lstar(&self, lstar: u64) -> Option<u64> {
        let base = self
            .entries
            .iter()
            .find(|(_, n)| n == SYSCALL_ENTRY_SYMBOL)?
            .0;
        lstar.checked_sub(base)
    }

    /// "function+0xoffset" for a guest RIP in a kernel shifted by `slide`,
    /// if a symbol covers it.
    pub fn name(&self, rip: u64, slide: u64) -> Option<String> {
        let addr = rip.checked_sub(slide)?;
        let i = self.entries.partition_point(|(a, _)| *a <= addr);
        let (start, name) = self.entries.get(i.checked_sub(1)?)?;
        let offset = addr - start;
        (offset < MAX_OFFSET).then(|| format!("{name}+{offset:#x}"))
    }
}

/// Function symbols (STT_FUNC, defined, non-zero address) from the
/// `.symtab` of a 64-bit little-endian ELF file. `None` when the file is
/// malformed; empty when it has no symbol table (a stripped file).
fn elf_functions(b: &[u8]) -> Option<Vec<(u64, String)>> {
    const SHT_SYMTAB: u32 = 2;
    const STT_FUNC: u8 = 2;
    let u16_at = |o: usize| Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?));
    if b.get(4..6)? != [2, 1] {
        return None; // not ELFCLASS64 little-endian
    }
    let shoff = usize::try_from(u64_at(0x28)?).ok()?;
    let shentsize = usize::from(u16_at(0x3a)?);
    let shnum = usize::from(u16_at(0x3c)?);
    let section = |i: usize| shoff.checked_add(i.checked_mul(shentsize)?);
    let mut out = Vec::new();
    for i in 0..shnum {
        let sh = section(i)?;
        if u32_at(sh + 4)? != SHT_SYMTAB {
            continue;
        }
        let (off, size) = (u64_at(sh + 0x18)? as usize, u64_at(sh + 0x20)? as usize);
        let entsize = (u64_at(sh + 0x38)? as usize).max(24);
        let strtab = section(u32_at(sh + 0x28)? as usize)?;
        let (str_off, str_size) = (
            u64_at(strtab + 0x18)? as usize,
            u64_at(strtab + 0x20)? as usize,
        );
        let strings = b.get(str_off..str_off.checked_add(str_size)?)?;
        for sym in (off..off.checked_add(size)?).step_by(entsize) {
            let info = *b.get(sym + 4)?;
            let value = u64_at(sym + 8)?;
            let shndx = u16_at(sym + 6)?;
            if info & 0xf != STT_FUNC || shndx == 0 || value == 0 {
                continue;
            }
            let name_off = u32_at(sym)? as usize;
            let name = strings.get(name_off..)?.split(|&c| c == 0).next()?;
            out.push((value, String::from_utf8_lossy(name).into_owned()));
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAP: &str = "\
ffffffff81000000 T _stext
ffffffff81000100 t early_helper
ffffffff81200000 T entry_SYSCALL_64
ffffffff81300000 D some_data
ffffffff81400000 T serial8250_tx_chars
garbage line
";

    #[test]
    fn names_rips_with_offsets() {
        let s = Symbols::parse(MAP);
        assert_eq!(s.len(), 4, "data symbols and junk are skipped");
        assert_eq!(
            s.name(0xffff_ffff_8100_0104, 0).as_deref(),
            Some("early_helper+0x4")
        );
        assert_eq!(
            s.name(0xffff_ffff_8140_0010, 0).as_deref(),
            Some("serial8250_tx_chars+0x10")
        );
        assert_eq!(
            s.name(0xffff_ffff_8000_0000, 0),
            None,
            "below the first symbol"
        );
        assert_eq!(
            s.name(0xffff_ffff_9000_0000, 0),
            None,
            "too far past the last"
        );
    }

    #[test]
    fn kaslr_shift_comes_from_lstar() {
        let s = Symbols::parse(MAP);
        let slide = 0x0fc0_0000;
        assert_eq!(
            s.slide_for_lstar(0xffff_ffff_8120_0000 + slide),
            Some(slide)
        );
        assert_eq!(
            s.name(0xffff_ffff_8140_0010 + slide, slide).as_deref(),
            Some("serial8250_tx_chars+0x10")
        );
        let no_entry = Symbols::parse("ffffffff81000000 T _stext\n");
        assert_eq!(no_entry.slide_for_lstar(0xffff_ffff_9000_0000), None);
    }

    #[test]
    fn elf_symbol_tables_are_read() {
        // This test binary is an ELF file with a symbol table.
        let exe = std::env::current_exe().unwrap();
        let s = Symbols::load(&exe).expect("the test binary has symbols");
        assert!(s.len() > 100, "{} symbols", s.len());
        let (addr, name) = s
            .entries
            .iter()
            .find(|(_, n)| n.contains("elf_functions"))
            .expect("our own function is listed")
            .clone();
        assert_eq!(s.name(addr + 1, 0), Some(format!("{name}+0x1")));
        // Garbage after the ELF magic is an error, not a panic.
        let path = std::env::temp_dir().join(format!("subzero-bad-elf-{}", std::process::id()));
        std::fs::write(&path, b"\x7fELF\x02\x01garbage").unwrap();
        assert!(Symbols::load(&path).is_err());
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_file_without_symbols_is_an_error() {
        let path = std::env::temp_dir().join(format!("subzero-empty-map-{}", std::process::id()));
        std::fs::write(&path, "not a map\n").unwrap();
        let err = Symbols::load(&path).unwrap_err().to_string();
        assert!(err.contains("has no text symbols"), "{err}");
        let debian =
            "ffffffffffffffff B The real System.map is in the linux-image-6.1-dbg package\n";
        std::fs::write(&path, debian).unwrap();
        let err = Symbols::load(&path).unwrap_err().to_string();
        assert!(err.contains("placeholder") && err.contains("-dbg"), "{err}");
        let _ = std::fs::remove_file(&path);
    }
}
