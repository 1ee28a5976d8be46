//! The helpers every template may call, and the escape function of path
//! templates.
//!
//! Every helper is null-safe: an argument that is present but `null` (a NULL
//! column) yields `""`, so the leaf's `OnEmpty` rule decides what is sent. An
//! argument that is *missing* (not a key of the render context at all) is an
//! error in strict mode, like a bare `{{missing}}`.
//!
//! Helpers return their value through `HelperDef::call_inner`, so handlebars
//! runs it through the registry's escape function: no escaping for field
//! templates, percent-encoding for path templates.

use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, NaiveTime, SecondsFormat, Utc};
use handlebars::{
    Context, Handlebars, Helper, HelperDef, RenderContext, RenderErrorReason, ScopedJson,
};
use md5::Md5;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::hex;

/// Reserved root key of the render context: when present, an RFC 3339
/// timestamp used as "now" by `today` and `today_epoch_ms` (tests pin it).
pub const NOW_KEY: &str = "__now";

/// Helpers this module adds, in the order `engine check` should list them.
pub const ENGINE_HELPERS: &[&str] = &[
    "lower",
    "upper",
    "trim",
    "first_name",
    "last_name",
    "today",
    "today_epoch_ms",
    "e164",
    "md5",
    "sha256",
    "urlencode",
    "default",
    "coalesce",
    "json",
    "date_ymd",
    "epoch_ms",
];

/// Helpers handlebars itself registers; templates may call them too.
pub const BUILTIN_HELPERS: &[&str] = &[
    "if", "unless", "each", "with", "lookup", "raw", "log", "eq", "ne", "gt", "gte", "lt", "lte",
    "and", "or", "not", "len",
];

/// Every helper name a template may call: [`ENGINE_HELPERS`] then
/// [`BUILTIN_HELPERS`].
pub fn all_helpers() -> impl Iterator<Item = &'static str> {
    ENGINE_HELPERS.iter().chain(BUILTIN_HELPERS).copied()
}

/// Whether a template may call `name`.
#[must_use]
pub fn is_helper(name: &str) -> bool {
    all_helpers().any(|h| h == name)
}

/// RFC 3986 unreserved characters stay; everything else is percent-encoded.
/// Used by `urlencode` and by path templates, so `/`, `@`, `+`, `?`, `#` and
/// spaces in data can never change the shape of a URL.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes `s` as one URL path segment or query component.
pub(crate) fn percent_encode(s: &str) -> String {
    utf8_percent_encode(s, COMPONENT).to_string()
}

/// The signature of one helper: its evaluated arguments in, its value or a
/// message out.
pub(crate) type HelperFn = fn(&Call<'_>) -> Result<Value, String>;

/// A helper's arguments, already checked for arity and strict-mode presence.
pub(crate) struct Call<'a> {
    args: Vec<&'a Value>,
    root: &'a Value,
}

impl<'a> Call<'a> {
    pub(crate) fn new(args: Vec<&'a Value>, root: &'a Value) -> Self {
        Call { args, root }
    }

    fn arg(&self, i: usize) -> &Value {
        self.args.get(i).copied().unwrap_or(&Value::Null)
    }

    /// The clock: the context's `__now` when present, else the wall clock.
    fn now(&self) -> Result<DateTime<Utc>, String> {
        match self.root.get(NOW_KEY) {
            None | Some(Value::Null) => Ok(Utc::now()),
            Some(Value::String(s)) => DateTime::parse_from_rfc3339(s)
                .map(|d| d.with_timezone(&Utc))
                .map_err(|e| format!("`{NOW_KEY}` is not an RFC 3339 timestamp ({s:?}): {e}")),
            Some(other) => Err(format!(
                "`{NOW_KEY}` must be an RFC 3339 string, got {other}"
            )),
        }
    }
}

