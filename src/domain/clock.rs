//! The service's own clock, in the stored JSON's unit. Expiry in the store is judged on
//! Valkey's clock; this one stamps what the memory store writes and what tests compare.

use std::time::{SystemTime, UNIX_EPOCH};

/// How far this process's clock is moved (see [`skew_clock_for_tests`]); 0 in production.
static CLOCK_OFFSET_MS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Moves this process's clock by `offset_ms`, to play a replica whose clock is wrong in
/// tests (`--test-clock-offset-ms`). Expiry is judged on Valkey's clock, so such a replica
/// must still answer like the others.
pub fn skew_clock_for_tests(offset_ms: i64) {
    CLOCK_OFFSET_MS.store(offset_ms, std::sync::atomic::Ordering::Relaxed);
}

/// Milliseconds since the Unix epoch, the unit the stored JSON uses.
pub fn now_ms() -> i64 {
    let offset = CLOCK_OFFSET_MS.load(std::sync::atomic::Ordering::Relaxed);
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        // A clock before 1970 is a broken host; "the end of time" makes every token look
        // expired (fail closed).
        .unwrap_or(i64::MAX)
        .saturating_add(offset)
}
