//! Latency samples and their percentiles.

use std::time::Duration;

/// Per-request latencies of one cell, in nanoseconds.
#[derive(Debug, Clone, Default)]
pub struct Latencies {
    ns: Vec<u64>,
    sorted: bool,
}

impl Latencies {
    /// Records one request's latency.
    pub fn push(&mut self, latency: Duration) {
        self.ns
            .push(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX));
        self.sorted = false;
    }

    /// The `p`-th quantile (`0.0..=1.0`) in microseconds by the nearest-rank method; 0 with
    /// no samples.
    pub fn percentile_us(&mut self, p: f64) -> f64 {
        if self.ns.is_empty() {
            return 0.0;
        }
        if !self.sorted {
            self.ns.sort_unstable();
            self.sorted = true;
        }
        let rank = (p.clamp(0.0, 1.0) * self.ns.len() as f64).ceil() as usize;
        let index = rank.clamp(1, self.ns.len()) - 1;
        self.ns[index] as f64 / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut l = Latencies::default();
        assert_eq!(l.percentile_us(0.5), 0.0);
        for us in (1..=1000).rev() {
            l.push(Duration::from_micros(us));
        }
        assert_eq!(l.percentile_us(0.5), 500.0);
        assert_eq!(l.percentile_us(0.99), 990.0);
        assert_eq!(l.percentile_us(0.999), 999.0);
        assert_eq!(l.percentile_us(1.0), 1000.0);
        assert_eq!(l.percentile_us(0.0), 1.0);
    }
}
