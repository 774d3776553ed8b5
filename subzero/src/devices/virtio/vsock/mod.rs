//! virtio-vsock with a host Unix-socket backend (Firecracker convention).

pub mod conn;
pub mod packet;