/// How many arguments each helper takes: `(name, min, max)`, `None` = any.
pub(crate) const ARITY: &[(&str, usize, Option<usize>)] = &[
    ("lower", 1, Some(1)),
    ("upper", 1, Some(1)),
    ("trim", 1, Some(1)),
    ("first_name", 1, Some(1)),
    ("last_name", 1, Some(1)),
    ("today", 0, Some(0)),
    ("today_epoch_ms", 0, Some(0)),
    ("e164", 1, Some(2)),
    ("md5", 1, Some(1)),
    ("sha256", 1, Some(1)),
    ("urlencode", 1, Some(1)),
    ("default", 2, Some(2)),
    ("coalesce", 1, None),
    ("json", 1, Some(1)),
    ("date_ymd", 1, Some(1)),
    ("epoch_ms", 1, Some(1)),
];

/// `(min, max)` arguments of an engine helper, `None` for other names.
pub(crate) fn arity(name: &str) -> Option<(usize, Option<usize>)> {
    ARITY
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|&(_, min, max)| (min, max))
}

/// Describes an arity as words, e.g. "1 argument", "1 or 2 arguments".
pub(crate) fn describe_arity(min: usize, max: Option<usize>) -> String {
    let plural = |n: usize| if n == 1 { "argument" } else { "arguments" };
    match max {
        Some(max) if max == min => format!("{min} {}", plural(min)),
        Some(max) if max == min + 1 => format!("{min} or {max} {}", plural(max)),
        Some(max) => format!("{min} to {max} arguments"),
        None => format!("at least {min} {}", plural(min)),
    }
}

struct EngineHelper {
    name: &'static str,
    f: HelperFn,
}

impl HelperDef for EngineHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        r: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, handlebars::RenderError> {
        if let Some((min, max)) = arity(self.name) {
            let n = h.params().len();
            if n < min || max.is_some_and(|max| n > max) {
                return Err(RenderErrorReason::Other(format!(
                    "helper `{}` takes {}, got {n}",
                    self.name,
                    describe_arity(min, max)
                ))
                .into());
            }
        }
        let mut args = Vec::with_capacity(h.params().len());
        for p in h.params() {
            if r.strict_mode() && p.is_value_missing() {
                return Err(handlebars::RenderError::strict_error(p.relative_path()));
            }
            args.push(p.value());
        }
        let call = Call {
            args,
            root: ctx.data(),
        };
        (self.f)(&call)
            .map(ScopedJson::Derived)
            .map_err(|m| RenderErrorReason::Other(helper_failed(self.name, &m)).into())
    }
}

/// Every engine helper's function, in the order of [`ENGINE_HELPERS`].
const FUNCTIONS: &[(&str, HelperFn)] = &[
    ("lower", |c| map_text(c.arg(0), str::to_lowercase)),
    ("upper", |c| map_text(c.arg(0), str::to_uppercase)),
    ("trim", |c| map_text(c.arg(0), |s| s.trim().to_owned())),
    ("first_name", |c| {
        map_text(c.arg(0), |s| split_name(s).0.to_owned())
    }),
    ("last_name", |c| {
        map_text(c.arg(0), |s| split_name(s).1.to_owned())
    }),
    ("today", |c| Ok(Value::String(ymd(c.now()?.date_naive())))),
    ("today_epoch_ms", |c| {
        Ok(Value::String(
            midnight_ms(c.now()?.date_naive()).to_string(),
        ))
    }),
    ("e164", |c| {
        let default_cc = text(c.arg(1))?;
        match text(c.arg(0))? {
            None => Ok(Value::String(String::new())),
            Some(phone) => e164(&phone, default_cc.as_deref()).map(Value::String),
        }
    }),
    ("md5", |c| {
        map_nonempty_text(c.arg(0), |s| {
            hex::encode(Md5::digest(s.as_bytes()).as_slice())
        })
    }),
    ("sha256", |c| {
        map_nonempty_text(c.arg(0), |s| {
            hex::encode(Sha256::digest(s.as_bytes()).as_slice())
        })
    }),
    ("urlencode", |c| map_text(c.arg(0), percent_encode)),
    ("default", |c| {
        let v = c.arg(0);
        Ok(if is_empty(v) { c.arg(1) } else { v }.clone())
    }),
    ("coalesce", |c| {
        Ok(c.args
            .iter()
            .find(|v| !is_empty(v))
            .map_or_else(|| Value::String(String::new()), |v| (*v).clone()))
    }),
    ("json", |c| match c.arg(0) {
        Value::Null => Ok(Value::String(String::new())),
        v => serde_json::to_string(v)
            .map(Value::String)
            .map_err(|e| e.to_string()),
    }),
    ("date_ymd", |c| {
        timestamp_arg(c.arg(0), |t| ymd(t.date_naive()))
    }),
    ("epoch_ms", |c| {
        timestamp_arg(c.arg(0), |t| t.timestamp_millis().to_string())
    }),
];

