//! The QMP server: QEMU Machine Protocol over a Unix socket.
