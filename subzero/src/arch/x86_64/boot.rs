//! Loading what the user gave into guest memory: the kernel (bzImage or ELF
//! vmlinux), the initrd and the command line. Every failure names the file
//! and says what to do.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START};

/// Offset of the setup header's "HdrS" magic in a bzImage.
const BZIMAGE_MAGIC_OFFSET: usize = 0x202;
/// The 64-bit entry is this far into the protected-mode kernel.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// xloadflags: the kernel has the 64-bit entry point.
const XLF_KERNEL_64: u16 = 1 << 0;
/// Oldest boot protocol with the fields we fill (cmdline_size, initrd_addr_max...).
const MIN_BOOT_PROTOCOL: u16 = 0x0206;
/// Highest initrd address for a kernel that has no setup header (ELF).
const ELF_INITRD_ADDR_MAX: u64 = 0x7fff_ffff;
const PAGE_SIZE: u64 = 4096;
const MIB: u64 = 1 << 20;

/// How the kernel is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelKind {
    /// bzImage, 64-bit boot protocol.
    BzImage,
    /// ELF vmlinux with a PVH note: 32-bit PVH entry.
    ElfPvh,
    /// ELF vmlinux without a PVH note: its 64-bit entry.
    Elf64,
}

/// A kernel in guest memory.
#[derive(Debug, Clone)]
pub struct LoadedKernel {
    /// The image format and entry protocol.
    pub kind: KernelKind,
    /// Guest address to start executing at.
    pub entry: u64,
    /// First byte after the kernel (including the room it unpacks into).
    pub end: u64,
    /// The bzImage setup header.
    pub header: Option<setup_header>,
    /// Longest command line the kernel accepts, without the NUL.
    pub cmdline_max: usize,
    /// Highest address the initrd may end at.
    pub initrd_addr_max: u64,
}

/// Why loading failed.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The file could not be opened or read.
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        /// "kernel" or "initrd".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The kernel file is not a kernel.
    #[error(
        "{} is not a Linux kernel: expected a bzImage (\"HdrS\" at offset 0x202) or an ELF \
         vmlinux. Pass the vmlinuz/bzImage from /boot or the build's vmlinux, not an initrd \
         or a compressed archive", path.display()
    )]
    NotAKernel {
        /// The file.
        path: PathBuf,
    },
    /// The bzImage's setup header promises more than the file holds.
    #[error(
        "kernel {} is corrupt or truncated: its setup header promises {promised} bytes, \
         the file has {len}; copy the kernel again",
        path.display()
    )]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What the header says the image is.
        promised: u64,
        /// What the file holds.
        len: u64,
    },
    /// The bzImage lacks what Subzero needs.
    #[error("kernel {}: {reason}", path.display())]
    Unsupported {
        /// The file.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// linux-loader rejected the image.
    #[error("kernel {} is corrupt or truncated: {source}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The loader's verdict.
        source: linux_loader::loader::Error,
    },
    /// The kernel does not fit in guest memory.
    #[error(
        "kernel {} needs {need_mib} MiB of guest memory to unpack, but the guest has \
         {have_mib} MiB: raise --memory", path.display()
    )]
    KernelTooBig {
        /// The file.
        path: PathBuf,
        /// MiB needed.
        need_mib: u64,
        /// MiB available.
        have_mib: u64,
    },
    /// The initrd does not fit between the kernel and the kernel's limit.
    #[error(
        "initrd {} is {size_mib} MiB but only {room_mib} MiB fit between the kernel and the \
         highest address this kernel accepts: raise --memory or use a smaller initrd",
        path.display()
    )]
    InitrdTooBig {
        /// The file.
        path: PathBuf,
        /// Its size in MiB (rounded up).
        size_mib: u64,
        /// Room in MiB.
        room_mib: u64,
    },
    /// The command line is too long for this kernel.
    #[error("the kernel command line is {len} bytes; this kernel accepts at most {max}")]
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// The kernel's limit.
        max: usize,
    },
    /// The command line has characters the kernel cannot take.
    #[error("invalid kernel command line: {0} (use printable ASCII, no NUL or newline)")]
    CmdlineInvalid(linux_loader::cmdline::Error),
    /// Writing guest memory failed.
    #[error("writing the {0} into guest memory failed: {1}")]
    GuestMemory(&'static str, #[source] vm_memory::GuestMemoryError),
}

/// Largest kernel or initrd read: more than any guest Subzero builds holds
/// below 4 GiB.
pub const MAX_IMAGE: u64 = 4 << 30;

