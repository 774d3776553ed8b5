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
    /// Added to every address (the KASLR shift), once known.
    slide: u64,
}

impl Symbols {
    /// Parses System.map text; keeps text (T/t/W/w) symbols.
    pub fn parse(text: &str) -> Symbols {
        let mut entries: Vec<(u64, String)> = text
            .lines()
            .filter_map(|line| {
                let mut parts = line.split_whitespace();
                let addr = u64::from_str_radix(parts.next()?, 16).ok()?;
                let kind = parts.next()?;
                let name = parts.next()?;
                matches!(kind, "T" | "t" | "W" | "w").then(|| (addr, name.to_string()))
            })
            .collect();
        entries.sort();
        Symbols { entries, slide: 0 }
    }

    /// Reads and parses a System.map file.
    pub fn load(path: &Path) -> Result<Symbols, SymbolsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SymbolsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
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

    /// Number of symbols.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sets the KASLR shift from the guest's MSR_LSTAR value. Returns the
    /// shift, or `None` (leaving addresses unshifted) when the map lacks
    /// the syscall entry or LSTAR is below it.
    pub fn relocate_with_lstar(&mut self, lstar: u64) -> Option<u64> {
        let base = self
            .entries
            .iter()
            .find(|(_, n)| n == SYSCALL_ENTRY_SYMBOL)?
            .0;
        let slide = lstar.checked_sub(base)?;
        self.slide = slide;
        Some(slide)
    }

    /// "function+0xoffset" for a guest RIP, if a symbol covers it.
    pub fn name(&self, rip: u64) -> Option<String> {
        let addr = rip.checked_sub(self.slide)?;
        let i = self.entries.partition_point(|(a, _)| *a <= addr);
        let (start, name) = self.entries.get(i.checked_sub(1)?)?;
        let offset = addr - start;
        (offset < MAX_OFFSET).then(|| format!("{name}+{offset:#x}"))
    }
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
            s.name(0xffff_ffff_8100_0104).as_deref(),
            Some("early_helper+0x4")
        );
        assert_eq!(
            s.name(0xffff_ffff_8140_0010).as_deref(),
            Some("serial8250_tx_chars+0x10")
        );
        assert_eq!(
            s.name(0xffff_ffff_8000_0000),
            None,
            "below the first symbol"
        );
        assert_eq!(s.name(0xffff_ffff_9000_0000), None, "too far past the last");
    }

    #[test]
    fn kaslr_shift_comes_from_lstar() {
        let mut s = Symbols::parse(MAP);
        let slide = 0x0fc0_0000;
        assert_eq!(
            s.relocate_with_lstar(0xffff_ffff_8120_0000 + slide),
            Some(slide)
        );
        assert_eq!(
            s.name(0xffff_ffff_8140_0010 + slide).as_deref(),
            Some("serial8250_tx_chars+0x10")
        );
        let mut no_entry = Symbols::parse("ffffffff81000000 T _stext\n");
        assert_eq!(no_entry.relocate_with_lstar(0xffff_ffff_9000_0000), None);
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
