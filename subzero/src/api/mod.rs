//! The control plane: Firecracker's REST API on a Unix socket. The HTTP
//! threads parse and route requests into [`crate::vmm::controller`]
//! actions and share no VMM state: they hand each action to the main
//! thread's event loop and write back its answer.

pub mod client;
pub mod http;
pub mod routes;
pub mod server;
