//! What the control plane can ask of the VMM, and what it answers. The API
//! routes HTTP requests into [`VmmAction`]s; the controller carries them out.

use std::path::PathBuf;

use serde::Deserialize;

use super::resources::{
    BootSource, Drive, DriveUpdate, Entropy, Logger, MachineConfig, MachineConfigUpdate, Metrics,
    NetworkInterface, NetworkInterfaceUpdate, Vsock,
};

/// `PUT /snapshot/create`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreate {
    /// "Full" (the only kind offered) or "Diff".
    #[serde(default)]
    pub snapshot_type: Option<String>,
    /// The VM state file to write.
    pub snapshot_path: PathBuf,
    /// The guest memory file to write.
    pub mem_file_path: PathBuf,
    /// Older Firecracker clients send a target version; ignored.
    #[serde(default)]
    pub version: Option<String>,
    /// Subzero's addition: replace files that exist (default: refuse).
    #[serde(default)]
    pub overwrite: bool,
}

/// `mem_backend` of `PUT /snapshot/load`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemBackend {
    /// "File" (offered) or "Uffd".
    pub backend_type: String,
    /// The memory file.
    pub backend_path: PathBuf,
}

/// `PUT /snapshot/load`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoad {
    /// The VM state file.
    pub snapshot_path: PathBuf,
    /// The memory file (older clients; `mem_backend` is the new form).
    #[serde(default)]
    pub mem_file_path: Option<PathBuf>,
    /// Where guest memory comes from.
    #[serde(default)]
    pub mem_backend: Option<MemBackend>,
    /// Diff snapshots (not offered yet).
    #[serde(default)]
    pub enable_diff_snapshots: bool,
    /// Dirty-page tracking (not offered yet).
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// Run the VM once it is loaded.
    #[serde(default)]
    pub resume_vm: bool,
    /// Different TAP devices for the restored VM (not offered yet).
    #[serde(default)]
    pub network_overrides: Vec<serde_json::Value>,
}

/// `PUT /actions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ActionType {
    /// Boot the configured VM.
    InstanceStart,
    /// Press Ctrl-Alt-Del on the guest's keyboard.
    SendCtrlAltDel,
    /// Write the metrics now.
    FlushMetrics,
}

/// `PATCH /vm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum VmState {
    /// Take every vCPU out of the guest.
    Paused,
    /// Let them run again.
    Resumed,
}

/// One request to the VMM.
#[derive(Debug, Clone, PartialEq)]
pub enum VmmAction {
    /// `GET /`.
    GetInstanceInfo,
    /// `GET /version`.
    GetVersion,
    /// `GET /vm/config`.
    GetVmConfig,
    /// `GET /machine-config`.
    GetMachineConfig,
    /// `GET /stats`: the live exit statistics.
    GetStats,
    /// `PUT /machine-config`.
    PutMachineConfig(MachineConfig),
    /// `PATCH /machine-config`.
    PatchMachineConfig(MachineConfigUpdate),
    /// `PUT /boot-source`.
    PutBootSource(BootSource),
    /// `PUT /drives/{id}`.
    PutDrive(Drive),
    /// `PATCH /drives/{id}`.
    PatchDrive(DriveUpdate),
    /// `PUT /network-interfaces/{id}`.
    PutNetworkInterface(NetworkInterface),
    /// `PATCH /network-interfaces/{id}`.
    PatchNetworkInterface(NetworkInterfaceUpdate),
    /// `PUT /vsock`.
    PutVsock(Vsock),
    /// `PUT /entropy`.
    PutEntropy(Entropy),
    /// `PUT /logger`.
    PutLogger(Logger),
    /// `PUT /metrics`.
    PutMetrics(Metrics),
    /// `PUT /actions`.
    Action(ActionType),
    /// `PATCH /vm`.
    SetVmState(VmState),
    /// `PUT /snapshot/create`.
    CreateSnapshot(SnapshotCreate),
    /// `PUT /snapshot/load`.
    LoadSnapshot(SnapshotLoad),
}

/// A successful answer.
#[derive(Debug, Clone, PartialEq)]
pub enum VmmData {
    /// Done; nothing to say (HTTP 204).
    Empty,
    /// A JSON document (HTTP 200).
    Json(serde_json::Value),
}

/// A refused or failed action: the message is what the client reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ActionError {
    /// Whether the client asked for something wrong (HTTP 400) or the VMM
    /// failed (HTTP 500).
    pub internal: bool,
    /// What went wrong, and what to do.
    pub message: String,
}

impl ActionError {
    /// The client's request cannot be carried out.
    pub fn bad(message: impl Into<String>) -> Self {
        ActionError {
            internal: false,
            message: message.into(),
        }
    }

    /// The VMM failed.
    pub fn internal(message: impl Into<String>) -> Self {
        ActionError {
            internal: true,
            message: message.into(),
        }
    }
}

/// What the controller answers.
pub type VmmResult = Result<VmmData, ActionError>;
