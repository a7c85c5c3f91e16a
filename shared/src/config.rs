//! Value parsers for the flags of all three programs.

use std::time::Duration;

/// A duration flag that is not a positive humantime duration.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidDuration {
    #[error(transparent)]
    Parse(#[from] humantime::DurationError),
    /// Zero: intervals built from it panic (`tokio::time::interval`) or spin.
    #[error("must be greater than 0")]
    Zero,
}

/// Parses a humantime duration (`90s`, `5m`) that is greater than zero; for clap's
/// `value_parser`, so a zero interval is refused at start, not met at run time.
pub fn positive_duration(value: &str) -> Result<Duration, InvalidDuration> {
    match humantime::parse_duration(value)? {
        d if d.is_zero() => Err(InvalidDuration::Zero),
        d => Ok(d),
    }
}

/// Parses `namespace/name` (e.g. `--ranking-configmap`), for clap's `value_parser`.
pub fn object_ref(value: &str) -> Result<(String, String), String> {
    match value.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(format!("{value:?} is not namespace/name")),
    }
}

/// The default of every `--ranking-configmap` flag: where the controller publishes the
/// ranking and the extender reads it.
pub const DEFAULT_RANKING_CONFIGMAP: &str = "spotkube-system/spotkube-ranking";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positive_durations_parse_and_zero_is_refused() {
        assert_eq!(positive_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(positive_duration("1ms"), Ok(Duration::from_millis(1)));
        for zero in ["0s", "0", "0ms", "0m 0s"] {
            let err = positive_duration(zero).unwrap_err();
            assert_eq!(err, InvalidDuration::Zero, "{zero}");
            assert_eq!(err.to_string(), "must be greater than 0");
        }
        assert!(matches!(
            positive_duration("soon"),
            Err(InvalidDuration::Parse(_))
        ));
    }
}
