//! The `--disk`, `--net` and `--vsock` option values: `key=value` lists,
//! checked before any device is opened.

use std::path::PathBuf;

use super::config::parse_bytes;
use crate::devices::rate_limiter::{RateLimiterConfig, TokenBucketConfig};
pub use crate::devices::virtio::block::EngineChoice;
use crate::devices::virtio::block::MAX_QUEUES;
use crate::devices::virtio::net::MAX_PAIRS;

/// A problem with a device option.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeviceConfigError {
    /// An item is not `key=value`.
    #[error("--{flag} {spec:?}: {item:?} is not key=value; example: --{flag} {example}")]
    NotKeyValue {
        /// Option name.
        flag: &'static str,
        /// Whole value.
        spec: String,
        /// Offending item.
        item: String,
        /// A correct value.
        example: &'static str,
    },
    /// An unknown key.
    #[error("--{flag} {spec:?}: unknown key {key:?}; known keys: {known}")]
    UnknownKey {
        /// Option name.
        flag: &'static str,
        /// Whole value.
        spec: String,
        /// Offending key.
        key: String,
        /// Valid keys.
        known: &'static str,
    },
    /// A required key is missing.
    #[error("--{flag} {spec:?}: missing {key}=...; example: --{flag} {example}")]
    Missing {
        /// Option name.
        flag: &'static str,
        /// Whole value.
        spec: String,
        /// Missing key.
        key: &'static str,
        /// A correct value.
        example: &'static str,
    },
    /// A value is malformed.
    #[error("--{flag} {spec:?}: {key}={value:?} {problem}")]
    BadValue {
        /// Option name.
        flag: &'static str,
        /// Whole value.
        spec: String,
        /// Key.
        key: &'static str,
        /// Value given.
        value: String,
        /// What is wrong.
        problem: &'static str,
    },
}

/// `--disk path=FILE[,readonly=on][,id=NAME][,bw=BYTES/s][,iops=N][,engine=auto|sync|uring][,queues=N]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskConfig {
    /// Raw image file.
    pub path: PathBuf,
    /// Refuse guest writes.
    pub readonly: bool,
    /// Serial the guest sees (VIRTIO_BLK_T_GET_ID).
    pub id: Option<String>,
    /// Bytes and requests per second (unlimited by default).
    pub rate_limiter: RateLimiterConfig,
    /// The I/O engine (io_uring where the host allows it, by default).
    pub engine: EngineChoice,
    /// Request queues (one per vCPU by default; see [`DiskConfig::queues_for`]).
    pub queues: Option<u16>,
}

/// `--net tap=NAME[,mac=XX:XX:XX:XX:XX:XX][,bw=BYTES/s][,pps=N][,queues=N]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetConfig {
    /// Host TAP device name.
    pub tap: String,
    /// Guest MAC address, as written (checked when the device is created).
    pub mac: Option<String>,
    /// Bytes and frames per second to the guest.
    pub rx_rate_limiter: RateLimiterConfig,
    /// Bytes and frames per second from the guest.
    pub tx_rate_limiter: RateLimiterConfig,
    /// Queue pairs (one by default; more need a TAP that can be opened
    /// multi-queue).
    pub queues: Option<u16>,
}

/// `--vsock cid=N,uds=PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context id (3 or more).
    pub cid: u64,
    /// Host Unix socket.
    pub uds: PathBuf,
}

const DISK_EXAMPLE: &str = "path=rootfs.ext4,readonly=on";
const NET_EXAMPLE: &str = "tap=tap0,mac=52:54:00:12:34:56";
const VSOCK_EXAMPLE: &str = "cid=3,uds=/tmp/vsock.sock";

