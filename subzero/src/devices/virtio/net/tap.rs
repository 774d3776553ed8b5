//! A host TAP device opened through `/dev/net/tun`.
//!
//! The TAP is single-queue (or multi-queue, one file descriptor per queue:
//! [`Tap::open_queues`]), carries Ethernet frames without the packet
//! information prefix (`IFF_NO_PI`), and prefixes every frame with a
//! 12-byte virtio-net header (`IFF_VNET_HDR`, `TUNSETVNETHDRSZ` 12: the
//! virtio 1.x header with `num_buffers`). It starts without offloads (the
//! kernel hands over fully checksummed, unsegmented frames); the device
//! enables those the driver accepted with [`set_offload`].

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use super::{NetError, VNET_HDR_LEN};

/// Path of the TUN/TAP clone device.
pub const TUN_PATH: &str = "/dev/net/tun";

/// `struct ifreq` as TUNSETIFF uses it: the name, then the flags (the rest
/// of the union is unused here).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

const _: () = assert!(std::mem::size_of::<IfReq>() == std::mem::size_of::<libc::ifreq>());

/// Tells the kernel which offloads it may use in frames it hands to the
/// reader of the TAP `fd` (`TUN_F_*` flags): `TUN_F_CSUM` lets it leave
/// checksums to the reader (`VIRTIO_NET_HDR_F_NEEDS_CSUM`), `TUN_F_TSO4`,
/// `TUN_F_TSO6` (both need `TUN_F_CSUM`) and `TUN_F_TSO_ECN` (needs one of
/// them) let it hand over TCP segments of up to 64 KiB. Frames written to
/// the TAP may carry offloads whatever is set here.
pub fn set_offload(fd: BorrowedFd, flags: libc::c_uint) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value and touches no
    // memory of ours; `fd` is open for the duration of the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETOFFLOAD, flags as libc::c_ulong) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Attaches (`on`) or detaches the queue of a multi-queue TAP that `fd`
/// holds: a detached queue gets no frames, and frames written to it are
/// refused.
pub fn set_queue(fd: BorrowedFd, on: bool) -> io::Result<()> {
    let flag = if on {
        libc::IFF_ATTACH_QUEUE
    } else {
        libc::IFF_DETACH_QUEUE
    };
    let mut ifr = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: flag as libc::c_short,
        _pad: [0; 22],
    };
    // SAFETY: TUNSETQUEUE reads a `struct ifreq` (only its flags); `ifr`
    // has its size and layout and lives across the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETQUEUE, &mut ifr as *mut IfReq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An open TAP device.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
}

/// Checks `name` the way the kernel will, to give a clear error first.
fn check_name(name: &str) -> Result<(), NetError> {
    if name.len() >= libc::IFNAMSIZ {
        return Err(NetError::NameTooLong(name.to_string()));
    }
    let bad = |c: char| c == '/' || c == ':' || c == '\0' || c.is_whitespace();
    if name.is_empty() || name == "." || name == ".." || name.contains(bad) {
        return Err(NetError::InvalidName(name.to_string()));
    }
    Ok(())
}

impl Tap {
    /// Opens the TAP device `name`, creating it if it does not exist (a
    /// TAP created here disappears when closed). The file descriptor is
    /// non-blocking and close-on-exec.
    pub fn open(name: &str) -> Result<Tap, NetError> {
        Tap::open_flags(name, 0)
    }

    /// Opens `n` queues of the multi-queue TAP device `name`, creating it
    /// if it does not exist. A TAP that exists as a single-queue device is
    /// [`NetError::NotTap`].
    pub fn open_queues(name: &str, n: usize) -> Result<Vec<Tap>, NetError> {
        let first = Tap::open_flags(name, libc::IFF_MULTI_QUEUE)?;
        // Every queue attaches to the device the first one named.
        let actual = first.name.clone();
        let mut queues = vec![first];
        for _ in 1..n {
            queues.push(Tap::open_flags(&actual, libc::IFF_MULTI_QUEUE)?);
        }
        Ok(queues)
    }

