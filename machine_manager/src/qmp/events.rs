//! Events from any thread to the QMP client: [`QmpEventSender`].
//!
//! ```text
//!   vCPU thread: sender.send(SHUTDOWN) ──► queue (stamped) ──► eventfd write
//!                                                                  │
//!   event loop: "qmp-events" handler ◄─────────────────────────────┘
//!               drains the queue ──► the client (held until its first request is answered;
//!                                      dropped when there is no client)
//! ```
//!
//! Invariants:
//! - An event is stamped when it is sent, not when it is delivered.
//! - `send` takes only the queue's own lock, never the server's: it may be called while the
//!   machine holds its handler lock, from a handler or any thread.
//! - At most [`MAX_QUEUED`] events wait; beyond that the oldest is dropped with a warning.

use std::collections::VecDeque;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::message::{QmpEvent, Timestamp};

/// Events waiting for the event loop beyond this are dropped, oldest first.
const MAX_QUEUED: usize = 1024;

/// The queue shared by every [`QmpEventSender`] and the server's event-loop handler.
#[derive(Debug)]
pub(crate) struct EventQueue {
    pending: Mutex<VecDeque<(QmpEvent, Timestamp)>>,
    wake: EventFd,
}

impl EventQueue {
    /// An empty queue with its eventfd.
    pub(crate) fn new() -> std::io::Result<Self> {
        Ok(EventQueue {
            pending: Mutex::new(VecDeque::new()),
            wake: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Clears the wake-up eventfd and takes every queued event, oldest first.
    pub(crate) fn take_all(&self) -> Vec<(QmpEvent, Timestamp)> {
        // EAGAIN only means no wake-up was pending; the queue is drained regardless.
        let _ = self.wake.read();
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        pending.drain(..).collect()
    }
}

impl AsRawFd for EventQueue {
    fn as_raw_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }
}

/// Sends events to the QMP client from any thread; cheap to clone.
#[derive(Debug, Clone)]
pub struct QmpEventSender {
    queue: Arc<EventQueue>,
}

impl QmpEventSender {
    pub(crate) fn new(queue: Arc<EventQueue>) -> Self {
        QmpEventSender { queue }
    }

    /// Events queued and not yet taken by the event loop (which hands them to the client, or
    /// drops them when no client is connected).
    pub fn pending(&self) -> usize {
        self.queue
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Stamps `event` with the current time and queues it for the connected client; without
    /// a client when the loop delivers it, it is dropped (as QEMU does).
    pub fn send(&self, event: QmpEvent) {
        let stamped = (event, Timestamp::now());
        {
            let mut pending = self.queue.pending.lock().unwrap_or_else(|e| e.into_inner());
            if pending.len() >= MAX_QUEUED {
                if let Some((dropped, _)) = pending.pop_front() {
                    log::warn!("qmp: event queue full, dropping {dropped:?}");
                }
            }
            pending.push_back(stamped);
        }
        if let Err(e) = self.queue.wake.write(1) {
            // EAGAIN: the counter is saturated, so a wake-up is already pending.
            if e.kind() != std::io::ErrorKind::WouldBlock {
                log::error!("qmp: cannot wake the event loop for an event: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_from_other_threads_arrive_in_order_with_their_stamps() {
        let queue = Arc::new(EventQueue::new().unwrap());
        let sender = QmpEventSender::new(queue.clone());
        let other = sender.clone();
        std::thread::spawn(move || {
            other.send(QmpEvent::Stop);
            other.send(QmpEvent::Resume);
        })
        .join()
        .unwrap();
        assert_eq!(queue.wake.read().unwrap(), 2);
        let events = queue.take_all();
        assert_eq!(
            events.iter().map(|(e, _)| e.clone()).collect::<Vec<_>>(),
            vec![QmpEvent::Stop, QmpEvent::Resume]
        );
        assert!(events[0].1.seconds <= events[1].1.seconds);
        assert!(queue.take_all().is_empty());
    }

    #[test]
    fn a_full_queue_drops_the_oldest() {
        let queue = Arc::new(EventQueue::new().unwrap());
        let sender = QmpEventSender::new(queue.clone());
        for i in 0..=MAX_QUEUED {
            sender.send(QmpEvent::DeviceDeleted { id: i.to_string() });
        }
        let events = queue.take_all();
        assert_eq!(events.len(), MAX_QUEUED);
        assert_eq!(events[0].0, QmpEvent::DeviceDeleted { id: "1".into() });
    }
}
