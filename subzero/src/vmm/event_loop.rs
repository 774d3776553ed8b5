//! The main thread's event loop (event-manager): it owns the
//! [`Controller`], takes API actions when their eventfd fires, and notices
//! when the guest stops the VM.

use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::eventfd::EventFd;

use super::actions::{VmmAction, VmmResult};
use super::controller::Controller;

/// Event data of the API's eventfd.
const API: u32 = 1;
/// Event data of the VM's stop eventfd.
const STOP: u32 = 2;

/// Where actions come from: a channel and the eventfd that says it has
/// something.
pub struct Requests {
    /// Actions and where to answer them.
    pub rx: Receiver<(VmmAction, Sender<VmmResult>)>,
    /// Readable when `rx` has something.
    pub wake: EventFd,
}

struct Loop {
    ctl: Controller,
    requests: Option<Requests>,
    done: bool,
}

impl MutEventSubscriber for Loop {
    fn init(&mut self, ops: &mut EventOps) {
        if let Some(r) = &self.requests {
            if let Err(e) = ops.add(Events::with_data(&r.wake, API, EventSet::IN)) {
                log::error!("event loop: cannot watch the API: {e:?}");
            }
        }
        if let Err(e) = ops.add(Events::with_data(self.ctl.stop_event(), STOP, EventSet::IN)) {
            log::error!("event loop: cannot watch the VM: {e:?}");
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            API => {
                let Some(r) = &self.requests else { return };
                let _ = r.wake.read();
                while let Ok((action, reply)) = r.rx.try_recv() {
                    let result = self.ctl.handle(action);
                    let _ = reply.send(result);
                }
            }
            STOP => {
                self.ctl.vm_stopped();
                self.done = true;
            }
            _ => {}
        }
    }
}

/// Runs `ctl` until the guest stops its VM, serving `requests` meanwhile,
/// and gives the controller back (with the run's report).
pub fn run(ctl: Controller, requests: Option<Requests>) -> std::io::Result<Controller> {
    let mut em: EventManager<Arc<Mutex<Loop>>> =
        EventManager::new().map_err(|e| std::io::Error::other(format!("{e:?}")))?;
    let lp = Arc::new(Mutex::new(Loop {
        ctl,
        requests,
        done: false,
    }));
    em.add_subscriber(lp.clone());
    loop {
        if let Err(e) = em.run() {
            return Err(std::io::Error::other(format!("event loop: {e:?}")));
        }
        if lp.lock().unwrap_or_else(|p| p.into_inner()).done {
            break;
        }
    }
    drop(em);
    let lp = Arc::try_unwrap(lp)
        .map_err(|_| std::io::Error::other("event loop still shared"))?
        .into_inner()
        .unwrap_or_else(|p| p.into_inner());
    Ok(lp.ctl)
}
