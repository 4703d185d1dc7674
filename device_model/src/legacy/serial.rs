//! A 16550A UART: the guest console at I/O port 0x3f8, IRQ 4.
//!
//! ```text
//!  offset  DLAB=0 read / write     DLAB=1
//!    0     RBR (rx) / THR (tx)     DLL (divisor low)
//!    1     IER                     DLM (divisor high)
//!    2     IIR / FCR
//!    3     LCR (bit 7 = DLAB)
//!    4     MCR (bit 4 = loopback)
//!    5     LSR      6  MSR      7  SCR
//! ```
//!
//! Invariants:
//! - Transmission is instantaneous: THR is always empty (LSR.THRE and TEMT stay set), so a
//!   written byte goes straight to the output buffer and the THR-empty interrupt is raised
//!   again at once if enabled.
//! - Output is buffered and flushed per write burst: at a newline, when the guest writes IER
//!   (Linux's console and tty drivers do so when a burst ends), when the buffer is large, and
//!   when the device is dropped.
//! - The interrupt is edge-style (an eventfd bound to the GSI as a KVM irqfd): it fires when
//!   a cause becomes pending; the guest's handler reads IIR until nothing is pending.
//! - Received bytes beyond [`RX_FIFO_SIZE`] are dropped and flagged as an overrun (LSR.OE).

use std::collections::VecDeque;
use std::io::Write;

use address_space::BusDevice;
use vmm_sys_util::eventfd::EventFd;

/// Standard I/O port of the first serial port (COM1).
pub const SERIAL_PORT_BASE: u64 = 0x3f8;
/// Number of I/O ports the UART occupies.
pub const SERIAL_PORT_LEN: u64 = 8;
/// ISA interrupt line of COM1.
pub const SERIAL_IRQ: u32 = 4;
/// Bytes the receive buffer holds before it overruns.
pub const RX_FIFO_SIZE: usize = 4096;

const FLUSH_THRESHOLD: usize = 1024;

const DATA: u64 = 0;
const IER: u64 = 1;
const IIR_FCR: u64 = 2;
const LCR: u64 = 3;
const MCR: u64 = 4;
const LSR: u64 = 5;
const MSR: u64 = 6;
const SCR: u64 = 7;

const IER_RDI: u8 = 0x01;
const IER_THRI: u8 = 0x02;
const IER_MASK: u8 = 0x0f;

const IIR_NO_INT: u8 = 0x01;
const IIR_THRI: u8 = 0x02;
const IIR_RDI: u8 = 0x04;
const IIR_FIFO_ENABLED: u8 = 0xc0;

const FCR_ENABLE_FIFO: u8 = 0x01;
const FCR_CLEAR_RX: u8 = 0x02;

const LCR_DLAB: u8 = 0x80;
const MCR_LOOP: u8 = 0x10;
const MCR_MASK: u8 = 0x1f;

const LSR_DR: u8 = 0x01;
const LSR_OE: u8 = 0x02;
const LSR_THRE: u8 = 0x20;
const LSR_TEMT: u8 = 0x40;

const MSR_CTS: u8 = 0x10;
const MSR_DSR: u8 = 0x20;
const MSR_RI: u8 = 0x40;
const MSR_DCD: u8 = 0x80;

/// The 16550A UART.
pub struct Serial {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    fifo_enabled: bool,
    divisor: u16,
    /// A THR-empty interrupt is pending (cleared by reading IIR or writing THR).
    thre_pending: bool,
    overrun: bool,
    rx: VecDeque<u8>,
    tx: Vec<u8>,
    output: Box<dyn Write + Send>,
    interrupt: EventFd,
}

impl Serial {
    /// A UART writing to `output` and signalling its interrupt on `interrupt`.
    pub fn new(interrupt: EventFd, output: Box<dyn Write + Send>) -> Serial {
        Serial {
            ier: 0,
            lcr: 0x03, // 8 data bits, as firmware leaves it
            mcr: 0x08, // OUT2: interrupts routed to the PIC
            scr: 0,
            fifo_enabled: false,
            divisor: 12, // 9600 baud
            thre_pending: false,
            overrun: false,
            rx: VecDeque::new(),
            tx: Vec::with_capacity(FLUSH_THRESHOLD),
            output,
            interrupt,
        }
    }

    /// Queues bytes from the host side (stdin) for the guest to read; returns how many fit.
    pub fn receive(&mut self, bytes: &[u8]) -> usize {
        let room = RX_FIFO_SIZE - self.rx.len();
        let accepted = bytes.len().min(room);
        if accepted < bytes.len() {
            self.overrun = true;
            util::debug_ratelimited!(
                "serial: receive buffer full, {} bytes dropped",
                bytes.len() - accepted
            );
        }
        let was_empty = self.rx.is_empty();
        self.rx.extend(&bytes[..accepted]);
        if was_empty && accepted > 0 && self.ier & IER_RDI != 0 {
            self.raise_interrupt();
        }
        accepted
    }

