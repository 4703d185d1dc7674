//! Adaptive polling of an event loop, with QEMU's meaning of `poll-max-ns`, `poll-grow` and
//! `poll-shrink`.
//!
//! ```text
//!   turn: ┌─ poll sources for up to `window` ns (no system calls) ─┐ found work: run it
//!         │                                                         │ (notifications stay off)
//!         └─ nothing: sources re-enable notifications, are polled once more, then epoll_wait
//!   after the turn: block time (polling + sleeping) adjusts the window
//! ```
//!
//! Invariants:
//! - Each source has its own window (as in QEMU, which keeps one per handler); a turn polls for
//!   the largest, and after it only the windows of the sources that had work (found by
//!   polling, or their fd fired) adapt.
//! - The window starts at 0 and never exceeds `max_ns`; `max_ns` 0 means no polling at all.
//! - After each turn the window adapts to how long the loop waited for an event, polling and
//!   sleeping together (the "block time"): at most the window: unchanged (polling paid off);
//!   more than `max_ns`: shrunk (divided by `shrink`, or reset to 0 when `shrink` is 0), since
//!   polling that long would not pay; in between: grown (times `grow`, 2 when `grow` is 0;
//!   from 0 it starts at [`INITIAL_NS`]), capped at `max_ns`.
//! - [`PollSource::poll`] makes no system call: it reads memory another party writes (a
//!   virtqueue's avail index, an io_uring CQ ring, the Linux AIO ring, an atomic flag).

/// QEMU's default `poll-max-ns` for an iothread: polling up to 32 µs paid off on NVMe drives
/// at queue depths 1 and 32.
pub const DEFAULT_MAX_NS: u64 = 32768;

/// The first window after polling was off (QEMU starts at 4 µs).
pub const INITIAL_NS: u64 = 4000;

/// The factor a window grows by when `poll-grow` is 0.
pub const DEFAULT_GROW: u64 = 2;

/// How a loop polls: QEMU's `poll-max-ns`, `poll-grow`, `poll-shrink`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PollParams {
    /// The longest window in nanoseconds; 0 turns polling off.
    pub max_ns: u64,
    /// The factor the window grows by; 0 means [`DEFAULT_GROW`].
    pub grow: u64,
    /// The divisor the window shrinks by; 0 resets it to 0.
    pub shrink: u64,
}

impl PollParams {
    /// No polling (the main loop's setting, and every loop's until told otherwise).
    pub const OFF: PollParams = PollParams {
        max_ns: 0,
        grow: 0,
        shrink: 0,
    };

    /// An iothread's default: QEMU's ([`DEFAULT_MAX_NS`], grow 2, shrink to 0).
    pub const IOTHREAD_DEFAULT: PollParams = PollParams {
        max_ns: DEFAULT_MAX_NS,
        grow: 0,
        shrink: 0,
    };

    /// Whether the loop polls at all.
    pub fn enabled(&self) -> bool {
        self.max_ns > 0
    }
}

/// The adaptive polling window of one loop (pure logic: the loop measures, this decides).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollWindow {
    params: PollParams,
    ns: u64,
}

impl PollWindow {
    /// A window of 0 for `params`.
    pub fn new(params: PollParams) -> PollWindow {
        PollWindow { params, ns: 0 }
    }

    /// The parameters in force.
    pub fn params(&self) -> PollParams {
        self.params
    }

    /// The current window, in nanoseconds (0: do not poll this turn).
    pub fn ns(&self) -> u64 {
        self.ns
    }

    /// Adapts the window after a turn that waited `block_ns` for an event (polling plus
    /// sleeping).
    pub fn adjust(&mut self, block_ns: u64) {
        let max = self.params.max_ns;
        if max == 0 || block_ns <= self.ns {
            // Off, or the event came within the window: polling paid off.
            return;
        }
        if block_ns > max {
            self.ns = match self.params.shrink {
                0 => 0,
                s => self.ns / s,
            };
        } else if self.ns < max {
            let grow = match self.params.grow {
                0 => DEFAULT_GROW,
                g => g,
            };
            self.ns = match self.ns {
                0 => INITIAL_NS,
                ns => ns.saturating_mul(grow),
            }
            .min(max);
        }
    }
}