/// `YYYY-MM-DD`, field by field: chrono's `format` parses its pattern on
/// every call, and `{{today}}` runs once per row.
fn ymd(date: NaiveDate) -> String {
    format!("{:04}-{:02}-{:02}", date.year(), date.month(), date.day())
}

/// The function of engine helper `name` (not handlebars' own helpers).
pub(crate) fn function(name: &str) -> Option<(&'static str, HelperFn)> {
    FUNCTIONS.iter().find(|(n, _)| *n == name).copied()
}

/// The message of a helper that failed, as templates report it.
pub(crate) fn helper_failed(name: &str, message: &str) -> String {
    format!("helper `{name}`: {message}")
}

/// Registers every engine helper on `hb`.
pub(crate) fn register(hb: &mut Handlebars<'static>) {
    debug_assert!(
        FUNCTIONS
            .iter()
            .map(|(n, _)| *n)
            .eq(ENGINE_HELPERS.iter().copied())
    );
    for &(name, f) in FUNCTIONS {
        hb.register_helper(name, Box::new(EngineHelper { name, f }));
    }
}

/// `null` and `""` are empty; everything else (including `0`, `false`,
/// `[]` and `{}`) is a value.
pub(crate) fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

/// The text of a scalar: `None` for `null`; numbers and booleans as written;
/// arrays and objects are an error (a template bug, not a data problem).
fn text(v: &Value) -> Result<Option<String>, String> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        Value::Number(n) => Ok(Some(n.to_string())),
        Value::Bool(b) => Ok(Some(b.to_string())),
        Value::Array(_) => Err("expected text, got an array".to_owned()),
        Value::Object(_) => Err("expected text, got an object".to_owned()),
    }
}

fn map_text(v: &Value, f: impl FnOnce(&str) -> String) -> Result<Value, String> {
    Ok(Value::String(text(v)?.map(|s| f(&s)).unwrap_or_default()))
}

/// Like [`map_text`], but `""` also yields `""`: the hash of an empty email
/// looks valid and is always wrong.
fn map_nonempty_text(v: &Value, f: impl FnOnce(&str) -> String) -> Result<Value, String> {
    Ok(Value::String(
        text(v)?
            .filter(|s| !s.is_empty())
            .map(|s| f(&s))
            .unwrap_or_default(),
    ))
}

/// Splits a full name into its first whitespace-separated word and the rest.
/// `"Scheduler Test 1"` → `("Scheduler", "Test 1")`; `"Cher"` → `("Cher", "")`.
pub(crate) fn split_name(name: &str) -> (&str, &str) {
    let name = name.trim();
    match name.split_once(char::is_whitespace) {
        Some((first, rest)) => (first, rest.trim_start()),
        None => (name, ""),
    }
}

/// Country codes whose national numbers keep their leading `0`, so it is not
/// a trunk prefix to drop (Italy, Côte d'Ivoire).
const KEEPS_LEADING_ZERO: &[&str] = &["39", "225"];

