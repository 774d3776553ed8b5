//! KVM binary statistics (`KVM_GET_STATS_FD`, Linux 5.14+): the per-VM and
//! per-vCPU counters KVM keeps, such as `exits`, `io_exits` or `pages_4k`.
//!
//! A stats fd holds a header, an id string, one descriptor per statistic (each
//! followed by a `name_size`-byte name) and a data block of `u64`s. Header and
//! descriptors never change, so [`StatsFd`] parses them once; each
//! [`StatsFd::read`] is then a single `pread` of the data block.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::raw::c_ulong;
use std::os::unix::fs::FileExt;

use kvm_bindings as kb;
use kvm_ioctls::{VcpuFd, VmFd};
use vmm_sys_util::ioctl::{ioctl, ioctl_expr, _IOC_NONE};

/// `KVM_GET_STATS_FD` is `_IO(KVMIO, 0xce)` in `include/uapi/linux/kvm.h`.
const KVM_GET_STATS_FD: c_ulong = ioctl_expr(_IOC_NONE, kb::KVMIO, 0xce, 0);
const HEADER_SIZE: usize = std::mem::size_of::<kb::kvm_stats_header>();
const DESC_SIZE: usize = std::mem::size_of::<kb::kvm_stats_desc>();
/// Limits against corrupt input (KVM uses 48-byte names and well under 100 stats).
const MAX_NAME_SIZE: usize = 4096;
const MAX_BLOCK_BYTES: usize = 16 << 20;

/// How a statistic behaves (the type field of the descriptor flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatKind {
    /// A counter that only grows.
    Cumulative,
    /// A value that can go up and down.
    Instant,
    /// The highest value seen so far.
    Peak,
    /// A histogram whose buckets are `bucket_size` wide.
    LinearHistogram,
    /// A histogram whose bucket `i` counts values in `[2^(i-1), 2^i)`.
    LogHistogram,
    /// A type this code does not know (the raw type field).
    Other(u32),
}

/// The unit of a statistic (the unit field of the descriptor flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatUnit {
    /// A plain count.
    None,
    /// Bytes.
    Bytes,
    /// Seconds (usually with an exponent, e.g. -9 for nanoseconds).
    Seconds,
    /// CPU cycles.
    Cycles,
    /// 0 or 1.
    Boolean,
    /// A unit this code does not know (the raw unit field, shifted down).
    Other(u32),
}

/// One statistic as its descriptor describes it.
#[derive(Debug, Clone)]
pub struct StatDesc {
    /// The name KVM gives the statistic, e.g. `exits`.
    pub name: String,
    /// How the value behaves.
    pub kind: StatKind,
    /// What the value counts.
    pub unit: StatUnit,
    /// Base of the scale: 10 or 2, or 0 when the flags name an unknown base.
    pub base: u16,
    /// The value is in units of `base^exponent` (e.g. 10^-9 s for nanoseconds).
    pub exponent: i16,
    /// Number of `u64` values (1 for scalars, the bucket count for histograms).
    pub size: u16,
    /// Byte offset of the values from the start of the data block.
    pub offset: u32,
    /// Bucket width of a linear histogram (0 otherwise).
    pub bucket_size: u32,
}

