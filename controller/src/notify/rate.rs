//! At most N notifications per window per sink, so an interruption of many nodes at
//! once does not flood a channel (or get its webhook throttled by Slack). What is
//! held back is counted and reported in one summary once the window has room.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub struct RateLimit {
    limit: usize,
    window: Duration,
    /// When each notification of the current window went out, oldest first.
    sent: VecDeque<Instant>,
    /// Held back since the last summary.
    suppressed: u64,
}

impl RateLimit {
    pub fn new(limit: usize, window: Duration) -> RateLimit {
        RateLimit {
            limit: limit.max(1),
            window,
            sent: VecDeque::new(),
            suppressed: 0,
        }
    }

    /// Whether one more may go out at `now`; if not, it is counted as suppressed.
    pub fn admit(&mut self, now: Instant) -> bool {
        if self.take_slot(now) {
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    /// How many were held back, if any, once a summary of them may go out (it takes a
    /// slot like any notification).
    pub fn summary(&mut self, now: Instant) -> Option<u64> {
        if self.suppressed == 0 || !self.take_slot(now) {
            return None;
        }
        Some(std::mem::take(&mut self.suppressed))
    }

    fn take_slot(&mut self, now: Instant) -> bool {
        while self
            .sent
            .front()
            .is_some_and(|at| now.saturating_duration_since(*at) >= self.window)
        {
            self.sent.pop_front();
        }
        if self.sent.len() < self.limit {
            self.sent.push_back(now);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_excess_of_a_window_is_counted_and_summarised_once_there_is_room() {
        let t0 = Instant::now();
        let minute = Duration::from_secs(60);
        let mut limit = RateLimit::new(2, minute);
        assert!(limit.admit(t0));
        assert!(limit.admit(t0 + Duration::from_secs(1)));
        assert!(!limit.admit(t0 + Duration::from_secs(2)));
        assert!(!limit.admit(t0 + Duration::from_secs(3)));
        // No room yet: the summary waits.
        assert_eq!(limit.summary(t0 + Duration::from_secs(30)), None);
        // The first slot frees at t0 + 60 s; the summary takes it.
        assert_eq!(limit.summary(t0 + minute), Some(2));
        assert_eq!(limit.summary(t0 + minute), None);
        assert!(limit.admit(t0 + minute + Duration::from_secs(1)));
        assert!(!limit.admit(t0 + minute + Duration::from_secs(1)));
    }
}
