//! I/O limits (`throttling.*`) as QEMU enforces them: leaky buckets.
//!
//! Each limit is a bucket whose level drains at the average rate; a request that goes adds its
//! cost (1 for an iops limit, or one per `iops-size` bytes; its bytes for a bps limit). A
//! request may go while every bucket that applies to it (the total one, and the read or write
//! one) is at or below its capacity; otherwise it waits until the fullest of them has drained
//! that far. The capacity is `max × max-length` when a burst is allowed, else a tenth of a
//! second's worth (so the rate over a second or more is the average). With a burst, a second,
//! small bucket draining at `max` keeps the burst itself at that rate. Requests that wait are
//! looked at again when the next one may go, but at most once a millisecond, so that at high
//! limits one wake-up lets a few go rather than one per timer, while the pace stays smooth.
//!
//! Pure arithmetic on times given by the caller: the device's thread owns the throttle, asks
//! [`Throttle::wait`] before starting a read or write, and arms a timer for what it says.

use std::time::{Duration, Instant};

use util::aio::{Limit, ThrottleConfig};

/// The shortest time between two looks at the requests that wait.
const RETRY_PERIOD: Duration = Duration::from_millis(1);

/// One leaky bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Drain rate, units per second.
    rate: f64,
    /// Level a request may start at.
    capacity: f64,
    level: f64,
}

impl Bucket {
    fn new(rate: u64, capacity: f64) -> Bucket {
        Bucket {
            rate: rate as f64,
            capacity: capacity.max(1.0),
            level: 0.0,
        }
    }

    fn leak(&mut self, seconds: f64) {
        self.level = (self.level - self.rate * seconds).max(0.0);
    }

    /// Seconds until the level is down to the capacity.
    fn wait(&self) -> f64 {
        ((self.level - self.capacity) / self.rate).max(0.0)
    }
}

/// A limit's buckets: the average one, and the burst-rate one when a burst is allowed.
#[derive(Debug, Clone, Copy)]
struct Gauge {
    average: Bucket,
    burst: Option<Bucket>,
}

impl Gauge {
    fn new(limit: &Limit) -> Option<Gauge> {
        if !limit.is_set() {
            return None;
        }
        let (average, burst) = if limit.max > 0 {
            let length = limit.max_length.max(1) as f64;
            (
                Bucket::new(limit.avg, limit.max as f64 * length),
                Some(Bucket::new(limit.max, limit.max as f64 / 10.0)),
            )
        } else {
            (Bucket::new(limit.avg, limit.avg as f64 / 10.0), None)
        };
        Some(Gauge { average, burst })
    }

    fn buckets(&mut self) -> impl Iterator<Item = &mut Bucket> {
        std::iter::once(&mut self.average).chain(self.burst.as_mut())
    }
}

/// The limits of one device, with their current levels.
#[derive(Debug, Clone)]
pub(super) struct Throttle {
    config: ThrottleConfig,
    /// iops total, read, write; bps total, read, write (`None`: no limit).
    gauges: [Option<Gauge>; 6],
    last: Instant,
}

impl Throttle {
    /// The throttle of `config`, `None` when it sets no limit.
    pub(super) fn new(config: &ThrottleConfig, now: Instant) -> Option<Throttle> {
        if !config.is_set() {
            return None;
        }
        let gauges = config.limits().map(|(_, limit)| Gauge::new(&limit));
        Some(Throttle {
            config: *config,
            gauges,
            last: now,
        })
    }

    /// The gauges that apply to a read or a write: total, then its own kind, for iops and bps.
    fn applying(&mut self, write: bool) -> impl Iterator<Item = (bool, &mut Gauge)> {
        let own = if write { 2 } else { 1 };
        self.gauges
            .iter_mut()
            .enumerate()
            .filter(move |(i, _)| i % 3 == 0 || i % 3 == own)
            .filter_map(|(i, g)| g.as_mut().map(|g| (i < 3, g)))
    }

    fn leak(&mut self, now: Instant) {
        let seconds = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        for gauge in self.gauges.iter_mut().flatten() {
            for bucket in gauge.buckets() {
                bucket.leak(seconds);
            }
        }
    }