    /// Writes buffered output to the host.
    pub fn flush(&mut self) {
        if self.tx.is_empty() {
            return;
        }
        if let Err(e) = self
            .output
            .write_all(&self.tx)
            .and_then(|()| self.output.flush())
        {
            util::warn_ratelimited!("serial: cannot write console output: {e}");
        }
        self.tx.clear();
    }

    fn dlab(&self) -> bool {
        self.lcr & LCR_DLAB != 0
    }

    fn loopback(&self) -> bool {
        self.mcr & MCR_LOOP != 0
    }

    fn raise_interrupt(&self) {
        if let Err(e) = self.interrupt.write(1) {
            util::warn_ratelimited!("serial: cannot signal the interrupt: {e}");
        }
    }

    fn interrupt_identification(&mut self) -> u8 {
        let fifo = if self.fifo_enabled {
            IIR_FIFO_ENABLED
        } else {
            0
        };
        if self.ier & IER_RDI != 0 && !self.rx.is_empty() {
            fifo | IIR_RDI
        } else if self.ier & IER_THRI != 0 && self.thre_pending {
            // Reading IIR while it reports THR-empty acknowledges that interrupt.
            self.thre_pending = false;
            fifo | IIR_THRI
        } else {
            fifo | IIR_NO_INT
        }
    }

    fn line_status(&mut self) -> u8 {
        let mut lsr = LSR_THRE | LSR_TEMT;
        if !self.rx.is_empty() {
            lsr |= LSR_DR;
        }
        if std::mem::take(&mut self.overrun) {
            lsr |= LSR_OE;
        }
        lsr
    }

    fn modem_status(&self) -> u8 {
        if self.loopback() {
            // Loopback wires DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD.
            let mut msr = 0;
            for (mcr_bit, msr_bit) in [
                (0x01, MSR_DSR),
                (0x02, MSR_CTS),
                (0x04, MSR_RI),
                (0x08, MSR_DCD),
            ] {
                if self.mcr & mcr_bit != 0 {
                    msr |= msr_bit;
                }
            }
            msr
        } else {
            MSR_DCD | MSR_DSR | MSR_CTS
        }
    }

    fn transmit(&mut self, byte: u8) {
        if self.loopback() {
            self.receive(&[byte]);
        } else {
            self.tx.push(byte);
            if byte == b'\n' || self.tx.len() >= FLUSH_THRESHOLD {
                self.flush();
            }
        }
        // The byte left at once: THR is empty again.
        self.thre_pending = true;
        if self.ier & IER_THRI != 0 {
            self.raise_interrupt();
        }
    }

    fn write_ier(&mut self, value: u8) {
        let enabled = (value & IER_MASK) & !self.ier;
        self.ier = value & IER_MASK;
        self.flush();
        if enabled & IER_THRI != 0 {
            // Enabling the interrupt while THR is empty raises it.
            self.thre_pending = true;
            self.raise_interrupt();
        } else if enabled & IER_RDI != 0 && !self.rx.is_empty() {
            self.raise_interrupt();
        }
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            DATA if self.dlab() => self.divisor as u8,
            DATA => self.rx.pop_front().unwrap_or(0),
            IER if self.dlab() => (self.divisor >> 8) as u8,
            IER => self.ier,
            IIR_FCR => self.interrupt_identification(),
            LCR => self.lcr,
            MCR => self.mcr,
            LSR => self.line_status(),
            MSR => self.modem_status(),
            SCR => self.scr,
            _ => 0xff,
        };
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else {
            return;
        };
        match offset {
            DATA if self.dlab() => self.divisor = (self.divisor & 0xff00) | u16::from(value),
            DATA => self.transmit(value),
            IER if self.dlab() => self.divisor = (self.divisor & 0x00ff) | (u16::from(value) << 8),
            IER => self.write_ier(value),
            IIR_FCR => {
                self.fifo_enabled = value & FCR_ENABLE_FIFO != 0;
                if value & FCR_CLEAR_RX != 0 {
                    self.rx.clear();
                }
            }
            LCR => self.lcr = value,
            MCR => self.mcr = value & MCR_MASK,
            SCR => self.scr = value,
            _ => util::trace_ratelimited!("serial: write {value:#x} to read-only offset {offset}"),
        }
    }
}

