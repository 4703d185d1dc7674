//! What a polling event loop looks at for a block device: the queue's avail index (with guest
//! notifications off while the loop polls) and the engine's completions.
//!
//! Each source stands beside the handler of the same fd (`<id>-queue0`, `<id>-aio`) and runs
//! the same code when it finds work; neither makes a system call to look. Both hold the
//! device's state weakly, like the handlers, and find nothing once it is gone.

use std::sync::{Mutex, Weak};

use util::event_loop::PollSource;

use super::state::{lock, BlockState};

/// The request queue: work when the guest offered chains the device has not taken.
pub(super) struct QueuePoll {
    pub(super) state: Weak<Mutex<BlockState>>,
}

impl PollSource for QueuePoll {
    fn poll(&mut self) -> bool {
        self.state.upgrade().is_some_and(|s| lock(&s).poll_queue())
    }

    fn run(&mut self) {
        if let Some(state) = self.state.upgrade() {
            lock(&state).on_notify();
        }
    }

    fn begin(&mut self) {
        if let Some(state) = self.state.upgrade() {
            lock(&state).set_queue_polling(true);
        }
    }

    fn end(&mut self) {
        if let Some(state) = self.state.upgrade() {
            lock(&state).set_queue_polling(false);
        }
    }
}

/// The engine of backend `generation`: work when it has completions to reap.
pub(super) struct EnginePoll {
    pub(super) state: Weak<Mutex<BlockState>>,
    pub(super) generation: u64,
}

impl PollSource for EnginePoll {
    fn poll(&mut self) -> bool {
        self.state
            .upgrade()
            .is_some_and(|s| lock(&s).poll_engine(self.generation))
    }

    fn run(&mut self) {
        if let Some(state) = self.state.upgrade() {
            lock(&state).on_completions_of(self.generation);
        }
    }
}
