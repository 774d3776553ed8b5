//! Firecracker's paths and methods, mapped to [`VmmAction`]s, and the
//! VMM's answers mapped back to status codes and bodies.

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::http::{Request, Response};
use crate::vmm::actions::{ActionType, VmState, VmmAction, VmmData, VmmResult};

/// A bad request: 400 with a `fault_message`.
fn bad(message: impl AsRef<str>) -> Response {
    Response::fault(400, message.as_ref())
}

fn body<T: DeserializeOwned>(req: &Request) -> Result<T, Response> {
    if req.body.iter().all(u8::is_ascii_whitespace) {
        return Err(bad(format!(
            "{} {} needs a JSON body",
            req.method, req.path
        )));
    }
    serde_json::from_slice(&req.body).map_err(|e| {
        bad(format!(
            "An error occurred when deserializing the json body of a request: {e}."
        ))
    })
}

/// The id of `PUT /drives/{id}` must match the body's.
fn same_id(path_id: &str, body_id: &str) -> Result<(), Response> {
    if path_id == body_id {
        Ok(())
    } else {
        Err(bad(format!(
            "The id from the path ({path_id}) does not match the id from the body ({body_id})!"
        )))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    action_type: ActionType,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VmBody {
    state: VmState,
}

/// Maps a request to an action, or to the response that refuses it.
pub fn route(req: &Request) -> Result<VmmAction, Response> {
    let path = req.path.trim_end_matches('/');
    let parts: Vec<&str> = path.split('/').skip(1).collect();
    let method = req.method.as_str();
    Ok(match (method, parts.as_slice()) {
        ("GET", []) => VmmAction::GetInstanceInfo,
        ("GET", ["version"]) => VmmAction::GetVersion,
        ("GET", ["vm", "config"]) => VmmAction::GetVmConfig,
        ("GET", ["stats"]) => VmmAction::GetStats,
        ("GET", ["machine-config"]) => VmmAction::GetMachineConfig,
        ("PUT", ["machine-config"]) => VmmAction::PutMachineConfig(body(req)?),
        ("PATCH", ["machine-config"]) => VmmAction::PatchMachineConfig(body(req)?),
        ("PUT", ["boot-source"]) => VmmAction::PutBootSource(body(req)?),
        ("PUT", ["drives", id]) => {
            let drive: crate::vmm::resources::Drive = body(req)?;
            same_id(id, &drive.drive_id)?;
            VmmAction::PutDrive(drive)
        }
        ("PATCH", ["drives", id]) => {
            let update: crate::vmm::resources::DriveUpdate = body(req)?;
            same_id(id, &update.drive_id)?;
            VmmAction::PatchDrive(update)
        }
        ("PUT", ["network-interfaces", id]) => {
            let net: crate::vmm::resources::NetworkInterface = body(req)?;
            same_id(id, &net.iface_id)?;
            VmmAction::PutNetworkInterface(net)
        }
        ("PATCH", ["network-interfaces", id]) => {
            let update: crate::vmm::resources::NetworkInterfaceUpdate = body(req)?;
            same_id(id, &update.iface_id)?;
            VmmAction::PatchNetworkInterface(update)
        }
        ("PUT", ["vsock"]) => VmmAction::PutVsock(body(req)?),
        ("PUT", ["entropy"]) => VmmAction::PutEntropy(body(req)?),
        ("PUT", ["logger"]) => VmmAction::PutLogger(body(req)?),
        ("PUT", ["metrics"]) => VmmAction::PutMetrics(body(req)?),
        ("PUT", ["actions"]) => VmmAction::Action(body::<ActionBody>(req)?.action_type),
        ("PATCH", ["vm"]) => VmmAction::SetVmState(body::<VmBody>(req)?.state),
        ("PUT", ["snapshot", "create"]) => VmmAction::CreateSnapshot(body(req)?),
        ("PUT", ["snapshot", "load"]) => VmmAction::LoadSnapshot(body(req)?),
        _ => {
            return Err(bad(format!(
                "Invalid request method and/or path: {} {}.",
                req.method, req.path
            )))
        }
    })
}

/// The HTTP form of the VMM's answer.
pub fn respond(result: VmmResult) -> Response {
    match result {
        Ok(VmmData::Empty) => Response::empty(204),
        Ok(VmmData::Json(v)) => Response::json(200, v.to_string()),
        Err(e) if e.internal => Response::fault(500, &e.message),
        Err(e) => Response::fault(400, &e.message),
    }
}

#[cfg(test)]
mod tests;