    /// When to look again at reads (or writes) that wait: when the next may go, but not
    /// sooner than [`RETRY_PERIOD`] (at 20,000 requests a second, one timer per request would
    /// cost more than the I/O; a millisecond's worth of them go together instead).
    pub(super) fn retry_in(&mut self, now: Instant, write: bool) -> Duration {
        self.wait(now, write).max(RETRY_PERIOD)
    }

    /// How long a read (or write) must wait from `now` before it may start; zero if at once.
    pub(super) fn wait(&mut self, now: Instant, write: bool) -> Duration {
        self.leak(now);
        let mut seconds = 0.0f64;
        for (_, gauge) in self.applying(write) {
            for bucket in gauge.buckets() {
                seconds = seconds.max(bucket.wait());
            }
        }
        Duration::from_secs_f64(seconds)
    }

    /// Counts a read (or write) of `bytes` that starts now.
    pub(super) fn account(&mut self, write: bool, bytes: u64) {
        let ios = match self.config.iops_size {
            0 => 1.0,
            size => bytes.div_ceil(size).max(1) as f64,
        };
        for (iops, gauge) in self.applying(write) {
            let cost = if iops { ios } else { bytes as f64 };
            for bucket in gauge.buckets() {
                bucket.level += cost;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(avg: u64) -> Limit {
        Limit {
            avg,
            ..Limit::default()
        }
    }

    /// Requests started over `seconds` by a caller that starts one whenever allowed.
    fn run(throttle: &mut Throttle, start: Instant, seconds: f64, write: bool, bytes: u64) -> u64 {
        let end = start + Duration::from_secs_f64(seconds);
        let mut now = start;
        let mut started = 0;
        while now < end {
            let wait = throttle.wait(now, write);
            if wait.is_zero() {
                throttle.account(write, bytes);
                started += 1;
            } else {
                now += wait;
            }
        }
        started
    }

    #[test]
    fn no_limit_means_no_throttle() {
        assert!(Throttle::new(&ThrottleConfig::default(), Instant::now()).is_none());
    }

    #[test]
    fn the_average_holds_over_seconds() {
        let now = Instant::now();
        let config = ThrottleConfig {
            iops_total: limit(2000),
            ..ThrottleConfig::default()
        };
        let mut throttle = Throttle::new(&config, now).unwrap();
        let started = run(&mut throttle, now, 3.0, false, 4096);
        // A tenth of a second's worth may go at once, then the average.
        assert!((6000..=6201).contains(&started), "{started}");
    }

    #[test]
    fn bytes_limits_count_bytes_and_kinds_are_separate() {
        let now = Instant::now();
        let config = ThrottleConfig {
            bps_write: limit(1 << 20),
            ..ThrottleConfig::default()
        };
        let mut throttle = Throttle::new(&config, now).unwrap();
        let writes = run(&mut throttle, now, 2.0, true, 64 << 10);
        assert!((32..=35).contains(&writes), "{writes}");
        assert!(throttle.wait(now, false).is_zero(), "reads are not limited");
    }

    #[test]
    fn a_burst_is_allowed_then_the_average() {
        let now = Instant::now();
        let config = ThrottleConfig {
            iops_read: Limit {
                avg: 100,
                max: 1000,
                max_length: 2,
            },
            ..ThrottleConfig::default()
        };
        let mut throttle = Throttle::new(&config, now).unwrap();
        // The burst (2000 requests at up to 1000/s) first, then 100/s.
        let first = run(&mut throttle, now, 2.0, false, 4096);
        assert!((1900..=2101).contains(&first), "{first}");
        let later = run(
            &mut throttle,
            now + Duration::from_secs(2),
            10.0,
            false,
            4096,
        );
        assert!(later <= 1000 + 101, "{later}");
    }

    #[test]
    fn iops_size_counts_big_requests_as_several() {
        let now = Instant::now();
        let config = ThrottleConfig {
            iops_total: limit(100),
            iops_size: 4096,
            ..ThrottleConfig::default()
        };
        let mut throttle = Throttle::new(&config, now).unwrap();
        let started = run(&mut throttle, now, 4.0, true, 16384);
        assert!((100..=104).contains(&started), "{started}");
    }
}
