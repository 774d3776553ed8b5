//! The 16550A UART at COM1 (vm-superio), wired to the console.
//!
//! Guest output goes to a [`ConsoleOut`], which also watches for the kernel's
//! panic banner so that a guest that panics and then reboots (`panic=-1`) is
//! reported as a panic, not as a clean reboot.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use vm_superio::serial::SerialState;

use super::console_pipe::ConsolePipe;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::{BusDevice, DeviceAction};

/// The line Linux prints when it panics.
const PANIC_BANNER: &str = "Kernel panic - not syncing";
/// Longest console line kept for panic matching; longer lines are cut.
const MAX_LINE: usize = 512;

/// How the UART raises its interrupt.
pub enum IrqTrigger {
    /// Through an eventfd registered as a KVM irqfd.
    Eventfd(EventFd),
    /// No interrupt controller (the demo VM): interrupts are dropped.
    None,
}

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        match self {
            IrqTrigger::Eventfd(fd) => fd.write(1),
            IrqTrigger::None => Ok(()),
        }
    }
}

/// What the VMM learns from the guest's console: the first panic line it
/// printed, and how many bytes it printed at all.
#[derive(Clone, Default)]
pub struct PanicWatch {
    panic: Arc<Mutex<Option<String>>>,
    bytes: Arc<std::sync::atomic::AtomicU64>,
    pipe: Arc<std::sync::OnceLock<ConsolePipe>>,
}

impl PanicWatch {
    /// The panic line, if the guest printed one.
    pub fn message(&self) -> Option<String> {
        self.panic.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Bytes the guest has printed on the console.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits for the guest's output to reach the console, for at most
    /// `timeout`; false if it did not.
    pub fn drain(&self, timeout: std::time::Duration) -> bool {
        self.pipe.get().is_none_or(|p| p.drain(timeout))
    }

    /// Bytes of guest output dropped because the console did not keep up.
    pub fn dropped(&self) -> u64 {
        self.pipe.get().map_or(0, ConsolePipe::dropped)
    }

    fn record(&self, line: &str) {
        let mut slot = self.panic.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(line.trim().to_string());
        }
    }
}

/// Where a [`ConsoleOut`] sends the bytes.
enum Sink {
    /// Through the queue and its thread (see [`ConsolePipe`]).
    Pipe(ConsolePipe),
    /// Straight to the writer, if the thread could not start.
    Direct(Box<dyn Write + Send>),
}

/// Console sink: forwards guest bytes and watches lines for a panic.
pub struct ConsoleOut {
    out: Sink,
    line: Vec<u8>,
    panic: PanicWatch,
}

impl ConsoleOut {
    /// Forwards guest output to `out`, through a [`ConsolePipe`] so that a
    /// blocked `out` never blocks the guest.
    pub fn new(out: Box<dyn Write + Send>, panic: PanicWatch) -> Self {
        let (sink, pipe) = match ConsolePipe::new_or_back(out) {
            Ok(pipe) => (Sink::Pipe(pipe.clone()), Some(pipe)),
            Err(out) => (Sink::Direct(out), None),
        };
        if let Some(pipe) = pipe {
            let _ = panic.pipe.set(pipe);
        }
        Self {
            out: sink,
            line: Vec::with_capacity(MAX_LINE),
            panic,
        }
    }

    fn scan(&mut self, buf: &[u8]) {
        self.panic
            .bytes
            .fetch_add(buf.len() as u64, std::sync::atomic::Ordering::Relaxed);
        for &b in buf {
            if b == b'\n' {
                let text = String::from_utf8_lossy(&self.line);
                if let Some(at) = text.find(PANIC_BANNER) {
                    self.panic.record(&text[at..]);
                }
                self.line.clear();
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
        }
    }
}

impl Write for ConsoleOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.scan(buf);
        match &mut self.out {
            Sink::Pipe(pipe) => pipe.push(buf),
            // A closed or failing console must not stop the guest: drop output.
            Sink::Direct(out) => {
                if out.write_all(buf).is_err() {
                    log::debug!("console write failed; guest output dropped");
                }
            }
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        // The UART flushes after every byte: the pipe's thread writes as
        // soon as it can, and waiting here would block the guest.
        if let Sink::Direct(out) = &mut self.out {
            let _ = out.flush();
        }
        Ok(())
    }
}