fn pairs(
    flag: &'static str,
    spec: &str,
    example: &'static str,
    known: &'static str,
) -> Result<Vec<(String, String)>, DeviceConfigError> {
    let mut out = Vec::new();
    for item in spec.split(',').filter(|s| !s.is_empty()) {
        let Some((k, v)) = item.split_once('=') else {
            return Err(DeviceConfigError::NotKeyValue {
                flag,
                spec: spec.into(),
                item: item.into(),
                example,
            });
        };
        if !known.split(", ").any(|x| x == k) {
            return Err(DeviceConfigError::UnknownKey {
                flag,
                spec: spec.into(),
                key: k.into(),
                known,
            });
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

fn on_off(
    flag: &'static str,
    spec: &str,
    key: &'static str,
    v: &str,
) -> Result<bool, DeviceConfigError> {
    match v {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(DeviceConfigError::BadValue {
            flag,
            spec: spec.into(),
            key,
            value: v.into(),
            problem: "is not on or off",
        }),
    }
}

/// `bw=` (bytes per second: 4M, 512K, 1048576; 0 is unlimited) as a
/// bucket of one second's worth.
fn bandwidth(
    flag: &'static str,
    spec: &str,
    v: &str,
) -> Result<Option<TokenBucketConfig>, DeviceConfigError> {
    let rate = parse_bytes(v).map_err(|_| DeviceConfigError::BadValue {
        flag,
        spec: spec.into(),
        key: "bw",
        value: v.into(),
        problem: "is not a rate in bytes per second: e.g. 4M (MiB/s), 512K, 1048576",
    })?;
    Ok((rate > 0).then(|| TokenBucketConfig::per_second(rate)))
}

/// `iops=` or `pps=` (a count per second; 0 is unlimited).
fn per_second(
    flag: &'static str,
    spec: &str,
    key: &'static str,
    v: &str,
) -> Result<Option<TokenBucketConfig>, DeviceConfigError> {
    let rate: u64 = v.parse().map_err(|_| DeviceConfigError::BadValue {
        flag,
        spec: spec.into(),
        key,
        value: v.into(),
        problem: "is not a whole number per second",
    })?;
    Ok((rate > 0).then(|| TokenBucketConfig::per_second(rate)))
}

impl DiskConfig {
    /// Parses a `--disk` value.
    pub fn parse(spec: &str) -> Result<Self, DeviceConfigError> {
        let mut path = None;
        let mut readonly = false;
        let mut id = None;
        let mut rate_limiter = RateLimiterConfig::default();
        let mut engine = EngineChoice::default();
        let mut queues = None;
        let known = "path, readonly, id, bw, iops, engine, queues";
        for (k, v) in pairs("disk", spec, DISK_EXAMPLE, known)? {
            match k.as_str() {
                "bw" => rate_limiter.bandwidth = bandwidth("disk", spec, &v)?,
                "iops" => rate_limiter.ops = per_second("disk", spec, "iops", &v)?,
                "path" if !v.is_empty() => path = Some(PathBuf::from(v)),
                "readonly" => readonly = on_off("disk", spec, "readonly", &v)?,
                "engine" => {
                    engine = match v.as_str() {
                        "auto" => EngineChoice::Auto,
                        "sync" => EngineChoice::Sync,
                        "uring" | "io_uring" => EngineChoice::Uring,
                        _ => {
                            return Err(DeviceConfigError::BadValue {
                                flag: "disk",
                                spec: spec.into(),
                                key: "engine",
                                value: v,
                                problem: "is not an engine: use auto (io_uring where the host allows it), sync or uring",
                            })
                        }
                    }
                }
                "queues" => match v.parse::<u16>() {
                    Ok(n) if (1..=MAX_QUEUES).contains(&n) => queues = Some(n),
                    _ => {
                        return Err(DeviceConfigError::BadValue {
                            flag: "disk",
                            spec: spec.into(),
                            key: "queues",
                            value: v,
                            problem: "must be a number of request queues from 1 to 16",
                        })
                    }
                },
                "id" if v.len() <= 20 && v.is_ascii() => id = Some(v),
                "id" => {
                    return Err(DeviceConfigError::BadValue {
                        flag: "disk",
                        spec: spec.into(),
                        key: "id",
                        value: v,
                        problem: "must be at most 20 ASCII characters",
                    })
                }
                _ => {}
            }
        }
        let path = path.ok_or(DeviceConfigError::Missing {
            flag: "disk",
            spec: spec.into(),
            key: "path",
            example: DISK_EXAMPLE,
        })?;
        Ok(DiskConfig {
            path,
            readonly,
            id,
            rate_limiter,
            engine,
            queues,
        })
    }

    /// The queue count for a VM of `vcpus` vCPUs: as given, or one per
    /// vCPU up to the most a disk serves. In the lab this was faster at
    /// queue depth 1 and slower at depth 16 than one queue (README, Disks).
    pub fn queues_for(&self, vcpus: u64) -> u16 {
        self.queues.unwrap_or_else(|| {
            u16::try_from(vcpus)
                .unwrap_or(MAX_QUEUES)
                .clamp(1, MAX_QUEUES)
        })
    }
}

impl NetConfig {
    /// Parses a `--net` value.
    pub fn parse(spec: &str) -> Result<Self, DeviceConfigError> {
        let mut tap = None;
        let mut mac = None;
        let mut limit = RateLimiterConfig::default();
        let mut queues = None;
        for (k, v) in pairs("net", spec, NET_EXAMPLE, "tap, mac, bw, pps, queues")? {
            match k.as_str() {
                "queues" => match v.parse::<u16>() {
                    Ok(n) if (1..=MAX_PAIRS as u16).contains(&n) => queues = Some(n),
                    _ => {
                        return Err(DeviceConfigError::BadValue {
                            flag: "net",
                            spec: spec.into(),
                            key: "queues",
                            value: v,
                            problem: "must be a number of queue pairs from 1 to 8",
                        })
                    }
                },
                "bw" => limit.bandwidth = bandwidth("net", spec, &v)?,
                "pps" => limit.ops = per_second("net", spec, "pps", &v)?,
                "tap" if !v.is_empty() && v.len() < 16 => tap = Some(v),
                "tap" => {
                    return Err(DeviceConfigError::BadValue {
                        flag: "net",
                        spec: spec.into(),
                        key: "tap",
                        value: v,
                        problem: "must be 1 to 15 characters (a Linux interface name)",
                    })
                }
                "mac" => mac = Some(v),
                _ => {}
            }
        }
        let tap = tap.ok_or(DeviceConfigError::Missing {
            flag: "net",
            spec: spec.into(),
            key: "tap",
            example: NET_EXAMPLE,
        })?;
        // Each direction gets the limits.
        Ok(NetConfig {
            tap,
            mac,
            rx_rate_limiter: limit,
            tx_rate_limiter: limit,
            queues,
        })
    }

    /// The queue pairs: as given, or one. In the lab two pairs moved TCP
    /// several times slower than one (README, Network), so more are only
    /// used when asked for.
    pub fn pairs_for(&self) -> usize {
        self.queues.map_or(1, usize::from)
    }
}

impl VsockConfig {
    /// Parses a `--vsock` value.
    pub fn parse(spec: &str) -> Result<Self, DeviceConfigError> {
        let mut cid = None;
        let mut uds = None;
        for (k, v) in pairs("vsock", spec, VSOCK_EXAMPLE, "cid, uds")? {
            match k.as_str() {
                "cid" => match v.parse::<u32>() {
                    Ok(n) if n >= 3 && n != u32::MAX => cid = Some(u64::from(n)),
                    _ => {
                        return Err(DeviceConfigError::BadValue {
                            flag: "vsock",
                            spec: spec.into(),
                            key: "cid",
                            value: v,
                            problem: "must be a number from 3 to 4294967294 (0-2 are reserved)",
                        })
                    }
                },
                "uds" if !v.is_empty() => uds = Some(PathBuf::from(v)),
                _ => {}
            }
        }
        let missing = |key| DeviceConfigError::Missing {
            flag: "vsock",
            spec: spec.into(),
            key,
            example: VSOCK_EXAMPLE,
        };
        Ok(VsockConfig {
            cid: cid.ok_or_else(|| missing("cid"))?,
            uds: uds.ok_or_else(|| missing("uds"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_disks() {
        assert_eq!(
            DiskConfig::parse("path=a.img,readonly=on,id=root").unwrap(),
            DiskConfig {
                path: "a.img".into(),
                readonly: true,
                id: Some("root".into()),
                rate_limiter: RateLimiterConfig::default(),
                engine: EngineChoice::Auto,
                queues: None,
            }
        );
        assert!(!DiskConfig::parse("path=a.img").unwrap().readonly);
        let e = DiskConfig::parse("a.img").unwrap_err().to_string();
        assert!(
            e.contains("is not key=value") && e.contains("--disk path="),
            "{e}"
        );
        let e = DiskConfig::parse("readonly=on").unwrap_err().to_string();
        assert!(e.contains("missing path="), "{e}");
        let e = DiskConfig::parse("path=a,ro=1").unwrap_err().to_string();
        assert!(e.contains("unknown key \"ro\""), "{e}");
        let e = DiskConfig::parse("path=a,readonly=maybe")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not on or off"), "{e}");
    }

    #[test]
    fn parses_engines_and_queue_counts() {
        let d = DiskConfig::parse("path=a.img,engine=sync,queues=4").unwrap();
        assert_eq!((d.engine, d.queues), (EngineChoice::Sync, Some(4)));
        assert_eq!(d.queues_for(2), 4, "an explicit count wins");
        let d = DiskConfig::parse("path=a.img,engine=uring").unwrap();
        assert_eq!((d.engine, d.queues_for(3)), (EngineChoice::Uring, 3));
        assert_eq!(d.queues_for(64), 16, "one per vCPU, at most 16");
        let e = DiskConfig::parse("path=a,engine=aio")
            .unwrap_err()
            .to_string();
        assert!(e.contains("engine") && e.contains("auto"), "{e}");
        for bad in ["0", "17", "many"] {
            let e = DiskConfig::parse(&format!("path=a,queues={bad}"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("from 1 to 16"), "{e}");
        }
    }

    #[test]
    fn parses_net_queue_pairs() {
        let n = NetConfig::parse("tap=t0,queues=4").unwrap();
        assert_eq!((n.queues, n.pairs_for()), (Some(4), 4));
        let n = NetConfig::parse("tap=t0").unwrap();
        assert_eq!(n.pairs_for(), 1);
        let e = NetConfig::parse("tap=t0,queues=9").unwrap_err().to_string();
        assert!(e.contains("from 1 to 8"), "{e}");
    }

    #[test]
    fn parses_nets_and_vsocks() {
        let n = NetConfig::parse("tap=tap0,mac=52:54:00:00:00:01").unwrap();
        assert_eq!(
            (n.tap.as_str(), n.mac.as_deref()),
            ("tap0", Some("52:54:00:00:00:01"))
        );
        assert!(NetConfig::parse("tap=a-very-long-interface").is_err());
        let v = VsockConfig::parse("cid=3,uds=/tmp/v.sock").unwrap();
        assert_eq!((v.cid, v.uds.to_str()), (3, Some("/tmp/v.sock")));
        let e = VsockConfig::parse("cid=2,uds=/x").unwrap_err().to_string();
        assert!(e.contains("0-2 are reserved"), "{e}");
        let e = VsockConfig::parse("cid=3").unwrap_err().to_string();
        assert!(e.contains("missing uds="), "{e}");
    }

    #[test]
    fn parses_rate_limits() {
        let d = DiskConfig::parse("path=a.img,bw=4M,iops=100").unwrap();
        assert_eq!(
            d.rate_limiter,
            RateLimiterConfig {
                bandwidth: Some(TokenBucketConfig::per_second(4 << 20)),
                ops: Some(TokenBucketConfig::per_second(100)),
            }
        );
        for (bw, bytes) in [("4MiB", 4 << 20), ("512K", 512 << 10), ("1000", 1000)] {
            let d = DiskConfig::parse(&format!("path=a,bw={bw}")).unwrap();
            assert_eq!(d.rate_limiter.bandwidth.unwrap().size, bytes, "{bw}");
        }
        let d = DiskConfig::parse("path=a,bw=0,iops=0").unwrap();
        assert!(!d.rate_limiter.limits(), "0 is unlimited");
        let e = DiskConfig::parse("path=a,bw=fast").unwrap_err().to_string();
        assert!(
            e.starts_with("--disk ") && e.contains("bw=\"fast\" is not a rate"),
            "{e}"
        );
        let e = DiskConfig::parse("path=a,iops=1.5")
            .unwrap_err()
            .to_string();
        assert!(e.contains("iops=\"1.5\" is not a whole number"), "{e}");
        let n = NetConfig::parse("tap=tap0,bw=1M,pps=1000").unwrap();
        assert_eq!(n.rx_rate_limiter, n.tx_rate_limiter, "both directions");
        assert_eq!(
            n.tx_rate_limiter.ops,
            Some(TokenBucketConfig::per_second(1000))
        );
        let e = NetConfig::parse("tap=t,pps=-1").unwrap_err().to_string();
        assert!(e.starts_with("--net ") && e.contains("pps="), "{e}");
        let e = NetConfig::parse("tap=t,iops=1").unwrap_err().to_string();
        assert!(e.contains("unknown key \"iops\""), "{e}");
    }
}
