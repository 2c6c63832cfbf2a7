//! Per-object exponential retry delays for kube-runtime `Controller` error policies
//! (client-go's default controller rate limiter: 5 ms doubling up to 1000 s, reset on
//! success).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

const BASE: Duration = Duration::from_millis(5);
const MAX: Duration = Duration::from_secs(1000);

/// Failure counts per object key.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    /// The delay before retrying `key` after one more failure.
    pub(crate) fn next_delay(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = failures.entry(key.to_owned()).or_insert(0);
        let delay = BASE.saturating_mul(1u32 << (*n).min(24)).min(MAX);
        *n = n.saturating_add(1);
        delay
    }

    /// Forgets the failures of `key` after a success.
    pub(crate) fn reset(&self, key: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_until_the_cap_and_resets() {
        let b = Backoff::default();
        assert_eq!(b.next_delay("a"), Duration::from_millis(5));
        assert_eq!(b.next_delay("a"), Duration::from_millis(10));
        assert_eq!(b.next_delay("a"), Duration::from_millis(20));
        assert_eq!(b.next_delay("b"), Duration::from_millis(5));
        for _ in 0..40 {
            b.next_delay("a");
        }
        assert_eq!(b.next_delay("a"), MAX);
        b.reset("a");
        assert_eq!(b.next_delay("a"), Duration::from_millis(5));
    }
}