impl Drop for Serial {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    /// Output captured for assertions, shared with the test.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn serial() -> (Serial, Capture, EventFd) {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let capture = Capture::default();
        let serial = Serial::new(irq.try_clone().unwrap(), Box::new(capture.clone()));
        (serial, capture, irq)
    }

    fn read(serial: &mut Serial, offset: u64) -> u8 {
        let mut byte = [0u8];
        serial.read(offset, &mut byte);
        byte[0]
    }

    fn interrupts(irq: &EventFd) -> u64 {
        irq.read().unwrap_or(0)
    }

    #[test]
    fn output_is_buffered_until_newline_or_ier_write() {
        let (mut serial, capture, _irq) = serial();
        for &b in b"abc" {
            serial.write(DATA, &[b]);
        }
        assert!(capture.0.lock().unwrap().is_empty(), "no newline yet");
        serial.write(DATA, b"\n");
        assert_eq!(capture.0.lock().unwrap().as_slice(), b"abc\n");
        serial.write(DATA, b"$");
        serial.write(IER, &[0]);
        assert_eq!(capture.0.lock().unwrap().as_slice(), b"abc\n$");
        assert_eq!(
            read(&mut serial, LSR) & (LSR_THRE | LSR_TEMT),
            LSR_THRE | LSR_TEMT
        );
    }

    #[test]
    fn divisor_latch_shadows_data_and_ier() {
        let (mut serial, capture, _irq) = serial();
        serial.write(LCR, &[LCR_DLAB | 0x03]);
        serial.write(DATA, &[0x01]);
        serial.write(IER, &[0x02]);
        assert_eq!(read(&mut serial, DATA), 0x01);
        assert_eq!(read(&mut serial, IER), 0x02);
        serial.write(LCR, &[0x03]);
        assert_eq!(read(&mut serial, IER), 0, "IER untouched by the latch");
        assert_eq!(serial.divisor, 0x0201);
        drop(serial);
        assert!(
            capture.0.lock().unwrap().is_empty(),
            "divisor bytes are not output"
        );
    }

    #[test]
    fn thr_empty_interrupt_is_raised_and_acknowledged() {
        let (mut serial, _capture, irq) = serial();
        assert_eq!(read(&mut serial, IIR_FCR), IIR_NO_INT);
        serial.write(IER, &[IER_THRI]);
        assert_eq!(
            interrupts(&irq),
            1,
            "enabling THRI with THR empty interrupts"
        );
        assert_eq!(read(&mut serial, IIR_FCR), IIR_THRI);
        assert_eq!(
            read(&mut serial, IIR_FCR),
            IIR_NO_INT,
            "reading IIR acknowledged it"
        );
        serial.write(DATA, b"x");
        assert_eq!(interrupts(&irq), 1);
        assert_eq!(read(&mut serial, IIR_FCR), IIR_THRI);
    }

    #[test]
    fn received_bytes_interrupt_and_read_back_in_order() {
        let (mut serial, _capture, irq) = serial();
        assert_eq!(serial.receive(b"hi"), 2);
        assert_eq!(interrupts(&irq), 0, "RDI disabled");
        serial.write(IER, &[IER_RDI]);
        assert_eq!(interrupts(&irq), 1, "enabling RDI with data pending");
        serial.write(IIR_FCR, &[FCR_ENABLE_FIFO]);
        assert_eq!(read(&mut serial, IIR_FCR), IIR_FIFO_ENABLED | IIR_RDI);
        assert_eq!(read(&mut serial, LSR) & LSR_DR, LSR_DR);
        assert_eq!(read(&mut serial, DATA), b'h');
        assert_eq!(read(&mut serial, DATA), b'i');
        assert_eq!(read(&mut serial, LSR) & LSR_DR, 0);
        assert_eq!(read(&mut serial, IIR_FCR), IIR_FIFO_ENABLED | IIR_NO_INT);
        serial.receive(b"z");
        assert_eq!(interrupts(&irq), 1);
    }

    #[test]
    fn overrun_is_flagged_once_and_fifo_can_be_cleared() {
        let (mut serial, _capture, _irq) = serial();
        let big = vec![b'a'; RX_FIFO_SIZE + 10];
        assert_eq!(serial.receive(&big), RX_FIFO_SIZE);
        assert_eq!(read(&mut serial, LSR) & LSR_OE, LSR_OE);
        assert_eq!(read(&mut serial, LSR) & LSR_OE, 0, "OE clears when read");
        serial.write(IIR_FCR, &[FCR_ENABLE_FIFO | FCR_CLEAR_RX]);
        assert_eq!(read(&mut serial, LSR) & LSR_DR, 0);
    }

    #[test]
    fn loopback_echoes_data_and_modem_lines() {
        let (mut serial, capture, _irq) = serial();
        serial.write(MCR, &[MCR_LOOP | 0x0a]);
        assert_eq!(read(&mut serial, MSR) & 0xf0, 0x90, "RTS->CTS, OUT2->DCD");
        serial.write(DATA, b"q");
        assert_eq!(read(&mut serial, DATA), b'q');
        serial.write(MCR, &[0x08]);
        assert_eq!(read(&mut serial, MSR), MSR_DCD | MSR_DSR | MSR_CTS);
        serial.write(SCR, &[0x5a]);
        assert_eq!(read(&mut serial, SCR), 0x5a);
        drop(serial);
        assert!(
            capture.0.lock().unwrap().is_empty(),
            "loopback bytes are not output"
        );
    }
}
