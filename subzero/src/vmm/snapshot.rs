//! Snapshots: the VM state file (versioned, checksummed) and the guest
//! memory file, and how a paused [`RunningVm`] is written to them.
//!
//! State file layout, all integers little-endian:
//!
//! | bytes | what |
//! |---|---|
//! | 8 | magic `SUBZSNAP` |
//! | 4 | format version ([`FORMAT_VERSION`]) |
//! | 4 | CRC-32 of the payload |
//! | 8 | payload length |
//! | n | payload: [`VmSnapshot`] as JSON |
//!
//! The memory file is guest RAM, region after region in guest-physical
//! order, as [`VmSnapshot::regions`] lists them.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

use super::machine::RunningVm;
use super::resources::VmResources;
use super::vcpu_handle::VcpuError;
use crate::arch::x86_64::vcpu_state::{StateError, VcpuState};
use crate::arch::x86_64::vm_state::VmState;
use crate::devices::i8042::I8042State;
use crate::devices::serial::UartState;
use crate::devices::virtio::mmio::TransportSnapshot;

/// The file's first bytes.
pub const MAGIC: &[u8; 8] = b"SUBZSNAP";
/// The one version this Subzero writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Header length.
pub const HEADER_LEN: usize = 24;
/// Largest payload read: a state file is some kilobytes per vCPU.
pub const MAX_PAYLOAD: u64 = 64 << 20;

/// Why a snapshot could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file could not be created, read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// The target exists and overwriting was not asked for.
    #[error("{0} already exists: remove it or choose another path")]
    Exists(PathBuf),
    /// Not a Subzero snapshot.
    #[error("{0} is not a Subzero snapshot state file (bad magic)")]
    BadMagic(PathBuf),
    /// Another format version.
    #[error(
        "{path} is snapshot format version {found}; this Subzero reads version {FORMAT_VERSION}"
    )]
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
    /// Shorter than its header says.
    #[error("{path} is truncated: {detail}")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// What is missing.
        detail: String,
    },
    /// The payload does not match its checksum.
    #[error("{0} is corrupt: its checksum does not match")]
    Checksum(PathBuf),
    /// The payload does not decode.
    #[error("{path} does not decode: {detail}")]
    Decode {
        /// The file.
        path: PathBuf,
        /// The decoder's message.
        detail: String,
    },
    /// The memory file does not fit the state file.
    #[error("memory file {path} is {found} bytes; the snapshot's guest RAM is {expected} bytes")]
    MemorySize {
        /// The memory file.
        path: PathBuf,
        /// Its size.
        found: u64,
        /// What the state file says.
        expected: u64,
    },
    /// A vCPU did not give its state.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// KVM did not give the VM state.
    #[error(transparent)]
    State(#[from] StateError),
}

/// One guest RAM region in the memory file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionInfo {
    /// Guest-physical start.
    pub gpa: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Everything the state file holds.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmSnapshot {
    /// The Subzero that wrote it.
    pub vmm_version: String,
    /// The configuration the VM was built from.
    pub config: VmResources,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// Guest RAM regions, in file order.
    pub regions: Vec<RegionInfo>,
    /// The in-kernel interrupt controllers, PIT and clock.
    pub vm: VmState,
    /// Every vCPU, BSP first.
    pub vcpus: Vec<VcpuState>,
    /// COM1.
    pub serial: UartState,
    /// The keyboard controller.
    pub i8042: I8042State,
    /// Every virtio device, in slot order.
    pub virtio: Vec<TransportSnapshot>,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Frames `payload` with the header.
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Checks the header of `data` (read from `path`) and returns the payload.
pub fn decode<'a>(data: &'a [u8], path: &Path) -> Result<&'a [u8], SnapshotError> {
    let truncated = |detail: String| SnapshotError::Truncated {
        path: path.to_path_buf(),
        detail,
    };
    if data.len() < HEADER_LEN {
        if !data.starts_with(&MAGIC[..data.len().min(8)]) {
            return Err(SnapshotError::BadMagic(path.to_path_buf()));
        }
        return Err(truncated(format!(
            "{} bytes, shorter than the {HEADER_LEN}-byte header",
            data.len()
        )));
    }
    if &data[..8] != MAGIC {
        return Err(SnapshotError::BadMagic(path.to_path_buf()));
    }
    let word = |at: usize| u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes"));
    let version = word(8);
    if version != FORMAT_VERSION {
        return Err(SnapshotError::Version {
            path: path.to_path_buf(),
            found: version,
        });
    }
    let crc = word(12);
    let len = u64::from_le_bytes(data[16..24].try_into().expect("8 bytes"));
    let body = &data[HEADER_LEN..];
    if len != body.len() as u64 {
        return Err(truncated(format!(
            "the header promises {len} bytes of state, the file has {}",
            body.len()
        )));
    }
    if crc32fast::hash(body) != crc {
        return Err(SnapshotError::Checksum(path.to_path_buf()));
    }
    Ok(body)
}