/// Normalises a phone number to E.164 as far as can be done without a
/// numbering-plan database.
///
/// - Spaces, dashes, dots and parentheses are dropped; a leading `+` is kept;
///   a leading `00` (international call prefix) becomes `+`.
///   `"+1-555-9001"` → `"+15559001"`, `"0044 20 7946 0000"` → `"+442079460000"`.
/// - A number with neither gets `+<default_country_code>` when one is given,
///   dropping one national trunk-prefix `0` (`"020 7946 0000"`, `44` →
///   `"+442079460000"`), except for country codes whose numbers start with
///   `0` (39, 225).
/// - With no country code and no default, the digits are returned without a
///   `+`: we don't invent a country; the CRM validates or rejects it.
/// - Anything else (letters, extensions, a `+` in the middle) is returned
///   trimmed but otherwise unchanged: we don't guess, the CRM decides.
pub(crate) fn e164(phone: &str, default_country_code: Option<&str>) -> Result<String, String> {
    let trimmed = phone.trim();
    let compact: String = trimmed
        .chars()
        .filter(|c| !(c.is_whitespace() || matches!(c, '-' | '.' | '(' | ')')))
        .collect();
    let (plus, digits) = match compact.strip_prefix('+') {
        Some(rest) => (true, rest),
        None => (false, compact.as_str()),
    };
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return Ok(trimmed.to_owned());
    }
    if digits.is_empty() {
        return Ok(String::new());
    }
    if plus {
        return Ok(format!("+{digits}"));
    }
    if let Some(international) = digits.strip_prefix("00") {
        return Ok(format!("+{international}"));
    }
    let Some(cc) = default_country_code
        .map(str::trim)
        .filter(|s| !s.is_empty())
    else {
        return Ok(digits.to_owned());
    };
    let cc = cc.strip_prefix('+').unwrap_or(cc);
    if cc.is_empty()
        || cc.len() > 3
        || !cc.chars().all(|c| c.is_ascii_digit())
        || cc.starts_with('0')
    {
        return Err(format!(
            "default country code {cc:?} is not a calling code (1 to 3 digits, like 1 or 44)"
        ));
    }
    let national = if KEEPS_LEADING_ZERO.contains(&cc) {
        digits
    } else {
        digits.strip_prefix('0').unwrap_or(digits)
    };
    Ok(format!("+{cc}{national}"))
}

fn midnight_ms(date: NaiveDate) -> i64 {
    date.and_time(NaiveTime::MIN).and_utc().timestamp_millis()
}

fn timestamp_arg(v: &Value, f: impl FnOnce(DateTime<Utc>) -> String) -> Result<Value, String> {
    match v {
        Value::Null => Ok(Value::String(String::new())),
        Value::String(s) if s.trim().is_empty() => Ok(Value::String(String::new())),
        Value::String(s) => parse_timestamp(s).map(|t| Value::String(f(t))),
        other => Err(format!(
            "expected a timestamp or date as text (like \"2025-01-31T10:00:00Z\"), got {other}"
        )),
    }
}

/// Parses the timestamp shapes SQL drivers hand us, to UTC:
/// RFC 3339 (`2025-01-31T10:00:00+01:00`, `…Z`), `PostgreSQL`'s text form
/// (`2025-01-31 10:00:00.123+00`), a naive `YYYY-MM-DD HH:MM[:SS[.fff]]`
/// (taken as UTC, as `SQLite`'s `CURRENT_TIMESTAMP` is) and a bare date
/// `YYYY-MM-DD` (UTC midnight).
pub(crate) fn parse_timestamp(s: &str) -> Result<DateTime<Utc>, String> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let t_form = s.replacen(' ', "T", 1);
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M%#z"] {
        if let Ok(t) = DateTime::parse_from_str(&t_form, fmt) {
            return Ok(t.with_timezone(&Utc));
        }
    }
    if let Some(naive) = t_form.strip_suffix('Z').or(Some(&t_form)).and_then(|n| {
        ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M"]
            .iter()
            .find_map(|fmt| NaiveDateTime::parse_from_str(n, fmt).ok())
    }) {
        return Ok(naive.and_utc());
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_time(NaiveTime::MIN).and_utc());
    }
    Err(format!(
        "{s:?} is not a timestamp or date (expected RFC 3339, \"YYYY-MM-DD HH:MM:SS\" or \"YYYY-MM-DD\")"
    ))
}

