//! The QMP server: the QEMU Machine Protocol over a Unix socket (`-qmp unix:PATH,server,nowait`).
//!
//! ```text
//!   client ──bytes──► decoder (JSON values across reads) ──► session (negotiation, request
//!   checks, typed arguments) ──► QmpHandler (the machine) ──► reply / event lines ──► client
//!                                                   QmpEventSender (any thread) ──┘
//! ```
//!
//! - `decoder` framing accepts requests split over reads and several per read, in time
//!   linear in the input; a malformed request gets exactly one `GenericError` and the
//!   connection stays usable.
//! - `commands` parses each command's `arguments` into typed structs that refuse unknown
//!   members; [`QmpHandler`] is what the machine implements; [`QmpServer`] runs it all on a
//!   [`util::event_loop::EventLoop`], serving one client at a time.
//! - Every message the server writes is one JSON object followed by `\r\n`, shaped exactly as
//!   `shared/COMPAT.md` ("QMP") says; `docs/qmp.md` is the user reference.

mod block;
mod commands;
mod decoder;
mod events;
mod handler;
mod message;
mod server;
mod session;

pub use block::{
    BlockInfo, BlockStatsCounters, BlockStatsInfo, CacheInfo, ImageInfo, InsertedImage,
    ThrottleMembers,
};
pub use commands::{BlockdevAdd, DeviceAdd};
pub use events::QmpEventSender;
pub use handler::{CpuInfo, QmpError, QmpHandler, VmRunState};
pub use message::{QmpEvent, ShutdownReason, Timestamp};
pub use server::{QmpServer, QmpServerError};

/// The decoder and the session, for the fuzz targets (`fuzz/`) to drive without a socket.
/// Not an API: built only with the `fuzzing` feature.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    pub use super::decoder::{Frame, JsonStream, MAX_DEPTH, MAX_PENDING};
    pub use super::session::{AfterReply, Ending, Session};
}
