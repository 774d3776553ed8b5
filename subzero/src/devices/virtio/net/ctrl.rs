//! The control queue (`VIRTIO_NET_F_CTRL_VQ`), offered with several queue
//! pairs: the driver says through it how many pairs it uses
//! (`VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET`). Each command is a class and a
//! command byte and their data, device-readable, then one device-writable
//! ack byte. Any other command is answered `VIRTIO_NET_ERR`.

use virtio_bindings::bindings::virtio_net::{
    VIRTIO_NET_CTRL_MQ, VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET, VIRTIO_NET_ERR, VIRTIO_NET_F_MQ,
    VIRTIO_NET_OK,
};

use super::{bit, count, DescChain, DeviceError, Net, QueueCtx};

/// Longest control chain accepted.
const CTRL_CHAIN_MAX: u64 = 4096;

impl Net {
    /// Serves every command on the control queue `q`.
    pub(super) fn ctrl(&mut self, q: usize, ctx: &mut QueueCtx) -> Result<(), DeviceError> {
        loop {
            ctx.disable_notification(q)?;
            loop {
                let chain = match ctx.pop(q, CTRL_CHAIN_MAX) {
                    Ok(Some(c)) => c,
                    Ok(None) => break,
                    Err(e) => {
                        count(
                            &self.counters.ctrl_invalid,
                            format_args!("control chain refused: {e}"),
                        );
                        continue;
                    }
                };
                let ack = self.command(ctx, &chain);
                let at = chain.writable_len().saturating_sub(1);
                let len = match chain.writable_len() {
                    0 => 0,
                    _ if chain.write_at(ctx.mem, at, &[ack]).is_ok() => 1,
                    _ => 0,
                };
                ctx.add_used(q, chain.head, len)?;
            }
            if !ctx.enable_notification(q)? {
                break;
            }
        }
        ctx.notify(q)
    }

    /// Runs one command; returns its ack.
    fn command(&mut self, ctx: &mut QueueCtx, chain: &DescChain) -> u8 {
        let err = VIRTIO_NET_ERR as u8;
        let mut head = [0u8; 4];
        let readable = chain.readable_len();
        if chain.writable_len() == 0
            || readable < 2
            || chain.read_at(ctx.mem, 0, &mut head[..2]).is_err()
        {
            count(
                &self.counters.ctrl_invalid,
                format_args!("control command without a class, a command or an ack byte"),
            );
            return err;
        }
        let (class, cmd) = (u32::from(head[0]), u32::from(head[1]));
        if class != VIRTIO_NET_CTRL_MQ || cmd != VIRTIO_NET_CTRL_MQ_VQ_PAIRS_SET {
            count(
                &self.counters.ctrl_invalid,
                format_args!("control command class {class} command {cmd} is not supported"),
            );
            return err;
        }
        if readable != 4 || chain.read_at(ctx.mem, 2, &mut head[2..]).is_err() {
            count(
                &self.counters.ctrl_invalid,
                format_args!(
                    "VQ_PAIRS_SET with {} data bytes, not 2",
                    readable.saturating_sub(2)
                ),
            );
            return err;
        }
        let k = usize::from(u16::from_le_bytes([head[2], head[3]]));
        if self.acked & bit(VIRTIO_NET_F_MQ) == 0 || k == 0 || k > self.pairs.len() {
            count(
                &self.counters.ctrl_invalid,
                format_args!(
                    "VQ_PAIRS_SET {k}: the device has {} pairs",
                    self.pairs.len()
                ),
            );
            return err;
        }
        self.use_pairs(k);
        for p in 0..k {
            self.rearm(p);
        }
        log::debug!("virtio-net {}: {k} queue pairs in use", self.tap_name);
        VIRTIO_NET_OK as u8
    }
}