/// Formats a UTC instant the way `__now` expects it (for callers building a
/// render context).
#[must_use]
pub fn now_rfc3339(now: DateTime<Utc>) -> String {
    now.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_helper_lists_agree_with_the_arity_table() {
        let names: Vec<&str> = ARITY.iter().map(|(n, _, _)| *n).collect();
        assert_eq!(names, ENGINE_HELPERS);
        // No engine helper shadows one of handlebars' own.
        let all: std::collections::HashSet<&str> = all_helpers().collect();
        assert_eq!(all.len(), ENGINE_HELPERS.len() + BUILTIN_HELPERS.len());
        assert!(is_helper("lookup") && is_helper("epoch_ms") && !is_helper("lowercase"));
    }

    #[test]
    fn names_split_into_first_word_and_the_rest() {
        assert_eq!(split_name("Scheduler Test 1"), ("Scheduler", "Test 1"));
        assert_eq!(split_name("  Ada   Lovelace  "), ("Ada", "Lovelace"));
        assert_eq!(split_name("Cher"), ("Cher", ""));
        assert_eq!(split_name(""), ("", ""));
        assert_eq!(split_name("Jean\tPaul  Sartre"), ("Jean", "Paul  Sartre"));
    }

    #[test]
    fn phone_numbers_normalise_to_e164_without_inventing_a_country() {
        let cases: &[(&str, Option<&str>, &str)] = &[
            ("+1-555-9001", None, "+15559001"),
            ("+1 (555) 900.1234", None, "+15559001234"),
            ("(+44) 20 7946 0000", None, "+442079460000"),
            ("0044 20 7946 0000", None, "+442079460000"),
            ("555-9001", None, "5559001"),
            ("555-9001", Some("1"), "+15559001"),
            ("020 7946 0000", Some("44"), "+442079460000"),
            ("020 7946 0000", Some("+44"), "+442079460000"),
            ("06 1234 5678", Some("39"), "+390612345678"),
            ("+1 555 CALL-NOW", None, "+1 555 CALL-NOW"),
            ("555-9001 x12", Some("1"), "555-9001 x12"),
            ("  ", None, ""),
            ("()", Some("1"), ""),
        ];
        for &(input, cc, want) in cases {
            assert_eq!(
                e164(input, cc).as_deref(),
                Ok(want),
                "e164({input:?}, {cc:?})"
            );
        }
        assert!(e164("555", Some("abcd")).is_err());
        assert!(e164("555", Some("0044")).is_err());
    }

    #[test]
    fn timestamps_parse_in_the_shapes_sql_drivers_produce() {
        let cases = [
            ("2025-01-31T10:00:00Z", "2025-01-31T10:00:00Z"),
            ("2025-01-31T23:30:00-02:00", "2025-02-01T01:30:00Z"),
            ("2025-01-31 10:00:00", "2025-01-31T10:00:00Z"),
            ("2025-01-31 10:00:00.250", "2025-01-31T10:00:00.250Z"),
            ("2025-01-31 10:00:00+00", "2025-01-31T10:00:00Z"),
            ("2025-01-31 10:00:00.5+05:30", "2025-01-31T04:30:00.500Z"),
            ("2025-01-31 10:00", "2025-01-31T10:00:00Z"),
            ("2025-01-31", "2025-01-31T00:00:00Z"),
        ];
        for (input, want) in cases {
            let got =
                parse_timestamp(input).map(|t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true));
            assert_eq!(got.as_deref(), Ok(want), "parse_timestamp({input:?})");
        }
        assert!(parse_timestamp("31/01/2025").is_err());
        assert!(parse_timestamp("yesterday").is_err());
    }

    #[test]
    fn midnight_is_utc() {
        let d = NaiveDate::from_ymd_opt(2025, 1, 31).unwrap();
        assert_eq!(midnight_ms(d), 1_738_281_600_000);
    }
}
