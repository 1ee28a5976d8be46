//! HubSpot property validation: names must exist, values are strings,
//! `email` must look like one, `sync_date` is a `date` (UTC midnight).

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use serde_json::{Map, Value};

use super::super::common::is_valid_email;
use super::errors::{HsError, PropError};

/// Contact properties that exist in every sandbox portal.
pub(crate) const DEFAULT_PROPERTIES: [&str; 14] = [
    "email",
    "firstname",
    "lastname",
    "phone",
    "mobilephone",
    "company",
    "website",
    "jobtitle",
    "city",
    "country",
    "lifecyclestage",
    "domain_id",
    "page_id",
    "sync_date",
];

/// Properties of HubSpot type `date`.
const DATE_PROPERTIES: [&str; 1] = ["sync_date"];

/// Validated values: names to strings; an empty string means "clear".
pub(crate) type Props = BTreeMap<String, String>;

/// Checks a `properties` object and normalizes its values (emails are
/// lower-cased, dates become `YYYY-MM-DD`).
pub(crate) fn check_properties(
    known: &HashSet<String>,
    raw: &Map<String, Value>,
) -> Result<Props, HsError> {
    let mut props = Props::new();
    let mut problems = Vec::new();
    for (name, value) in raw {
        let Value::String(value) = value else {
            return Err(HsError::validation(format!(
                "Invalid input JSON: the value of property \"{name}\" must be a string, got {}",
                kind(value)
            )));
        };
        match check_value(known, name, value) {
            Ok(value) => {
                props.insert(name.clone(), value);
            }
            Err(problem) => problems.push(problem),
        }
    }
    if problems.is_empty() {
        Ok(props)
    } else {
        Err(HsError::properties(&problems))
    }
}

fn check_value(known: &HashSet<String>, name: &str, value: &str) -> Result<String, PropError> {
    if !known.contains(name) {
        return Err(PropError {
            name: name.into(),
            code: "PROPERTY_DOESNT_EXIST",
            message: format!("Property \"{name}\" does not exist"),
        });
    }
    if value.is_empty() {
        return Ok(String::new());
    }
    if name == "email" {
        return if is_valid_email(value) {
            Ok(value.to_lowercase())
        } else {
            Err(PropError::invalid_email(name, value))
        };
    }
    if DATE_PROPERTIES.contains(&name) {
        return normalize_date(value).map_err(|message| PropError {
            name: name.into(),
            code: "INVALID_DATE",
            message,
        });
    }
    Ok(value.to_owned())
}

/// `YYYY-MM-DD`, epoch milliseconds or an ISO 8601 date-time, which must be
/// midnight UTC; answers the date as `YYYY-MM-DD`.
pub(crate) fn normalize_date(value: &str) -> Result<String, String> {
    if value.len() == 10
        && let Ok(date) = NaiveDate::parse_from_str(value, "%Y-%m-%d")
    {
        return Ok(date.to_string());
    }
    let at = if value.bytes().all(|b| b.is_ascii_digit()) {
        value
            .parse()
            .ok()
            .and_then(DateTime::<Utc>::from_timestamp_millis)
    } else {
        DateTime::parse_from_rfc3339(value)
            .ok()
            .map(|at| at.to_utc())
    };
    let Some(at) = at else {
        return Err(format!("{value} is not a valid date"));
    };
    if at.time() != NaiveTime::MIN {
        return Err(format!(
            "{value} is at {} UTC, not midnight!",
            at.format("%H:%M:%S%.3f")
        ));
    }
    Ok(at.date_naive().to_string())
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::normalize_date;

    #[test]
    fn dates_must_be_utc_midnight() {
        assert_eq!(normalize_date("2015-05-01").unwrap(), "2015-05-01");
        assert_eq!(normalize_date("1430438400000").unwrap(), "2015-05-01");
        assert_eq!(
            normalize_date("2015-05-01T00:00:00Z").unwrap(),
            "2015-05-01"
        );
        assert_eq!(
            normalize_date("1635535135865").unwrap_err(),
            "1635535135865 is at 19:18:55.865 UTC, not midnight!"
        );
        assert!(normalize_date("2015-13-01").is_err());
        assert!(normalize_date("tomorrow").is_err());
    }
}
