//! The kernel loader: any file as the kernel (bzImage setup headers, ELF
//! headers and program headers, PVH notes), through the same calls
//! `build_linux` makes: probe, load, then the command line and an initrd
//! placed from what the kernel's header says. The input's first byte is the
//! command line's length, taken from the input's end; its second, the
//! initrd's size in KiB.
#![no_main]

use std::sync::OnceLock;

use subzero::arch::x86_64::boot::{load_cmdline, load_initrd, load_kernel, probe_kernel};
use subzero_fuzz::{scratch_dir, write_seeds};
use vm_memory::{GuestAddress, GuestMemoryMmap};

/// Guest RAM: 32 MiB (pages are only allocated where a kernel is written).
const RAM: usize = 32 << 20;

fn put(b: &mut Vec<u8>, at: usize, v: &[u8]) {
    if b.len() < at + v.len() {
        b.resize(at + v.len(), 0);
    }
    b[at..at + v.len()].copy_from_slice(v);
}

/// A bzImage header with one setup sector and 16 bytes of kernel.
fn bzimage() -> Vec<u8> {
    let mut b = vec![0u8; 1040];
    put(&mut b, 0x1f1, &[1]); // setup_sects
    put(&mut b, 0x1f4, &1u32.to_le_bytes()); // syssize (16-byte units)
    put(&mut b, 0x1fe, &0xaa55u16.to_le_bytes()); // boot_flag
    put(&mut b, 0x202, b"HdrS");
    put(&mut b, 0x206, &0x020fu16.to_le_bytes()); // version 2.15
    put(&mut b, 0x211, &[1]); // loadflags: LOADED_HIGH
    put(&mut b, 0x22c, &0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
    put(&mut b, 0x236, &1u16.to_le_bytes()); // xloadflags: XLF_KERNEL_64
    put(&mut b, 0x238, &255u32.to_le_bytes()); // cmdline_size
    put(&mut b, 0x260, &0x1_0000u32.to_le_bytes()); // init_size
    b
}

/// An ELF64 executable with one PT_LOAD at 1 MiB and, if `pvh`, a PT_NOTE
/// holding the Xen PVH entry note.
fn elf(pvh: bool) -> Vec<u8> {
    let phnum: u16 = if pvh { 2 } else { 1 };
    let data = 64 + 56 * usize::from(phnum);
    let mut b = Vec::new();
    put(&mut b, 0, b"\x7fELF\x02\x01\x01");
    put(&mut b, 16, &2u16.to_le_bytes()); // ET_EXEC
    put(&mut b, 18, &0x3eu16.to_le_bytes()); // EM_X86_64
    put(&mut b, 20, &1u32.to_le_bytes());
    put(&mut b, 24, &0x10_0000u64.to_le_bytes()); // e_entry
    put(&mut b, 32, &64u64.to_le_bytes()); // e_phoff
    put(&mut b, 52, &64u16.to_le_bytes()); // e_ehsize
    put(&mut b, 54, &56u16.to_le_bytes()); // e_phentsize
    put(&mut b, 56, &phnum.to_le_bytes());
    let phdr = |b: &mut Vec<u8>, at: usize, kind: u32, off: usize, addr: u64, size: u64| {
        put(b, at, &kind.to_le_bytes());
        put(b, at + 4, &5u32.to_le_bytes());
        put(b, at + 8, &(off as u64).to_le_bytes());
        put(b, at + 16, &addr.to_le_bytes());
        put(b, at + 24, &addr.to_le_bytes());
        put(b, at + 32, &size.to_le_bytes());
        put(b, at + 40, &size.to_le_bytes());
        put(b, at + 48, &0x1000u64.to_le_bytes());
    };
    phdr(&mut b, 64, 1, data, 0x10_0000, 16);
    put(&mut b, data, &[0x90; 16]);
    if pvh {
        let note = data + 16;
        phdr(&mut b, 120, 4, note, 0, 20);
        put(&mut b, note, &4u32.to_le_bytes()); // n_namesz
        put(&mut b, note + 4, &4u32.to_le_bytes()); // n_descsz
        put(&mut b, note + 8, &18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
        put(&mut b, note + 12, b"Xen\0");
        put(&mut b, note + 16, &0x10_0000u32.to_le_bytes());
    }
    b
}

fn seeds() -> Vec<Vec<u8>> {
    let with = |k: Vec<u8>| {
        let mut s = vec![12, 1];
        s.extend_from_slice(&k);
        s.extend_from_slice(b"console=ttyS");
        s
    };
    vec![with(bzimage()), with(elf(false)), with(elf(true))]
}

fn mem() -> &'static GuestMemoryMmap {
    static MEM: OnceLock<GuestMemoryMmap> = OnceLock::new();
    MEM.get_or_init(|| GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM)]).expect("memory"))
}

libfuzzer_sys::fuzz_target!(init: write_seeds(&seeds()), |data: &[u8]| {
    let [cmd_len, initrd_kib, rest @ ..] = data else {
        return;
    };
    let cut = rest.len().saturating_sub(usize::from(*cmd_len));
    let (kernel, cmdline) = rest.split_at(cut);
    let kpath = scratch_dir().join("kernel");
    let ipath = scratch_dir().join("initrd");
    std::fs::write(&kpath, kernel).expect("kernel file");
    let _ = probe_kernel(&kpath);
    let Ok(loaded) = load_kernel(mem(), &kpath, RAM as u64) else {
        return;
    };
    let _ = load_cmdline(mem(), &String::from_utf8_lossy(cmdline), &loaded);
    std::fs::write(&ipath, vec![0u8; usize::from(*initrd_kib) << 10]).expect("initrd file");
    let _ = load_initrd(mem(), &ipath, &loaded, RAM as u64);
});