fn open(what: &'static str, path: &Path) -> Result<(File, u64), BootError> {
    crate::files::open_regular(path, MAX_IMAGE).map_err(|source| BootError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Kernel image formats Subzero loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// A bzImage.
    BzImage,
    /// An ELF vmlinux.
    Elf,
}

/// Checks that `path` is a readable kernel image and says which format.
/// Cheap: reads only the header. Used before any KVM call.
pub fn probe_kernel(path: &Path) -> Result<KernelFormat, BootError> {
    let (mut file, len) = open("kernel", path)?;
    let format = detect(&mut file, path)?;
    if format == KernelFormat::BzImage {
        check_bzimage_length(&file, len, path)?;
    }
    Ok(format)
}

/// Checks that `path` is a readable regular file (the initrd).
pub fn probe_initrd(path: &Path) -> Result<(), BootError> {
    open("initrd", path).map(|_| ())
}

fn detect(file: &mut File, path: &Path) -> Result<KernelFormat, BootError> {
    let mut head = [0u8; BZIMAGE_MAGIC_OFFSET + 4];
    let got = read_up_to(file, &mut head).map_err(|source| BootError::Read {
        what: "kernel",
        path: path.to_path_buf(),
        source,
    })?;
    if got >= 4 && head[..4] == *b"\x7fELF" {
        Ok(KernelFormat::Elf)
    } else if got == head.len() && head[BZIMAGE_MAGIC_OFFSET..] == *b"HdrS" {
        Ok(KernelFormat::BzImage)
    } else {
        Err(BootError::NotAKernel {
            path: path.to_path_buf(),
        })
    }
}

/// Loads the kernel at `path` into `mem`, whose RAM below 4 GiB ends at
/// `low_ram_end`.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    path: &Path,
    low_ram_end: u64,
) -> Result<LoadedKernel, BootError> {
    let (mut file, len) = open("kernel", path)?;
    let format = detect(&mut file, path)?;
    let too_big = |need: u64| BootError::KernelTooBig {
        path: path.to_path_buf(),
        need_mib: need.div_ceil(MIB),
        have_mib: low_ram_end / MIB,
    };
    if len.saturating_add(HIMEM_START) > low_ram_end {
        return Err(too_big(len + HIMEM_START));
    }
    let corrupt = |source| BootError::Corrupt {
        path: path.to_path_buf(),
        source,
    };
    let himem = Some(GuestAddress(HIMEM_START));
    if format == KernelFormat::Elf {
        return load_elf(mem, &mut file, path, low_ram_end);
    }
    check_bzimage_length(&file, len, path)?;
    let loaded = BzImage::load(mem, himem, &mut file, himem).map_err(corrupt)?;
    let Some(hdr) = loaded.setup_header else {
        return Err(BootError::NotAKernel {
            path: path.to_path_buf(),
        });
    };
    let unsupported = |reason: String| BootError::Unsupported {
        path: path.to_path_buf(),
        reason,
    };
    let version = hdr.version;
    if version < MIN_BOOT_PROTOCOL {
        return Err(unsupported(format!(
            "boot protocol {}.{:02} is too old; Subzero needs 2.06 or newer",
            version >> 8,
            version & 0xff
        )));
    }
    if hdr.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(unsupported(
            "this bzImage has no 64-bit entry point (a 32-bit kernel?); use an x86_64 kernel"
                .into(),
        ));
    }
    // The kernel unpacks in place and needs init_size bytes from its load address.
    let end = HIMEM_START + u64::from(hdr.init_size).max(loaded.kernel_end - HIMEM_START);
    if end > low_ram_end {
        return Err(too_big(end));
    }
    Ok(LoadedKernel {
        kind: KernelKind::BzImage,
        entry: loaded.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
        end,
        header: Some(hdr),
        cmdline_max: (hdr.cmdline_size as usize).min(CMDLINE_MAX_SIZE - 1),
        initrd_addr_max: u64::from(hdr.initrd_addr_max),
    })
}

/// Loads the ELF vmlinux `image`, unpacked from the bzImage at `path`.
pub fn load_elf_image(
    mem: &GuestMemoryMmap,
    image: &[u8],
    path: &Path,
    low_ram_end: u64,
) -> Result<LoadedKernel, BootError> {
    if (image.len() as u64).saturating_add(HIMEM_START) > low_ram_end {
        return Err(BootError::KernelTooBig {
            path: path.to_path_buf(),
            need_mib: (image.len() as u64 + HIMEM_START).div_ceil(MIB),
            have_mib: low_ram_end / MIB,
        });
    }
    load_elf(mem, &mut std::io::Cursor::new(image), path, low_ram_end)
}

