//! Legacy PC devices on the port-I/O bus: the 16550A console UART and the i8042 controller
//! (whose reset line ends the VM on a guest reboot).

pub mod i8042;
pub mod serial;

pub use i8042::{I8042, I8042_PORT_BASE, I8042_PORT_LEN};
pub use serial::{Serial, SERIAL_IRQ, SERIAL_PORT_BASE, SERIAL_PORT_LEN};
