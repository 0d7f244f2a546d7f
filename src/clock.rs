//! The one clock everything that schedules reads time through, injected so rehearsals and
//! tests can start the daemon at any instant.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};

/// A source of the current instant.
pub trait Clock: Send + Sync + Debug {
    fn now(&self) -> DateTime<Utc>;
}

/// A shared clock.
pub type SharedClock = Arc<dyn Clock>;

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Starts at a given instant and advances in real time (`serve --clock-start`).
#[derive(Clone, Copy, Debug)]
pub struct ShiftedClock {
    start: DateTime<Utc>,
    since: Instant,
}

impl ShiftedClock {
    pub fn starting_at(start: DateTime<Utc>) -> Self {
        Self {
            start,
            since: Instant::now(),
        }
    }
}

impl Clock for ShiftedClock {
    fn now(&self) -> DateTime<Utc> {
        let elapsed =
            chrono::Duration::from_std(self.since.elapsed()).unwrap_or(chrono::Duration::MAX);
        self.start + elapsed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shifted_clock_starts_where_told_and_moves_forward() {
        let start = DateTime::parse_from_rfc3339("2024-03-03T23:00:55Z")
            .unwrap()
            .to_utc();
        let clock = ShiftedClock::starting_at(start);
        let a = clock.now();
        let b = clock.now();
        assert!(a >= start && a - start < chrono::Duration::seconds(5));
        assert!(b >= a);
    }
}
