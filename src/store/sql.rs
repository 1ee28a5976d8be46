//! SQL text both backends share, and the pieces the per-backend SQL is built
//! from. Both dialects accept `$n` placeholders, double-quoted identifiers,
//! `CAST(… AS TEXT)` and `NULLS FIRST`, so most statements are written once.

use std::borrow::Cow;

use anyhow::bail;
use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use super::text::stored_text;
use super::{RowResult, RowUpdate, TableSpec};

pub(super) const QUEUED: &str = "Queued";
pub(super) const PROCESSING: &str = "Processing";
pub(super) const COMPLETE: &str = "Complete";
pub(super) const ERROR: &str = "Error";
pub(super) const SKIPPED: &str = "Skipped";

/// Quotes an identifier. Names are validated upstream; doubling quotes keeps
/// even an unvalidated name from escaping its quotes.
pub(super) fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// True for names made of ASCII letters, digits and `_`, not starting with a
/// digit: the only column names `insert_rows` accepts, because they also
/// appear inside JSON paths.
pub(super) fn is_plain_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// SQLite's text shape for a UTC instant (`datetime()` plus milliseconds).
/// Written field by field: chrono's `format` parses its pattern on every
/// call, and every claimed row's write-back formats its lease.
pub(super) fn sqlite_time(t: DateTime<Utc>) -> String {
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03}",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.timestamp_subsec_millis().min(999),
    )
}

/// PostgreSQL input text for a UTC instant (RFC 3339 with milliseconds).
pub(super) fn pg_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The predicates of the claim's arms: queued rows never tried, queued
/// rows due for a retry, and rows whose lease has expired. Each is a single
/// range of the claim index (status, next_retry_at, id), so each arm reads
/// only rows it may take. (One `IS NULL OR <= now` condition would make the
/// time a filter instead, and every claim would walk past all the rows
/// scheduled for later: 0.8 s per claim with 500k of them on PostgreSQL.)
///
/// With a `next_retry_at` shared with other mappings (`shares_due_with`), a
/// fifth arm takes rows this mapping has no schedule of its own for (queued,
/// no error: never failed nor handed back since its last success) whose
/// due time is in the future only because another mapping holds the row
/// (its lease). Without it, one CRM's sync waited on every batch of the
/// other's (95 s beside it instead of 4.8 s alone). The lease is then shared:
/// see [`claim_stamp`] and [`record_assignments_and_fence`].
///
/// `lease` is the claim's own lease (`None` where only due rows are
/// counted): the fifth arm skips a row whose live lease equals it to the
/// millisecond (two mappings of `run --all` claiming in the same
/// millisecond). Once claimed it would hold this claim's own lease, which
/// `ClaimedRow::from_claim` reads as another mapping's dead claim: this
/// mapping's write-back would then clear the lease and fence the other
/// mapping's write-back out, leaving its rows `Processing` (after a SIGTERM,
/// for good). The next claim, a millisecond later, shares the lease.
pub(super) fn claim_arms(spec: &TableSpec, now: &str, lease: Option<&str>) -> Vec<String> {
    let (status, due) = (quote(&spec.processing_status), quote(&spec.next_retry_at));
    let mut arms = vec![
        format!("{status} = '{QUEUED}' AND {due} IS NULL"),
        format!("{status} = '{QUEUED}' AND {due} <= {now}"),
        format!("{status} = '{PROCESSING}' AND {due} <= {now}"),
        // A `Processing` row with no lease: another mapping sharing the
        // `next_retry_at` column (the seed's table shares it between HubSpot and
        // Brevo) reclaimed it after its lease expired and then cleared the column,
        // or the seed's own schedulers left it so. No live run owns it.
        format!("{status} = '{PROCESSING}' AND {due} IS NULL"),
    ];
    if let Some(held) = held_by_another(spec, "") {
        let not_ours = lease.map_or(String::new(), |lease| format!(" AND {due} <> {lease}"));
        arms.push(format!(
            "{status} = '{QUEUED}' AND {error} IS NULL AND {due} > {now}{not_ours} AND {held}",
            error = quote(&spec.error)
        ));
    }
    arms
}

/// `(a = 'Processing' OR b = 'Processing' …)` over the mappings that share
/// `next_retry_at` with `spec`, their columns prefixed with `prefix`; `None`
/// when the column is `spec`'s own.
pub(super) fn held_by_another(spec: &TableSpec, prefix: &str) -> Option<String> {
    let held: Vec<String> = spec
        .shares_due_with()
        .into_iter()
        .map(|status| format!("{prefix}{} = '{PROCESSING}'", quote(status)))
        .collect();
    (!held.is_empty()).then(|| format!("({})", held.join(" OR ")))
}