/// Something an event loop can poll for work without a system call, beside the file
/// descriptor its handler waits on (`EventLoop::add_poll`).
///
/// The loop calls every method on its own thread. `begin` and `end` bracket a polling phase;
/// both must be idempotent (a source added during a phase sees `end` without `begin`).
pub trait PollSource: Send {
    /// Whether there is work, found without a system call and without side effects.
    fn poll(&mut self) -> bool;

    /// Does the work [`PollSource::poll`] found (what the fd's handler would have done, minus
    /// clearing the fd).
    fn run(&mut self);

    /// Polling starts: the source may ask its producer not to signal the fd (a virtqueue sets
    /// `VIRTQ_USED_F_NO_NOTIFY` or keeps `avail_event` behind).
    fn begin(&mut self) {}

    /// Polling ends and the loop may sleep: the source turns its signals back on. The loop
    /// polls it once more afterwards, so work that arrived while signals were off is not lost.
    fn end(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(max_ns: u64, grow: u64, shrink: u64) -> PollWindow {
        PollWindow::new(PollParams {
            max_ns,
            grow,
            shrink,
        })
    }

    #[test]
    fn grows_from_the_initial_window_by_two_up_to_the_maximum() {
        let mut w = window(DEFAULT_MAX_NS, 0, 0);
        assert_eq!(w.ns(), 0);
        // An event that came after the window but within the maximum: grow.
        w.adjust(10_000);
        assert_eq!(w.ns(), INITIAL_NS);
        w.adjust(10_000);
        assert_eq!(w.ns(), 8000);
        w.adjust(10_000);
        assert_eq!(w.ns(), 16000);
        // Within the window: polling paid off, no change.
        w.adjust(10_000);
        assert_eq!(w.ns(), 16000);
        w.adjust(20_000);
        assert_eq!(w.ns(), 32000);
        w.adjust(32_500);
        assert_eq!(w.ns(), DEFAULT_MAX_NS, "capped at the maximum");
        w.adjust(32_768);
        assert_eq!(w.ns(), DEFAULT_MAX_NS);
    }

    #[test]
    fn a_wait_longer_than_the_maximum_resets_or_divides() {
        let mut w = window(DEFAULT_MAX_NS, 0, 0);
        w.adjust(1000);
        assert_eq!(w.ns(), INITIAL_NS);
        w.adjust(1_000_000);
        assert_eq!(w.ns(), 0, "shrink 0 resets the window");

        let mut w = window(100_000, 4, 2);
        w.adjust(5000);
        assert_eq!(w.ns(), INITIAL_NS);
        w.adjust(5000);
        assert_eq!(w.ns(), 16_000, "grow 4");
        w.adjust(200_000);
        assert_eq!(w.ns(), 8000, "shrink 2 halves");
        w.adjust(200_000);
        assert_eq!(w.ns(), 4000);
    }

    #[test]
    fn a_wait_of_exactly_the_maximum_does_not_shrink() {
        let mut w = window(10_000, 0, 0);
        w.adjust(9000);
        w.adjust(9000);
        assert_eq!(w.ns(), 8000);
        w.adjust(10_000);
        assert_eq!(w.ns(), 10_000, "grown and capped");
        w.adjust(10_000);
        assert_eq!(w.ns(), 10_000);
    }

    #[test]
    fn a_maximum_below_the_initial_window_caps_it() {
        let mut w = window(1000, 0, 0);
        w.adjust(500);
        assert_eq!(w.ns(), 1000);
    }

    #[test]
    fn max_zero_never_polls() {
        let mut w = PollWindow::new(PollParams::OFF);
        for block in [0, 10, 5000, 1 << 40] {
            w.adjust(block);
            assert_eq!(w.ns(), 0);
        }
        assert!(!PollParams::OFF.enabled());
        assert!(PollParams::IOTHREAD_DEFAULT.enabled());
    }

    #[test]
    fn huge_grow_factors_saturate_at_the_maximum() {
        let mut w = window(u64::MAX / 2, u64::MAX, 0);
        w.adjust(5000);
        w.adjust(1 << 20);
        assert_eq!(w.ns(), u64::MAX / 2);
    }
}