/// Loads the ELF vmlinux open as `file` (`len` bytes): the loader reads
/// its segments straight from the file into guest memory.
pub fn load_elf_file(
    mem: &GuestMemoryMmap,
    file: &mut std::fs::File,
    len: u64,
    path: &Path,
    low_ram_end: u64,
) -> Result<LoadedKernel, BootError> {
    if len.saturating_add(HIMEM_START) > low_ram_end {
        return Err(BootError::KernelTooBig {
            path: path.to_path_buf(),
            need_mib: (len + HIMEM_START).div_ceil(MIB),
            have_mib: low_ram_end / MIB,
        });
    }
    load_elf(mem, file, path, low_ram_end)
}

fn load_elf<F>(
    mem: &GuestMemoryMmap,
    image: &mut F,
    path: &Path,
    low_ram_end: u64,
) -> Result<LoadedKernel, BootError>
where
    F: Read + vm_memory::ReadVolatile + std::io::Seek,
{
    let himem = Some(GuestAddress(HIMEM_START));
    let loaded = Elf::load(mem, None, image, himem).map_err(|source| BootError::Corrupt {
        path: path.to_path_buf(),
        source,
    })?;
    // A segment's memory size may reach past its file size (the bss):
    // linux-loader writes only the file's part, so check the rest fits.
    if loaded.kernel_end > low_ram_end {
        return Err(BootError::KernelTooBig {
            path: path.to_path_buf(),
            need_mib: loaded.kernel_end.div_ceil(MIB),
            have_mib: low_ram_end / MIB,
        });
    }
    let (kind, entry) = match loaded.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => (KernelKind::ElfPvh, addr.0),
        _ => (KernelKind::Elf64, loaded.kernel_load.0),
    };
    Ok(LoadedKernel {
        kind,
        entry,
        end: loaded.kernel_end,
        header: None,
        cmdline_max: CMDLINE_MAX_SIZE - 1,
        initrd_addr_max: ELF_INITRD_ADDR_MAX,
    })
}

/// A bzImage is the boot sector, `setup_sects` sectors of setup code, and
/// `syssize` 16-byte paragraphs of protected-mode code: the file must hold
/// all of them.
fn check_bzimage_length(file: &File, len: u64, path: &Path) -> Result<(), BootError> {
    use std::os::unix::fs::FileExt;
    let mut hdr = [0u8; 7];
    file.read_exact_at(&mut hdr, 0x1f1)
        .map_err(|source| BootError::Read {
            what: "kernel",
            path: path.to_path_buf(),
            source,
        })?;
    // setup_sects 0 means 4 (boot protocol, "setup_sects").
    let setup_sects = match hdr[0] {
        0 => 4,
        n => u64::from(n),
    };
    let syssize = u64::from(u32::from_le_bytes([hdr[3], hdr[4], hdr[5], hdr[6]]));
    let promised = (setup_sects + 1) * 512 + syssize * 16;
    if promised > len {
        return Err(BootError::Truncated {
            path: path.to_path_buf(),
            promised,
            len,
        });
    }
    Ok(())
}

/// Opens the initrd at `path`: a regular file of at most [`MAX_IMAGE`]
/// bytes. Returns it and its size.
pub fn open_initrd(path: &Path) -> Result<(File, u64), BootError> {
    open("initrd", path)
}

/// The room for an initrd: from the page after the kernel to
/// `low_ram_end` or the kernel's `initrd_addr_max`, whichever is lower.
/// Returns (bottom, top).
fn initrd_room(kernel: &LoadedKernel, low_ram_end: u64) -> (u64, u64) {
    let top = low_ram_end.min(kernel.initrd_addr_max.saturating_add(1));
    // A kernel ending in the last page of the address space leaves no room.
    let bottom = kernel
        .end
        .checked_next_multiple_of(PAGE_SIZE)
        .unwrap_or(u64::MAX);
    (bottom, top)
}

/// The largest initrd that fits (see [`initrd_room`]).
pub fn initrd_max(kernel: &LoadedKernel, low_ram_end: u64) -> u64 {
    let (bottom, top) = initrd_room(kernel, low_ram_end);
    top.saturating_sub(bottom)
}

/// Loads the initrd at `path` as high as the kernel allows, below
/// `low_ram_end` and above the kernel. Returns its (address, size).
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel: &LoadedKernel,
    low_ram_end: u64,
) -> Result<(u64, u64), BootError> {
    let (file, size) = open_initrd(path)?;
    place_initrd(mem, file, size, path, kernel, low_ram_end)
}