/// What a claim writes into `next_retry_at` (`$1` now, `$2` the lease;
/// `prefix` names the target row, e.g. `_t.`): the claim's lease, except
/// that a live lease another mapping holds on the row (shared columns) is
/// kept and shared, since that mapping's write-back is fenced on it. The
/// claim returns the value: each row's lease, for its own fence.
pub(super) fn claim_stamp(spec: &TableSpec, prefix: &str) -> String {
    let due = format!("{prefix}{}", quote(&spec.next_retry_at));
    match held_by_another(spec, prefix) {
        Some(held) => format!("CASE WHEN {held} AND {due} > $1 THEN {due} ELSE $2 END"),
        None => "$2".to_string(),
    }
}

/// The number of rows a claim at `$1` could take: the claim's arms,
/// counted one by one (both dialects).
pub(super) fn count_due_sql(spec: &TableSpec) -> String {
    let table = quote(&spec.table);
    let counts: Vec<String> = claim_arms(spec, "$1", None)
        .iter()
        .map(|predicate| format!("(SELECT count(*) FROM {table} WHERE {predicate})"))
        .collect();
    format!("SELECT CAST({} AS BIGINT)", counts.join(" + "))
}

/// One row's write-back, as an element of the JSON array `record` binds.
/// A `None` keeps the column's current value; with `set_error: false`, the
/// `error` is written only where the column is NULL.
#[derive(Serialize)]
pub(super) struct WriteBack<'a> {
    id: &'a str,
    handle: Option<i64>,
    lease: String,
    status: &'static str,
    sync: Option<&'static str>,
    crm_id: Option<Cow<'a, str>>,
    set_error: bool,
    error: Option<Cow<'a, str>>,
    retry_count: Option<i64>,
    next_retry_at: Option<String>,
    /// Left out of the JSON when unset: most write-backs carry none.
    #[serde(skip_serializing_if = "Option::is_none")]
    fingerprint: Option<&'a str>,
    shares_lease: bool,
}

/// The fields of [`WriteBack`] in order, with the types PostgreSQL reads
/// them as; SQLite reads the same names with `->>`. See [`write_back_fields`].
pub(super) const WRITE_BACK_FIELDS: [(&str, &str); 12] = [
    ("id", "text"),
    ("handle", "bigint"),
    ("lease", "timestamptz"),
    ("status", "text"),
    ("sync", "text"),
    ("crm_id", "text"),
    ("set_error", "boolean"),
    ("error", "text"),
    ("retry_count", "bigint"),
    ("next_retry_at", "timestamptz"),
    ("fingerprint", "text"),
    ("shares_lease", "boolean"),
];

/// The fields a record statement reads for `spec`: the fingerprint only
/// when the mapping keeps one (each field read costs time on every row).
pub(super) fn write_back_fields(
    spec: &TableSpec,
) -> impl Iterator<Item = &'static (&'static str, &'static str)> {
    WRITE_BACK_FIELDS
        .iter()
        .filter(|(name, _)| spec.fingerprint.is_some() || *name != "fingerprint")
}

impl<'a> WriteBack<'a> {
    /// `time` renders instants for the backend at hand.
    pub(super) fn new(result: &'a RowResult, time: fn(DateTime<Utc>) -> String) -> Self {
        let at = |t: DateTime<Utc>| time(super::stored_time(t));
        let base = WriteBack {
            id: &result.id,
            handle: result.handle,
            lease: at(result.lease),
            status: QUEUED,
            sync: None,
            crm_id: None,
            set_error: false,
            error: None,
            retry_count: None,
            next_retry_at: None,
            fingerprint: None,
            shares_lease: result.shares_lease,
        };
        match &result.update {
            RowUpdate::Complete {
                crm_id,
                fingerprint,
            } => WriteBack {
                status: COMPLETE,
                sync: Some(COMPLETE),
                crm_id: crm_id.as_deref().map(stored_text),
                set_error: true,
                retry_count: Some(0),
                fingerprint: fingerprint.as_deref(),
                ..base
            },
            RowUpdate::Skipped { reason, crm_id } => WriteBack {
                status: COMPLETE,
                sync: Some(SKIPPED),
                crm_id: crm_id.as_deref().map(stored_text),
                set_error: true,
                error: Some(stored_text(reason)),
                retry_count: Some(0),
                fingerprint: Some(""),
                ..base
            },
            RowUpdate::RetryLater {
                error,
                retry_count,
                next_retry_at,
            } => WriteBack {
                set_error: true,
                error: Some(stored_text(error)),
                retry_count: Some(*retry_count),
                next_retry_at: Some(at(*next_retry_at)),
                ..base
            },
            // Handed back for a time (a rate limit, a shutdown): noted in an
            // empty error column, which also tells a claim over shared retry
            // columns that the due time is this mapping's own (`claim_arms`).
            RowUpdate::Release {
                next_retry_at: Some(until),
            } => WriteBack {
                // Only where no earlier error is kept (see the SET list).
                set_error: false,
                error: Some(Cow::Owned(format!(
                    "not sent yet: handed back until {}",
                    until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ))),
                next_retry_at: Some(at(*until)),
                ..base
            },
            RowUpdate::Release {
                next_retry_at: None,
            } => base,
            RowUpdate::Failed { error, retry_count } => WriteBack {
                status: ERROR,
                sync: Some(ERROR),
                set_error: true,
                error: Some(stored_text(error)),
                retry_count: Some(*retry_count),
                ..base
            },
        }
    }
}

