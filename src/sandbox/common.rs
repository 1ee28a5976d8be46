//! Small helpers shared by both imitations.

use std::sync::{Mutex, MutexGuard};

use chrono::{DateTime, SecondsFormat, Utc};

/// Locks a mutex, carrying on if a panicking handler poisoned it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// ISO 8601 with milliseconds and `Z`, as HubSpot writes timestamps.
pub(crate) fn iso(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A plausible address: one `@`, a local part, a dotted domain, no spaces.
pub(crate) fn is_valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    let bad_char = |c: char| c.is_whitespace() || c.is_control() || "<>(),;:\\\"[]@".contains(c);
    !local.is_empty()
        && !local.chars().any(bad_char)
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && domain.contains('.')
        && !domain.chars().any(bad_char)
        && !domain.starts_with(['.', '-'])
        && !domain.ends_with(['.', '-'])
        && !domain.contains("..")
}

/// The `limit` query parameter of a list request, if it is a number.
pub(crate) fn limit_of(query: Option<&str>) -> Option<usize> {
    query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("limit="))
        .and_then(|n| n.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::is_valid_email;

    #[test]
    fn emails_are_checked_for_shape() {
        for ok in ["a@b.co", "first.last+tag@sub.example.org"] {
            assert!(is_valid_email(ok), "{ok}");
        }
        for bad in [
            "", "no-at", "a@b", "a b@c.de", "a@@b.de", "@b.de", "a@b..de", " a@b.de",
        ] {
            assert!(!is_valid_email(bad), "{bad}");
        }
    }
}