/// Creates `path` for writing; refuses an existing file unless `overwrite`.
fn create_file(path: &Path, overwrite: bool) -> Result<File, SnapshotError> {
    let mut opts = OpenOptions::new();
    opts.write(true).mode(0o600);
    if overwrite {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    opts.open(path).map_err(|e| match e.kind() {
        io::ErrorKind::AlreadyExists => SnapshotError::Exists(path.to_path_buf()),
        _ => SnapshotError::Io {
            path: path.to_path_buf(),
            source: e,
        },
    })
}

/// Writes a paused VM, built from `config`, to `state_path` and
/// `mem_path`. Files that exist are refused unless `overwrite`.
pub fn create(
    vm: &mut RunningVm,
    config: &VmResources,
    state_path: &Path,
    mem_path: &Path,
    overwrite: bool,
) -> Result<(), SnapshotError> {
    let vcpus = vm.save_vcpus()?;
    let snapshot = VmSnapshot {
        vmm_version: env!("CARGO_PKG_VERSION").into(),
        config: config.clone(),
        memory: vm.memory.iter().map(|r| r.len()).sum(),
        regions: vm
            .memory
            .iter()
            .map(|r| RegionInfo {
                gpa: r.start_addr().0,
                len: r.len(),
            })
            .collect(),
        vm: VmState::save(&vm.vm)?,
        vcpus,
        serial: vm.serial.lock().unwrap_or_else(|p| p.into_inner()).state(),
        i8042: vm.i8042.lock().unwrap_or_else(|p| p.into_inner()).state(),
        virtio: vm.virtio.save(),
    };
    let payload = serde_json::to_vec(&snapshot).map_err(|e| SnapshotError::Decode {
        path: state_path.to_path_buf(),
        detail: e.to_string(),
    })?;
    let mut state = create_file(state_path, overwrite)?;
    let mut mem = create_file(mem_path, overwrite)?;
    state
        .write_all(&encode(&payload))
        .and_then(|()| state.sync_all())
        .map_err(io_err(state_path))?;
    write_memory(&vm.memory, &mut mem).map_err(io_err(mem_path))?;
    mem.sync_all().map_err(io_err(mem_path))?;
    Ok(())
}

/// Pages compared at a time when looking for all-zero pages.
const PAGE: usize = 4096;
/// Bytes copied out of guest memory at a time.
const CHUNK: usize = 1 << 20;

/// Whether `bytes` are all zero, compared 16 at a time (a byte loop is
/// slow where the CPU is emulated, as in the lab's L1).
fn is_zero(bytes: &[u8]) -> bool {
    let mut words = bytes.chunks_exact(16);
    words.all(|w| u128::from_ne_bytes(w.try_into().expect("16 bytes")) == 0)
        && words.remainder().iter().all(|&b| b == 0)
}

/// Writes guest RAM, region after region, to `file` (new and empty),
/// leaving holes for pages that are all zero: a guest that has touched
/// little of its RAM gets a small, sparse memory file, and restoring reads
/// the holes back as zeros.
fn write_memory(memory: &vm_memory::GuestMemoryMmap, file: &mut File) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0u64;
    for region in memory.iter() {
        let len = region.len() as usize;
        let mut at = 0usize;
        while at < len {
            let n = CHUNK.min(len - at);
            region
                .read_slice(&mut buf[..n], vm_memory::MemoryRegionAddress(at as u64))
                .map_err(|e| io::Error::other(e.to_string()))?;
            let mut page = 0;
            while page < n {
                let end = (page + PAGE).min(n);
                // Extend over a run of pages that hold data.
                let mut run_end = page;
                while run_end < n && !is_zero(&buf[run_end..(run_end + PAGE).min(n)]) {
                    run_end = (run_end + PAGE).min(n);
                }
                if run_end > page {
                    file.write_all_at(&buf[page..run_end], offset + (at + page) as u64)?;
                    page = run_end;
                } else {
                    page = end;
                }
            }
            at += n;
        }
        offset += len as u64;
    }
    file.set_len(offset)
}

/// Reads and checks a state file, and checks that the memory file fits it.
pub fn read(state_path: &Path, mem_path: &Path) -> Result<(VmSnapshot, File), SnapshotError> {
    let data = crate::files::read_regular(state_path, MAX_PAYLOAD + HEADER_LEN as u64)
        .map_err(io_err(state_path))?;
    let snapshot = parse(&data, state_path)?;
    let expected: u64 = snapshot.regions.iter().map(|r| r.len).sum();
    let (mem, found) = crate::files::open_regular(mem_path, u64::MAX).map_err(io_err(mem_path))?;
    if found != expected {
        return Err(SnapshotError::MemorySize {
            path: mem_path.to_path_buf(),
            found,
            expected,
        });
    }
    Ok((snapshot, mem))
}

/// Decodes a whole state file's bytes.
pub fn parse(data: &[u8], path: &Path) -> Result<VmSnapshot, SnapshotError> {
    let payload = decode(data, path)?;
    let snapshot: VmSnapshot =
        serde_json::from_slice(payload).map_err(|e| SnapshotError::Decode {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    let decode_err = |detail: &str| SnapshotError::Decode {
        path: path.to_path_buf(),
        detail: detail.into(),
    };
    if snapshot.vcpus.is_empty() {
        return Err(decode_err("it has no vCPUs"));
    }
    if snapshot.regions.iter().map(|r| r.len).sum::<u64>() != snapshot.memory {
        return Err(decode_err(
            "its memory regions do not add up to its memory size",
        ));
    }
    Ok(snapshot)
}

#[cfg(test)]
mod tests;