/// The SET list and fence of `record`, given how the backend names the
/// target row (`_t`) and the write-back row (`v`). `fence_prefix` is put
/// before each target column the fence compares (see `sqlite::record_sql`).
pub(super) fn record_assignments_and_fence(
    spec: &TableSpec,
    fence_prefix: &str,
) -> (String, String) {
    let t = |name: &str| format!("_t.{}", quote(name));
    let set = format!(
        "{status} = v.status, \
         {sync} = COALESCE(v.sync, {t_sync}), \
         {crm} = COALESCE(v.crm_id, {t_crm}), \
         {error} = CASE WHEN v.set_error THEN v.error ELSE COALESCE({t_error}, v.error) END, \
         {retries} = COALESCE(v.retry_count, {t_retries}), \
         {due} = {next}",
        status = quote(&spec.processing_status),
        sync = quote(&spec.sync_status),
        t_sync = t(&spec.sync_status),
        crm = quote(&spec.crm_id),
        t_crm = t(&spec.crm_id),
        error = quote(&spec.error),
        t_error = t(&spec.error),
        retries = quote(&spec.retry_count),
        t_retries = t(&spec.retry_count),
        due = quote(&spec.next_retry_at),
        next = written_due(spec),
    );
    // Written only by a result that carries one: a `Complete` the CRM
    // confirmed (or a `Skipped`, which clears it). Every other outcome keeps
    // the last confirmed value.
    let set = match &spec.fingerprint {
        Some(column) => format!(
            "{set}, {fp} = COALESCE(v.fingerprint, {t_fp})",
            fp = quote(column),
            t_fp = t(column)
        ),
        None => set,
    };
    let fence = format!(
        "{fence_prefix}{} = '{PROCESSING}' AND {fence_prefix}{} = v.lease",
        t(&spec.processing_status),
        t(&spec.next_retry_at)
    );
    (set, fence)
}

/// A row set back to `Queued` while this result's claim had it in flight:
/// the application (or a change trigger) queued a newer version, and left
/// the lease in `next_retry_at` (`_t` is the row, `v` the write-back). The
/// fenced record does not touch it, so the newer version is not marked
/// `Complete` with the older one's fingerprint; clearing the lease makes it
/// due now, after the older version's request has ended, never alongside it.
pub(super) fn requeued_in_flight(spec: &TableSpec) -> String {
    format!(
        "_t.{status} = '{QUEUED}' AND _t.{due} = v.lease",
        status = quote(&spec.processing_status),
        due = quote(&spec.next_retry_at),
    )
}

/// What a write-back puts in `next_retry_at`: the row's new due time, except
/// while another mapping sharing the column holds the row under this very
/// lease (one of the two adopted the other's, see [`claim_stamp`]): the
/// lease then stays, or that mapping's write-back would be fenced out. This
/// mapping's retry is then due when that lease ends. A row whose claim found
/// another mapping's dead claim (`shares_lease` false: that mapping crashed)
/// gets its due time, so the dead claim is reclaimable at once.
fn written_due(spec: &TableSpec) -> String {
    let due = format!("_t.{}", quote(&spec.next_retry_at));
    match held_by_another(spec, "_t.") {
        Some(held) => format!(
            "CASE WHEN v.shares_lease AND {held} AND {due} = v.lease \
             THEN {due} ELSE v.next_retry_at END"
        ),
        None => "v.next_retry_at".to_string(),
    }
}

pub(super) fn status_counts(spec: &TableSpec) -> String {
    let status = quote(&spec.processing_status);
    format!(
        "SELECT CAST({status} AS TEXT), COUNT(*) FROM {table} \
         GROUP BY {status} ORDER BY {status} NULLS FIRST",
        table = quote(&spec.table)
    )
}

pub(super) fn latest_errors(spec: &TableSpec) -> String {
    let (status, error) = (quote(&spec.processing_status), quote(&spec.error));
    format!(
        "SELECT CAST({key} AS TEXT), COALESCE({error}, ''), CAST(COALESCE({retries}, 0) AS BIGINT) \
         FROM {table} \
         WHERE {status} = '{ERROR}' OR ({status} = '{QUEUED}' AND {error} IS NOT NULL) \
         ORDER BY {id} DESC LIMIT $1",
        key = quote(&spec.key_column),
        retries = quote(&spec.retry_count),
        table = quote(&spec.table),
        id = quote(&spec.id_column),
    )
}