    /// [`Tap::open`] with `extra` TUNSETIFF flags.
    fn open_flags(name: &str, extra: libc::c_int) -> Result<Tap, NetError> {
        check_name(name)?;
        let io_err = |what: &'static str, source: io::Error| NetError::Io {
            name: name.to_string(),
            what,
            source,
        };
        // std opens with O_CLOEXEC.
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(TUN_PATH)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOENT | libc::ENODEV | libc::ENXIO) => NetError::NoTunDevice,
                Some(libc::EACCES | libc::EPERM) => NetError::Permission(name.to_string()),
                _ => io_err("cannot open /dev/net/tun", e),
            })?;
        let fd = OwnedFd::from(file);

        let mut ifr = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR | extra) as libc::c_short,
            _pad: [0; 22],
        };
        ifr.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `ifr` has its
        // size and layout (checked above) and lives across the call.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut ifr as *mut IfReq) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EPERM | libc::EACCES) => NetError::Permission(name.to_string()),
                Some(libc::EBUSY) => NetError::Busy(name.to_string()),
                Some(libc::EINVAL) => NetError::NotTap(name.to_string()),
                _ => io_err("TUNSETIFF failed", e),
            });
        }

        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which
        // points to `hdr_len`, alive across the call.
        let rc = unsafe {
            libc::ioctl(
                fd.as_raw_fd(),
                libc::TUNSETVNETHDRSZ,
                &hdr_len as *const libc::c_int,
            )
        };
        if rc < 0 {
            return Err(io_err("TUNSETVNETHDRSZ failed", io::Error::last_os_error()));
        }

        set_offload(fd.as_fd(), 0).map_err(|e| io_err("TUNSETOFFLOAD failed", e))?;

        // The kernel wrote back the device's name (it expands "tap%d").
        let end = ifr
            .name
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(ifr.name.len());
        let name = String::from_utf8_lossy(&ifr.name[..end]).into_owned();
        Ok(Tap { fd, name })
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The size of the virtio-net header the kernel uses on this TAP.
    pub fn vnet_hdr_len(&self) -> io::Result<usize> {
        let mut len: libc::c_int = 0;
        // SAFETY: TUNGETVNETHDRSZ writes one int through the pointer, which
        // points to `len`, alive across the call.
        let rc = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                libc::TUNGETVNETHDRSZ,
                &mut len as *mut libc::c_int,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(len as usize)
    }
}

impl From<Tap> for OwnedFd {
    fn from(t: Tap) -> OwnedFd {
        t.fd
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_kernel_would_refuse_are_refused_first() {
        assert!(matches!(
            Tap::open("a-name-much-too-long"),
            Err(NetError::NameTooLong(_))
        ));
        assert!(matches!(
            Tap::open("0123456789abcdef"),
            Err(NetError::NameTooLong(_))
        ));
        for bad in ["", ".", "..", "a/b", "a b", "a:b", "a\0b"] {
            assert!(
                matches!(Tap::open(bad), Err(NetError::InvalidName(_))),
                "{bad:?}"
            );
        }
        let msg = NetError::NameTooLong("x".repeat(16)).to_string();
        assert!(msg.contains("IFNAMSIZ"), "{msg}");
    }

    #[test]
    fn error_messages_say_what_to_do() {
        assert!(NetError::NoTunDevice.to_string().contains("modprobe tun"));
        let p = NetError::Permission("tap0".into()).to_string();
        assert!(p.contains("CAP_NET_ADMIN"), "{p}");
        assert!(p.contains("ip tuntap add tap0 mode tap user"), "{p}");
        assert!(NetError::Busy("tap0".into()).to_string().contains("tap0"));
    }

    /// Opens a real TAP when this host allows it; skipped otherwise.
    #[test]
    fn opens_a_real_tap_with_a_12_byte_header() {
        // Unique per test process: TAP names are global to the host.
        let name = format!("sbzt{}", std::process::id() % 10_000_000);
        let tap = match Tap::open(&name) {
            Ok(t) => t,
            Err(e @ (NetError::NoTunDevice | NetError::Permission(_))) => {
                eprintln!("skipped: cannot open a TAP device here: {e}");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        assert_eq!(tap.name(), name);
        assert_eq!(tap.vnet_hdr_len().unwrap(), VNET_HDR_LEN);
        // A second opener of a single-queue TAP is refused with a clear error.
        match Tap::open(&name) {
            Err(NetError::Busy(n)) => assert_eq!(n, name),
            other => panic!("expected Busy, got {other:?}"),
        }
        // Nothing to read yet, and the fd does not block.
        let mut buf = [0u8; 2048];
        let file = std::fs::File::from(OwnedFd::from(tap));
        let e = std::io::Read::read(&mut &file, &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
    }

    #[test]
    fn opens_the_queues_of_a_real_multi_queue_tap_and_detaches_them() {
        let name = format!("sbzq{}", std::process::id() % 10_000_000);
        let queues = match Tap::open_queues(&name, 3) {
            Ok(q) => q,
            Err(e @ (NetError::NoTunDevice | NetError::Permission(_))) => {
                eprintln!("skipped: cannot open a TAP device here: {e}");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        assert_eq!(queues.len(), 3);
        assert!(queues.iter().all(|q| q.name() == name));
        let fd = queues[2].fd.as_fd();
        set_queue(fd, false).unwrap();
        set_queue(fd, true).unwrap();
        let again = set_queue(fd, true).unwrap_err();
        assert_eq!(again.raw_os_error(), Some(libc::EINVAL), "already attached");
        // The same name as a single-queue TAP is another kind of device.
        match Tap::open(&name) {
            Err(NetError::NotTap(n)) => assert_eq!(n, name),
            other => panic!("expected NotTap, got {other:?}"),
        }
        drop(queues);
        // And a single-queue TAP cannot be opened as a multi-queue one: the
        // device falls back to one pair.
        let single = Tap::open(&name).unwrap();
        assert!(matches!(
            Tap::open_queues(&name, 2),
            Err(NetError::NotTap(_)) | Err(NetError::Busy(_))
        ));
        drop(single);
    }
}
