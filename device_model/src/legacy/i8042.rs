//! The i8042 keyboard controller, reduced to what a micro VM needs: enough of the command
//! set for Linux to probe it, and the CPU reset line (command 0xFE) that `reboot=k` pulses.
//!
//! Invariants:
//! - The device spans ports 0x60..=0x64; only 0x60 (data) and 0x64 (status/command) are
//!   registers, the ports between read 0xff and ignore writes.
//! - The input buffer is always empty (status bit 1 clear), so a guest waiting to send a
//!   command never spins.
//! - Command 0xFE signals the reset eventfd; the machine ends the VM successfully.

use std::collections::VecDeque;

use address_space::BusDevice;
use vmm_sys_util::eventfd::EventFd;

/// First I/O port of the controller (data).
pub const I8042_PORT_BASE: u64 = 0x60;
/// Ports the controller spans (0x60..=0x64).
pub const I8042_PORT_LEN: u64 = 5;

const DATA: u64 = 0;
const COMMAND: u64 = 4;

const STATUS_OUTPUT_FULL: u8 = 0x01;
const STATUS_SYSTEM: u8 = 0x04;
const STATUS_COMMAND: u8 = 0x08;
const STATUS_UNLOCKED: u8 = 0x10;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_DISABLE_AUX: u8 = 0xa7;
const CMD_ENABLE_AUX: u8 = 0xa8;
const CMD_TEST_AUX: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_TEST_KBD: u8 = 0xab;
const CMD_DISABLE_KBD: u8 = 0xad;
const CMD_ENABLE_KBD: u8 = 0xae;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_WRITE_AUX: u8 = 0xd4;
const CMD_RESET_CPU: u8 = 0xfe;

const SELF_TEST_OK: u8 = 0x55;
const PORT_TEST_OK: u8 = 0x00;
const DEVICE_RESEND: u8 = 0xfe;
const OUTPUT_PORT_DEFAULT: u8 = 0x01; // reset line released
const CTR_DEFAULT: u8 = 0x07;

/// The i8042 controller.
pub struct I8042 {
    ctr: u8,
    output: VecDeque<u8>,
    /// The command whose data byte the next write to port 0x60 carries.
    pending: Option<u8>,
    last_was_command: bool,
    reset: EventFd,
}

impl I8042 {
    /// A controller that signals `reset` when the guest pulses the CPU reset line.
    pub fn new(reset: EventFd) -> I8042 {
        I8042 {
            ctr: CTR_DEFAULT,
            output: VecDeque::new(),
            pending: None,
            last_was_command: false,
            reset,
        }
    }

    fn status(&self) -> u8 {
        let mut status = STATUS_SYSTEM | STATUS_UNLOCKED;
        if !self.output.is_empty() {
            status |= STATUS_OUTPUT_FULL;
        }
        if self.last_was_command {
            status |= STATUS_COMMAND;
        }
        status
    }

    fn command(&mut self, command: u8) {
        self.last_was_command = true;
        match command {
            CMD_READ_CTR => self.output.push_back(self.ctr),
            CMD_WRITE_CTR | CMD_WRITE_OUTPUT_PORT | CMD_WRITE_AUX => self.pending = Some(command),
            CMD_SELF_TEST => self.output.push_back(SELF_TEST_OK),
            CMD_TEST_AUX | CMD_TEST_KBD => self.output.push_back(PORT_TEST_OK),
            CMD_READ_OUTPUT_PORT => self.output.push_back(OUTPUT_PORT_DEFAULT),
            CMD_DISABLE_AUX | CMD_ENABLE_AUX | CMD_DISABLE_KBD | CMD_ENABLE_KBD => {}
            CMD_RESET_CPU => {
                util::info_ratelimited!("i8042: guest pulsed the CPU reset line");
                if let Err(e) = self.reset.write(1) {
                    util::error_ratelimited!("i8042: cannot signal the reset: {e}");
                }
            }
            other => util::debug_ratelimited!("i8042: ignoring command {other:#x}"),
        }
    }

    fn data(&mut self, value: u8) {
        self.last_was_command = false;
        match self.pending.take() {
            Some(CMD_WRITE_CTR) => self.ctr = value,
            Some(CMD_WRITE_OUTPUT_PORT) if value & OUTPUT_PORT_DEFAULT == 0 => {
                self.command(CMD_RESET_CPU)
            }
            // No mouse and no keyboard behind the controller: devices answer "resend".
            Some(CMD_WRITE_AUX) | None => self.output.push_back(DEVICE_RESEND),
            Some(_) => {}
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            DATA => self.output.pop_front().unwrap_or(0),
            COMMAND => self.status(),
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
            DATA => self.data(value),
            COMMAND => self.command(value),
            _ => util::trace_ratelimited!(
                "i8042: ignoring write to port {:#x}",
                I8042_PORT_BASE + offset
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    fn controller() -> (I8042, EventFd) {
        let reset = EventFd::new(EFD_NONBLOCK).unwrap();
        (I8042::new(reset.try_clone().unwrap()), reset)
    }

    fn read(dev: &mut I8042, offset: u64) -> u8 {
        let mut byte = [0u8];
        dev.read(offset, &mut byte);
        byte[0]
    }

    #[test]
    fn reset_command_signals_the_machine() {
        let (mut dev, reset) = controller();
        assert!(reset.read().is_err(), "nothing signalled yet");
        assert_eq!(read(&mut dev, COMMAND) & 0x02, 0, "input buffer empty");
        dev.write(COMMAND, &[CMD_RESET_CPU]);
        assert_eq!(reset.read().unwrap(), 1);
    }

    #[test]
    fn clearing_the_reset_bit_of_the_output_port_resets_too() {
        let (mut dev, reset) = controller();
        dev.write(COMMAND, &[CMD_WRITE_OUTPUT_PORT]);
        dev.write(DATA, &[0x00]);
        assert_eq!(reset.read().unwrap(), 1);
    }

    #[test]
    fn probe_commands_answer_through_the_output_buffer() {
        let (mut dev, reset) = controller();
        dev.write(COMMAND, &[CMD_SELF_TEST]);
        assert_eq!(
            read(&mut dev, COMMAND) & STATUS_OUTPUT_FULL,
            STATUS_OUTPUT_FULL
        );
        assert_eq!(read(&mut dev, DATA), SELF_TEST_OK);
        assert_eq!(read(&mut dev, COMMAND) & STATUS_OUTPUT_FULL, 0);
        dev.write(COMMAND, &[CMD_WRITE_CTR]);
        dev.write(DATA, &[0x47]);
        dev.write(COMMAND, &[CMD_READ_CTR]);
        assert_eq!(read(&mut dev, DATA), 0x47);
        dev.write(COMMAND, &[CMD_WRITE_AUX]);
        dev.write(DATA, &[0xff]);
        assert_eq!(read(&mut dev, DATA), DEVICE_RESEND, "no mouse");
        assert_eq!(read(&mut dev, 1), 0xff, "port 0x61 is not ours");
        assert!(reset.read().is_err());
    }
}
