//! virtio-rng: fills the guest's buffers from the host's getrandom(2).

use super::{types, DeviceError, QueueCtx, VirtioDevice};

/// Largest request served at once; longer chains are refused.
const MAX_REQUEST: u64 = 1 << 20;
/// Queue size.
const QUEUE_SIZE: u16 = 256;

/// The entropy device. Its one queue carries device-writable buffers.
#[derive(Default)]
pub struct Rng {
    /// Bytes handed to the guest so far.
    pub bytes_served: u64,
    /// Requests refused as malformed.
    pub bad_requests: u64,
}

/// Fills `buf` from getrandom(2).
pub fn host_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into `rest`,
        // which is valid, writable memory we own.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

impl VirtioDevice for Rng {
    fn name(&self) -> &str {
        "virtio-rng"
    }
    fn device_type(&self) -> u32 {
        types::RNG
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        0
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn process_queue(&mut self, q: usize, ctx: &mut QueueCtx) -> Result<(), DeviceError> {
        loop {
            ctx.disable_notification(q)?;
            loop {
                let chain = match ctx.pop(q, MAX_REQUEST) {
                    Ok(Some(c)) => c,
                    Ok(None) => break,
                    Err(e) => {
                        log::debug!("virtio-rng: {e}");
                        self.bad_requests += 1;
                        continue;
                    }
                };
                let len = chain.writable_len() as usize;
                let mut buf = vec![0u8; len];
                let written = match host_random(&mut buf)
                    .map_err(|e| e.to_string())
                    .and_then(|()| chain.write_at(ctx.mem, 0, &buf).map_err(|e| e.to_string()))
                {
                    Ok(()) => len as u32,
                    Err(e) => {
                        log::warn!("virtio-rng: {e}");
                        0
                    }
                };
                self.bytes_served += u64::from(written);
                ctx.add_used(q, chain.head, written)?;
            }
            if !ctx.enable_notification(q)? {
                break;
            }
        }
        ctx.notify(q)
    }
}