pub(super) fn requeue_errors(spec: &TableSpec) -> String {
    let status = quote(&spec.processing_status);
    requeue(spec, &format!("{status} = '{ERROR}'"))
}

pub(super) fn queue_all(spec: &TableSpec) -> String {
    let status = quote(&spec.processing_status);
    requeue(
        spec,
        &format!("{status} IS NULL OR {status} <> '{PROCESSING}'"),
    )
}

/// Queues the rows `condition` picks, due now, with a fresh retry budget.
fn requeue(spec: &TableSpec, condition: &str) -> String {
    format!(
        "UPDATE {table} SET {status} = '{QUEUED}', {retries} = 0, {due} = NULL WHERE {condition}",
        table = quote(&spec.table),
        status = quote(&spec.processing_status),
        retries = quote(&spec.retry_count),
        due = quote(&spec.next_retry_at),
    )
}

/// Rows one INSERT statement of `insert_rows` writes, all with these columns.
pub(super) struct InsertBatch<'a> {
    pub(super) columns: Vec<&'a str>,
    pub(super) rows: &'a [Map<String, Value>],
}

/// Splits rows for `insert_rows` into statements: consecutive rows with the
/// same columns, at most `chunk` at a time.
pub(super) fn insert_batches(
    rows: &[Map<String, Value>],
    chunk: usize,
) -> anyhow::Result<Vec<InsertBatch<'_>>> {
    let same_columns = |a: &Map<String, Value>, b: &Map<String, Value>| {
        a.len() == b.len() && a.keys().all(|k| b.contains_key(k))
    };
    let mut batches = Vec::new();
    for group in rows.chunk_by(same_columns) {
        let keys: Vec<&str> = group[0].keys().map(String::as_str).collect();
        if let Some(bad) = keys.iter().find(|k| !is_plain_identifier(k)) {
            bail!("column name {bad:?} is not a plain identifier");
        }
        for rows in group.chunks(chunk) {
            let columns = keys.clone();
            batches.push(InsertBatch { columns, rows });
        }
    }
    Ok(batches)
}

/// `"a", "b", …`
pub(super) fn column_list(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| quote(n)).collect();
    quoted.join(", ")
}

/// The claim index's name: unique per mapping's status column, and within
/// PostgreSQL's 63-byte limit (a long name is shortened with a hash suffix,
/// so two long names do not collide).
pub(super) fn claim_index_name(spec: &TableSpec) -> String {
    let name = format!("{}_{}_claim", spec.table, spec.processing_status);
    if name.len() <= 63 {
        return name;
    }
    let mut cut = 54;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}_{:08x}", &name[..cut], fnv1a(name.as_bytes()))
}

/// FNV-1a, 32 bits: a hash that is the same in every process and release,
/// unlike `std`'s hasher, for names shared across processes.
pub(super) fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |hash, &b| {
        (hash ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_index_names_are_shortened_to_a_unique_63_bytes() {
        let spec = |status: &str| TableSpec {
            table: "t".repeat(40),
            id_column: "id".into(),
            key_column: "email".into(),
            processing_status: status.into(),
            sync_status: "s".into(),
            crm_id: "c".into(),
            error: "e".into(),
            retry_count: "r".into(),
            next_retry_at: "n".into(),
            fingerprint: None,
            table_mates: Vec::new(),
        };
        let a = claim_index_name(&spec("a_very_long_processing_status_one"));
        let b = claim_index_name(&spec("a_very_long_processing_status_two"));
        assert_eq!(a.len(), 63);
        assert_ne!(a, b);
        assert_eq!(
            claim_index_name(&spec("ps")),
            format!("{}_ps_claim", "t".repeat(40))
        );
    }

    #[test]
    fn sqlite_times_sort_as_text_in_time_order() {
        let t = DateTime::parse_from_rfc3339("2025-11-19T02:13:46.5Z").unwrap();
        assert_eq!(sqlite_time(t.to_utc()), "2025-11-19 02:13:46.500");
        let early = DateTime::parse_from_rfc3339("0999-01-02T03:04:05.006789Z").unwrap();
        assert_eq!(sqlite_time(early.to_utc()), "0999-01-02 03:04:05.006");
        for secs in [0, 1_700_000_000, 4_102_444_799] {
            let t = DateTime::from_timestamp(secs, 123_456_789).unwrap();
            assert_eq!(
                sqlite_time(t),
                t.format("%Y-%m-%d %H:%M:%S%.3f").to_string()
            );
        }
    }
}
