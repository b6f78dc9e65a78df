//! The caller's deadline as gRPC sends it (`grpc-timeout: <digits><H|M|S|m|u|n>`), read by
//! the layers that see the HTTP request and by the per-call layer.

use std::time::Duration;
use tonic::codegen::http::HeaderMap;

/// The `grpc-timeout` in `headers`, if any.
pub(crate) fn from_headers(headers: &HeaderMap) -> Option<Duration> {
    parse(headers.get("grpc-timeout")?.to_str().ok()?)
}

/// A `grpc-timeout` value as a duration; `None` when it is not one.
pub(crate) fn parse(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_as_the_spec_writes_them() {
        let timeout = |v: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("grpc-timeout", v.parse().expect("ascii"));
            from_headers(&headers)
        };
        assert_eq!(timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(timeout("5u"), Some(Duration::from_micros(5)));
        for bad in ["", "m", "100", "100x", "123456789S", "-1S"] {
            assert_eq!(timeout(bad), None, "{bad}");
        }
        assert_eq!(from_headers(&HeaderMap::new()), None);
    }
}
