//! Durations as the configuration tables write them: a whole number of seconds or of
//! milliseconds, the unit in the setting's name (`--request-timeout-ms`) or its row.
//!
//! They are parsed straight into [`Duration`], so the rest of the service never converts
//! units. A value that is not a whole number fails with the integer parser's own reason
//! (`invalid digit found in string`), as it did when the fields were plain integers.

use std::num::ParseIntError;
use std::time::Duration;

/// A whole number of seconds, e.g. `--session-ttl 900`.
pub(super) fn seconds(value: &str) -> Result<Duration, ParseIntError> {
    value.parse().map(Duration::from_secs)
}

/// A whole number of milliseconds, e.g. `--request-timeout-ms 5000`.
pub(super) fn millis(value: &str) -> Result<Duration, ParseIntError> {
    value.parse().map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_in_their_unit() {
        assert_eq!(seconds("900"), Ok(Duration::from_secs(900)));
        assert_eq!(millis("5000"), Ok(Duration::from_secs(5)));
        assert_eq!(millis("0"), Ok(Duration::ZERO));
        // The largest integer still fits: `Duration` holds u64 seconds.
        assert_eq!(
            seconds("18446744073709551615"),
            Ok(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn anything_else_fails_with_the_integer_reason() {
        for bad in ["", "1.5", "-1", "5s", "1e3", "18446744073709551616"] {
            assert!(seconds(bad).is_err(), "{bad}");
            assert!(millis(bad).is_err(), "{bad}");
        }
        let reason = millis("abc").expect_err("not a number").to_string();
        assert_eq!(reason, "invalid digit found in string");
    }
}