/// Loads `size` bytes of `src` (the initrd at `path`, or what it unpacked
/// to) as [`load_initrd`] does. Returns its (address, size).
pub fn place_initrd(
    mem: &GuestMemoryMmap,
    mut src: impl vm_memory::ReadVolatile,
    size: u64,
    path: &Path,
    kernel: &LoadedKernel,
    low_ram_end: u64,
) -> Result<(u64, u64), BootError> {
    let (bottom, top) = initrd_room(kernel, low_ram_end);
    let room = top.saturating_sub(bottom);
    let too_big = || BootError::InitrdTooBig {
        path: path.to_path_buf(),
        size_mib: size.div_ceil(MIB),
        room_mib: room / MIB,
    };
    if size > room {
        return Err(too_big());
    }
    let addr = (top - size) & !(PAGE_SIZE - 1);
    let count = usize::try_from(size).map_err(|_| too_big())?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut src, count)
        .map_err(|e| match e {
            vm_memory::GuestMemoryError::IOError(source) => BootError::Read {
                what: "initrd",
                path: path.to_path_buf(),
                source,
            },
            other => BootError::GuestMemory("initrd", other),
        })?;
    Ok((addr, size))
}

/// Writes the command line at [`CMDLINE_START`]. Returns its length.
pub fn load_cmdline(
    mem: &GuestMemoryMmap,
    cmdline: &str,
    kernel: &LoadedKernel,
) -> Result<u32, BootError> {
    if cmdline.len() > kernel.cmdline_max {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max: kernel.cmdline_max,
        });
    }
    let mut line = Cmdline::new(kernel.cmdline_max + 1).map_err(BootError::CmdlineInvalid)?;
    if !cmdline.trim().is_empty() {
        line.insert_str(cmdline.trim())
            .map_err(BootError::CmdlineInvalid)?;
    }
    let text = line.as_cstring().map_err(BootError::CmdlineInvalid)?;
    mem.write_slice(text.as_bytes_with_nul(), GuestAddress(CMDLINE_START))
        .map_err(|e| BootError::GuestMemory("command line", e))?;
    Ok(text.as_bytes().len() as u32)
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAM: u64 = 32 << 20;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap()
    }

    /// An ELF64 vmlinux with one PT_LOAD of 16 bytes at 1 MiB whose memory
    /// size is `memsz`.
    fn elf(memsz: u64) -> Vec<u8> {
        let mut b = vec![0u8; 64 + 56 + 16];
        b[..7].copy_from_slice(b"\x7fELF\x02\x01\x01");
        b[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        b[18..20].copy_from_slice(&0x3eu16.to_le_bytes()); // EM_X86_64
        b[20..24].copy_from_slice(&1u32.to_le_bytes());
        b[24..32].copy_from_slice(&HIMEM_START.to_le_bytes()); // e_entry
        b[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
        b[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        b[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        b[56..58].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        let p = &mut b[64..120];
        p[0..4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        p[8..16].copy_from_slice(&120u64.to_le_bytes()); // p_offset
        p[16..24].copy_from_slice(&HIMEM_START.to_le_bytes()); // p_vaddr
        p[24..32].copy_from_slice(&HIMEM_START.to_le_bytes()); // p_paddr
        p[32..40].copy_from_slice(&16u64.to_le_bytes()); // p_filesz
        p[40..48].copy_from_slice(&memsz.to_le_bytes()); // p_memsz
        b
    }

    fn write(name: &str, data: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("subzero-boot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, data).unwrap();
        path
    }

    #[test]
    fn an_elf_kernel_that_fits_loads() {
        let path = write("fits", &elf(16));
        let k = load_kernel(&mem(), &path, RAM).unwrap();
        assert_eq!(
            (k.kind, k.entry, k.end),
            (KernelKind::Elf64, HIMEM_START, HIMEM_START + 16)
        );
    }

    /// Found by the `loader` fuzz target: the segment's memory size ran to
    /// the end of the address space, the kernel was accepted, and placing
    /// the initrd above it overflowed.
    #[test]
    fn an_elf_kernel_whose_memory_size_passes_ram_is_too_big() {
        for memsz in [RAM, u64::MAX - HIMEM_START] {
            let path = write("bss", &elf(memsz));
            match load_kernel(&mem(), &path, RAM) {
                Err(BootError::KernelTooBig { have_mib: 32, .. }) => {}
                other => panic!("memsz {memsz:#x}: {other:?}"),
            }
        }
    }

    #[test]
    fn an_initrd_above_a_kernel_at_the_top_of_the_address_space_does_not_fit() {
        let kernel = LoadedKernel {
            kind: KernelKind::Elf64,
            entry: HIMEM_START,
            end: u64::MAX - 10,
            header: None,
            cmdline_max: 255,
            initrd_addr_max: u64::MAX,
        };
        let path = write("initrd", &[0u8; 4096]);
        match load_initrd(&mem(), &path, &kernel, RAM) {
            Err(BootError::InitrdTooBig { room_mib: 0, .. }) => {}
            other => panic!("{other:?}"),
        }
    }
}