/// The UART's registers and receive FIFO, as a snapshot keeps them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UartState {
    /// Divisor latch, low byte.
    pub baud_divisor_low: u8,
    /// Divisor latch, high byte.
    pub baud_divisor_high: u8,
    /// Interrupt enable register.
    pub interrupt_enable: u8,
    /// Interrupt identification register.
    pub interrupt_identification: u8,
    /// Line control register.
    pub line_control: u8,
    /// Line status register.
    pub line_status: u8,
    /// Modem control register.
    pub modem_control: u8,
    /// Modem status register.
    pub modem_status: u8,
    /// Scratch register.
    pub scratch: u8,
    /// Bytes received and not yet read by the guest.
    pub in_buffer: Vec<u8>,
}

impl From<SerialState> for UartState {
    fn from(s: SerialState) -> Self {
        UartState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }
}

impl From<&UartState> for SerialState {
    fn from(s: &UartState) -> Self {
        SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        }
    }
}

/// The UART as a bus device.
pub struct SerialDevice {
    uart: Serial<IrqTrigger, vm_superio::serial::NoEvents, ConsoleOut>,
}

impl SerialDevice {
    /// A UART that writes to `out` and interrupts through `irq`.
    pub fn new(irq: IrqTrigger, out: ConsoleOut) -> Self {
        Self {
            uart: Serial::new(irq, out),
        }
    }

    /// A UART with the registers of `state` (a restore). Fails if the
    /// state's receive FIFO is larger than the UART's.
    pub fn from_state(irq: IrqTrigger, out: ConsoleOut, state: &UartState) -> Result<Self, String> {
        Serial::from_state(&state.into(), irq, vm_superio::serial::NoEvents, out)
            .map(|uart| Self { uart })
            .map_err(|e| format!("the serial port's saved state is invalid: {e:?}"))
    }

    /// The registers and FIFO now.
    pub fn state(&self) -> UartState {
        self.uart.state().into()
    }

    /// Queues host input for the guest. Returns how many bytes fit (0 when
    /// the receive FIFO is full; try again later).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        self.uart.enqueue_raw_bytes(bytes).unwrap_or(0)
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let (Ok(reg), Some(first)) = (u8::try_from(offset), data.first_mut()) {
            *first = self.uart.read(reg);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> DeviceAction {
        if let (Ok(reg), Some(&value)) = (u8::try_from(offset), data.first()) {
            if let Err(e) = self.uart.write(reg, value) {
                log::warn!("serial: {e:?}");
            }
        }
        DeviceAction::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer tests can read back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn device() -> (SerialDevice, Shared, PanicWatch) {
        let out = Shared::default();
        let watch = PanicWatch::default();
        let console = ConsoleOut::new(Box::new(out.clone()), watch.clone());
        (SerialDevice::new(IrqTrigger::None, console), out, watch)
    }

    #[test]
    fn transmit_register_reaches_console() {
        let (mut dev, out, watch) = device();
        for b in b"hi\n" {
            dev.write(0, &[*b]);
        }
        assert!(watch.drain(std::time::Duration::from_secs(5)));
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hi\n");
        assert_eq!(watch.message(), None);
    }

    #[test]
    fn panic_banner_is_recorded_once() {
        let (mut dev, _out, watch) = device();
        let text = b"[ 1.0] Kernel panic - not syncing: Attempted to kill init!\n\
                     [ 1.1] Kernel panic - not syncing: second\n";
        for b in text {
            dev.write(0, &[*b]);
        }
        assert_eq!(
            watch.message().as_deref(),
            Some("Kernel panic - not syncing: Attempted to kill init!")
        );
    }

    #[test]
    fn input_is_readable_from_receive_register() {
        let (mut dev, _out, _watch) = device();
        assert_eq!(dev.enqueue_input(b"ok"), 2);
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "data ready");
        let mut rbr = [0u8];
        dev.read(0, &mut rbr);
        assert_eq!(rbr[0], b'o');
    }

    #[test]
    fn full_fifo_accepts_nothing() {
        let (mut dev, _out, _watch) = device();
        let big = [b'x'; 100];
        let first = dev.enqueue_input(&big);
        assert!(first > 0 && first < 100);
        assert_eq!(dev.enqueue_input(&big), 0);
    }
}
