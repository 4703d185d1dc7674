//! Real host fixtures for tests (feature `test-utils`): loop devices, size-limited tmpfs mounts
//! (`ENOSPC`), an I/O throttle that makes one thread's block I/O slow enough to keep requests
//! in flight, a file's page-cache counts (to see a flush write dirty pages back), and a log
//! capture, and the Python of QEMU's QMP client library.
//! They change the host (root is needed for the first two) and undo it when dropped.

mod log_capture;
mod loop_device;
mod page_cache;
mod python;
mod throttle;
mod tmpfs;

pub use log_capture::{CapturedLine, LogCapture};
pub use loop_device::LoopDevice;
pub use page_cache::PageCacheState;
pub use python::{qmp_python, QMP_PYTHON_SETUP};
pub use throttle::IoThrottle;
pub use tmpfs::Tmpfs;
