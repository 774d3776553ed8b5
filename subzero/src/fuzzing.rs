//! Entry points for the coverage-guided fuzz targets in `fuzz/` that the
//! public API does not already give. Not a stable API: it exists so that the
//! fuzz crate, which is outside this crate, can build the same device models
//! a VM runs, on backends a fuzzer can drive.

use std::os::fd::OwnedFd;

use crate::devices::virtio::net::{Net, NetError};

/// A virtio-net device on `backend` in place of a TAP: anything that carries
/// one frame per read and write, behind the 12-byte virtio-net header (a
/// datagram socket). Setting the backend's receive offloads does nothing.
pub fn net_on_backend(backend: OwnedFd, mac: [u8; 6]) -> Result<Net, NetError> {
    Net::with_backend(backend, "fuzz", Some(mac), Box::new(|_, _| Ok(())))
}