/// Why the statistics could not be opened or read.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// The kernel has no binary stats interface.
    #[error("this kernel lacks KVM binary statistics (KVM_GET_STATS_FD needs Linux 5.14+)")]
    Unsupported,
    /// The `KVM_GET_STATS_FD` ioctl failed for another reason.
    #[error("KVM_GET_STATS_FD failed: {0}")]
    Open(#[source] io::Error),
    /// Reading the named part of the stats fd failed.
    #[error("cannot read the KVM stats {0}: {1}")]
    Read(&'static str, #[source] io::Error),
    /// The stats data does not have the documented layout.
    #[error("malformed KVM stats data: {0}")]
    Malformed(String),
}

/// The current value of one statistic.
#[derive(Debug, Clone, PartialEq)]
pub struct StatValue {
    /// The name KVM gives the statistic.
    pub name: String,
    /// How the value behaves.
    pub kind: StatKind,
    /// What the value counts.
    pub unit: StatUnit,
    /// Base of the scale (10, 2, or 0 when unknown); see [`StatDesc::base`].
    pub base: u16,
    /// Exponent of the scale; see [`StatDesc::exponent`].
    pub exponent: i16,
    /// The value; for histograms the sum of all buckets (saturating).
    pub value: u64,
    /// Histogram buckets (or all items of a multi-value stat); empty for scalars.
    pub buckets: Vec<u64>,
}

impl StatValue {
    /// `value` scaled by `base^exponent` into SI units (e.g. nanoseconds to
    /// seconds), for display. Unscaled when the base is unknown.
    pub fn scaled(&self) -> f64 {
        let v = self.value as f64;
        match self.base {
            0 => v,
            b => v * f64::from(b).powi(i32::from(self.exponent)),
        }
    }
}

/// An open binary stats fd with its descriptors parsed once.
#[derive(Debug)]
pub struct StatsFd {
    file: File,
    id: String,
    descs: Vec<StatDesc>,
    data_offset: u64,
    data_len: usize,
}

impl StatsFd {
    /// Opens the statistics of a whole VM.
    pub fn for_vm(vm: &VmFd) -> Result<StatsFd, StatsError> {
        if vm.check_extension_raw(c_ulong::from(kb::KVM_CAP_BINARY_STATS_FD)) <= 0 {
            return Err(StatsError::Unsupported);
        }
        Self::from_file(get_stats_fd(vm)?)
    }

    /// Opens the statistics of one vCPU.
    pub fn for_vcpu(vcpu: &VcpuFd) -> Result<StatsFd, StatsError> {
        Self::from_file(get_stats_fd(vcpu)?)
    }

    /// Parses header and descriptors from `file` with positioned reads (the
    /// file position does not matter) and checks the data block is readable.
    pub fn from_file(file: File) -> Result<StatsFd, StatsError> {
        let mut hdr = [0u8; HEADER_SIZE];
        pread(&file, &mut hdr, 0, "header")?;
        let field = |i: usize| u32_at(&hdr, 4 * i);
        let (name_size, num_desc) = (field(1)? as usize, field(2)? as usize);
        let (id_offset, desc_offset, data_offset) = (field(3)?, field(4)?, field(5)?);
        let name_ok = (1..=MAX_NAME_SIZE).contains(&name_size);
        ensure(name_ok, "bad name size", name_size)?;
        let desc_len = DESC_SIZE + name_size;
        let block = num_desc.saturating_mul(desc_len);
        ensure(block <= MAX_BLOCK_BYTES, "too many descriptors", num_desc)?;
        let mut id = vec![0; name_size];
        pread(&file, &mut id, id_offset.into(), "id string")?;
        let mut raw = vec![0; block];
        pread(&file, &mut raw, desc_offset.into(), "descriptors")?;
        let descs = raw
            .chunks_exact(desc_len)
            .map(parse_desc)
            .collect::<Result<Vec<_>, _>>()?;
        let data_len = descs
            .iter()
            .map(|d| (d.offset as usize).saturating_add(8 * usize::from(d.size)))
            .max()
            .unwrap_or(0);
        ensure(data_len <= MAX_BLOCK_BYTES, "data too large", data_len)?;
        let stats = StatsFd {
            file,
            id: c_string(&id),
            descs,
            data_offset: data_offset.into(),
            data_len,
        };
        stats.read_data()?;
        Ok(stats)
    }

    /// The id KVM gives this fd, e.g. `kvm-1234` or `kvm-1234/vcpu-0`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The descriptors, in the kernel's order.
    pub fn descriptors(&self) -> &[StatDesc] {
        &self.descs
    }

    /// Reads the data block (one `pread`) and returns one value per descriptor,
    /// in descriptor order. Histograms carry their buckets and their sum.
    pub fn read(&self) -> Result<Vec<StatValue>, StatsError> {
        let data = self.read_data()?;
        self.descs.iter().map(|d| value_of(d, &data)).collect()
    }

    fn read_data(&self) -> Result<Vec<u8>, StatsError> {
        let mut data = vec![0; self.data_len];
        pread(&self.file, &mut data, self.data_offset, "data block")?;
        Ok(data)
    }
}

/// Reads `fd` once and maps each scalar statistic's name to its value
/// (histograms and multi-value stats are left out).
pub fn snapshot(fd: &StatsFd) -> Result<BTreeMap<String, u64>, StatsError> {
    Ok(fd
        .read()?
        .into_iter()
        .filter(|v| v.buckets.is_empty())
        .map(|v| (v.name, v.value))
        .collect())
}

/// Issues `KVM_GET_STATS_FD` on a VM or vCPU fd.
fn get_stats_fd<F: AsRawFd>(fd: &F) -> Result<File, StatsError> {
    // SAFETY: KVM_GET_STATS_FD takes no argument and touches no user memory; `fd`
    // is a borrowed, open descriptor, and the return value is checked below.
    let ret = unsafe { ioctl(fd, KVM_GET_STATS_FD) };
    if ret < 0 {
        let err = io::Error::last_os_error();
        return Err(match err.raw_os_error() {
            // Unknown ioctls fail with ENOTTY on VM fds and EINVAL on x86 vCPU fds.
            Some(libc::ENOTTY | libc::EINVAL) => StatsError::Unsupported,
            _ => StatsError::Open(err),
        });
    }
    // SAFETY: on success the ioctl returned a new descriptor that nothing else owns.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(ret) }))
}

/// Decodes one statistic from the data block.
fn value_of(d: &StatDesc, data: &[u8]) -> Result<StatValue, StatsError> {
    let start = d.offset as usize;
    let mut buckets = (0..usize::from(d.size))
        .map(|i| u64_at(data, start + 8 * i))
        .collect::<Result<Vec<_>, _>>()?;
    let histogram = matches!(d.kind, StatKind::LinearHistogram | StatKind::LogHistogram);
    let value = match histogram {
        true => buckets.iter().fold(0u64, |sum, &v| sum.saturating_add(v)),
        false => buckets.first().copied().unwrap_or(0),
    };
    if !histogram && buckets.len() == 1 {
        buckets.clear();
    }
    Ok(StatValue {
        name: d.name.clone(),
        kind: d.kind,
        unit: d.unit,
        base: d.base,
        exponent: d.exponent,
        value,
        buckets,
    })
}

fn parse_desc(d: &[u8]) -> Result<StatDesc, StatsError> {
    let flags = u32_at(d, 0)?;
    let name = c_string(d.get(DESC_SIZE..).unwrap_or_default());
    let size = u16::from_ne_bytes(bytes_at(d, 6)?);
    ensure(
        !name.is_empty() && size > 0,
        "empty name or size 0 for stat",
        &name,
    )?;
    let kind = match flags & kb::KVM_STATS_TYPE_MASK {
        kb::KVM_STATS_TYPE_CUMULATIVE => StatKind::Cumulative,
        kb::KVM_STATS_TYPE_INSTANT => StatKind::Instant,
        kb::KVM_STATS_TYPE_PEAK => StatKind::Peak,
        kb::KVM_STATS_TYPE_LINEAR_HIST => StatKind::LinearHistogram,
        kb::KVM_STATS_TYPE_LOG_HIST => StatKind::LogHistogram,
        other => StatKind::Other(other),
    };
    let unit = match flags & kb::KVM_STATS_UNIT_MASK {
        kb::KVM_STATS_UNIT_NONE => StatUnit::None,
        kb::KVM_STATS_UNIT_BYTES => StatUnit::Bytes,
        kb::KVM_STATS_UNIT_SECONDS => StatUnit::Seconds,
        kb::KVM_STATS_UNIT_CYCLES => StatUnit::Cycles,
        kb::KVM_STATS_UNIT_BOOLEAN => StatUnit::Boolean,
        other => StatUnit::Other(other >> kb::KVM_STATS_UNIT_SHIFT),
    };
    let base = match flags & kb::KVM_STATS_BASE_MASK {
        kb::KVM_STATS_BASE_POW10 => 10,
        kb::KVM_STATS_BASE_POW2 => 2,
        _ => 0,
    };
    Ok(StatDesc {
        name,
        kind,
        unit,
        base,
        exponent: i16::from_ne_bytes(bytes_at(d, 4)?),
        size,
        offset: u32_at(d, 8)?,
        bucket_size: u32_at(d, 12)?,
    })
}

fn pread(file: &File, buf: &mut [u8], at: u64, what: &'static str) -> Result<(), StatsError> {
    file.read_exact_at(buf, at)
        .map_err(|source| match source.kind() {
            io::ErrorKind::UnexpectedEof => StatsError::Malformed(format!(
                "the {what} ({} bytes at offset {at}) runs past the end",
                buf.len()
            )),
            _ => StatsError::Read(what, source),
        })
}

/// `Err(Malformed("{what}: {value}"))` unless `ok`.
fn ensure(ok: bool, what: &str, value: impl std::fmt::Display) -> Result<(), StatsError> {
    ok.then_some(())
        .ok_or_else(|| StatsError::Malformed(format!("{what}: {value}")))
}

/// The bytes up to the first NUL (or all of them), as lossy UTF-8.
fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn bytes_at<const N: usize>(b: &[u8], at: usize) -> Result<[u8; N], StatsError> {
    at.checked_add(N)
        .and_then(|end| b.get(at..end))
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| StatsError::Malformed(format!("{N}-byte field at {at} is out of bounds")))
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, StatsError> {
    bytes_at(b, at).map(u32::from_ne_bytes)
}

fn u64_at(b: &[u8], at: usize) -> Result<u64, StatsError> {
    bytes_at(b, at).map(u64::from_ne_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kvm::kvm_or_skip;
    use vmm_sys_util::tempfile::TempFile;

    type Desc<'a> = (u32, i16, u16, u32, u32, &'a str);

    /// Builds a stats file image laid out like KVM's.
    fn image(name_size: u32, descs: &[Desc], data: &[u64]) -> Vec<u8> {
        let n = descs.len() as u32;
        let desc_offset = 24 + name_size;
        let data_offset = desc_offset + n * (16 + name_size);
        let mut b = Vec::new();
        for v in [0, name_size, n, 24, desc_offset, data_offset] {
            b.extend(v.to_ne_bytes());
        }
        let name = |b: &mut Vec<u8>, s: &str| {
            let mut bytes = s.as_bytes().to_vec();
            bytes.resize(name_size as usize, 0);
            b.extend(bytes);
        };
        name(&mut b, "kvm-42/vcpu-0");
        for &(flags, exp, size, offset, bucket, n) in descs {
            b.extend(flags.to_ne_bytes().into_iter().chain(exp.to_ne_bytes()));
            b.extend(size.to_ne_bytes().into_iter().chain(offset.to_ne_bytes()));
            b.extend(bucket.to_ne_bytes());
            name(&mut b, n);
        }
        data.iter().for_each(|v| b.extend(v.to_ne_bytes()));
        b
    }

    fn file(bytes: &[u8]) -> File {
        let f = TempFile::new().unwrap().into_file();
        f.write_all_at(bytes, 0).unwrap();
        f
    }

    // Flags: type in bits 0-3, unit in bits 4-7, base (0 = pow10, 1 = pow2) in bits 8-11.
    const DESCS: &[Desc] = &[
        (0x000, 0, 1, 0, 0, "exits"),     // cumulative, no unit
        (0x111, 10, 1, 8, 0, "mem"),      // instant, bytes, 2^10
        (0x042, 0, 1, 16, 0, "flag"),     // peak, boolean
        (0x020, -9, 1, 24, 0, "halt_ns"), // cumulative, 10^-9 seconds
        (0x033, 0, 3, 32, 10, "lin"),     // linear histogram of cycles
        (0xe74, 0, 2, 56, 0, "log"),      // log histogram, unknown unit and base
    ];
    const DATA: &[u64] = &[7, 3, 1, 2_500_000_000, 1, 2, 3, 4, 5];

    #[test]
    fn parses_synthetic_stats() {
        let f = file(&image(48, DESCS, DATA));
        let stats = StatsFd::from_file(f.try_clone().unwrap()).unwrap();
        assert_eq!(stats.id(), "kvm-42/vcpu-0");
        let d = stats.descriptors();
        let names: Vec<_> = d.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["exits", "mem", "flag", "halt_ns", "lin", "log"]);
        use {StatKind as K, StatUnit as U};
        let expected = [
            (K::Cumulative, U::None, 10),
            (K::Instant, U::Bytes, 2),
            (K::Peak, U::Boolean, 10),
            (K::Cumulative, U::Seconds, 10),
            (K::LinearHistogram, U::Cycles, 10),
            (K::LogHistogram, U::Other(7), 0),
        ];
        assert_eq!(
            d.iter()
                .map(|d| (d.kind, d.unit, d.base))
                .collect::<Vec<_>>(),
            expected
        );
        assert_eq!(
            (d[3].exponent, d[4].size, d[4].bucket_size, d[5].offset),
            (-9, 3, 10, 56)
        );

        let v = stats.read().unwrap();
        assert_eq!(v[0].value, 7);
        assert!(v[0].buckets.is_empty());
        assert_eq!(v[1].scaled(), 3072.0);
        assert!((v[3].scaled() - 2.5).abs() < 1e-12);
        assert_eq!((v[4].value, v[4].buckets.clone()), (6, vec![1, 2, 3]));
        assert_eq!(
            (v[5].value, v[5].buckets.clone(), v[5].scaled()),
            (9, vec![4, 5], 9.0)
        );
        let snap = snapshot(&stats).unwrap();
        assert_eq!(
            snap.keys().collect::<Vec<_>>(),
            ["exits", "flag", "halt_ns", "mem"]
        );

        // Re-reading the same fd sees new data.
        let data_offset = (24 + 48 + 6 * (16 + 48)) as u64;
        f.write_all_at(&99u64.to_ne_bytes(), data_offset).unwrap();
        assert_eq!(snapshot(&stats).unwrap()["exits"], 99);
    }

    fn expect_malformed(bytes: &[u8]) {
        match StatsFd::from_file(file(bytes)) {
            Err(StatsError::Malformed(_)) => {}
            other => panic!("expected Malformed, got {other:?}"),
        }
    }

    #[test]
    fn rejects_corrupt_input() {
        let good = image(48, DESCS, DATA);
        let set = |at: usize, v: u32| {
            let mut b = good.clone();
            b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
            b
        };
        expect_malformed(&set(4, 0)); // name_size 0
        expect_malformed(&set(4, u32::MAX)); // huge name_size
        expect_malformed(&set(8, u32::MAX)); // huge num_desc
        expect_malformed(&set(8, 1000)); // descriptors past the end
        expect_malformed(&set(12, u32::MAX - 8)); // id past the end
        expect_malformed(&set(16, good.len() as u32)); // descriptors past the end
        expect_malformed(&set(20, good.len() as u32 - 8)); // data block truncated
        expect_malformed(&set(72 + 8, u32::MAX)); // stat offset far past the end
        expect_malformed(&set(72 + 4, 0)); // size 0 (exponent 0, size 0)
        expect_malformed(&image(48, &[(0, 0, 1, 0, 0, "")], &[1]));
        // Every truncation errors instead of panicking.
        for len in 0..good.len() {
            expect_malformed(&good[..len]);
        }
    }

    #[test]
    fn non_kvm_fd_is_unsupported() {
        let f = file(&[]);
        assert!(matches!(get_stats_fd(&f), Err(StatsError::Unsupported)));
    }

    #[test]
    fn reads_host_kvm_stats() {
        let Some(kvm) = kvm_or_skip() else { return };
        let vm = kvm.create_vm().unwrap();
        let vcpu = vm.create_vcpu(0).unwrap();
        let vm_stats = StatsFd::for_vm(&vm).unwrap();
        let vcpu_stats = StatsFd::for_vcpu(&vcpu).unwrap();
        assert!(vm_stats.id().starts_with("kvm-"), "{}", vm_stats.id());
        assert!(vcpu_stats.id().ends_with("/vcpu-0"), "{}", vcpu_stats.id());
        assert!(!vm_stats.descriptors().is_empty());
        for stats in [&vm_stats, &vcpu_stats] {
            let first = stats.read().unwrap();
            let second = stats.read().unwrap();
            assert_eq!(first.len(), stats.descriptors().len());
            assert_eq!(second.len(), first.len());
            let names: Vec<_> = first.iter().map(|v| v.name.as_str()).collect();
            eprintln!("{}: {}", stats.id(), names.join(" "));
        }
        let snap = snapshot(&vcpu_stats).unwrap();
        for name in ["exits", "io_exits", "mmio_exits", "halt_exits"] {
            assert!(snap.contains_key(name), "vCPU stats lack {name}: {snap:?}");
        }
    }
}
