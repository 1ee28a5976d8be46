//! Reading a snapshot source: which columns it has, and one statement that
//! streams its rows ordered by source key (as bytes), each as `(key, row JSON)`.

use anyhow::{Context, bail};
use sqlx::{AssertSqlSafe, Column as _, Executor, SqlSafeStr, Statement as _};

use crate::plan::SnapshotSource;
use crate::store::{Backend, RowColumns, Store};

/// `json_build_object` takes at most 100 arguments: 50 columns.
const MAX_BUILT_COLUMNS: usize = 50;

/// Quotes an identifier (names are validated upstream; doubling quotes keeps
/// even an unvalidated one inside its quotes).
pub(crate) fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The source as a FROM item.
fn from_item(source: &SnapshotSource) -> String {
    match source {
        SnapshotSource::Table(table) => format!("{} AS _engine_src", quote(table)),
        SnapshotSource::Query(query) => format!("({query}) AS _engine_src"),
    }
}

/// The source's column names, in order. Fails naming the source when it does
/// not exist or the query does not run.
pub(crate) async fn columns(store: &Store, source: &SnapshotSource) -> anyhow::Result<Vec<String>> {
    let sql = format!("SELECT * FROM {}", from_item(source));
    let names = match store {
        Store::Sqlite(pool) => pool
            .prepare(AssertSqlSafe(sql).into_sql_str())
            .await
            .map(|s| s.columns().iter().map(|c| c.name().to_string()).collect()),
        Store::Postgres(pool) => pool
            .prepare(AssertSqlSafe(sql).into_sql_str())
            .await
            .map(|s| s.columns().iter().map(|c| c.name().to_string()).collect()),
    };
    names.with_context(|| match source {
        SnapshotSource::Table(table) => format!("cannot read table or view `{table}`"),
        SnapshotSource::Query(_) => "cannot run `source.query`".to_string(),
    })
}

/// The columns a snapshot reads, in the source's order: those the mapping's
/// templates read plus the id and the key (every column when a template reads
/// the whole row). Fails when the id or key column is missing.
pub(crate) fn selected_columns(
    available: &[String],
    wanted: &RowColumns,
    id_column: &str,
    key_column: &str,
) -> anyhow::Result<Vec<String>> {
    for (what, name) in [("source.id", id_column), ("source.key", key_column)] {
        if !available.iter().any(|c| c == name) {
            bail!(
                "the snapshot source has no column `{name}` ({what}); its columns: {}",
                available.join(", ")
            );
        }
    }
    Ok(available
        .iter()
        .filter(|c| match wanted {
            RowColumns::All => true,
            RowColumns::Only(names) => {
                *c == id_column || *c == key_column || names.iter().any(|n| n == *c)
            }
        })
        .cloned()
        .collect())
}

/// `SELECT <key as text>, <row JSON> FROM <source> ORDER BY <key as text>`,
/// with the key ordered as bytes on both backends (see `state`).
pub(crate) fn select_sql(
    backend: Backend,
    source: &SnapshotSource,
    id_column: &str,
    columns: &[String],
) -> String {
    let key = format!("CAST(_engine_src.{} AS TEXT)", quote(id_column));
    let pairs = |columns: &[String]| -> String {
        columns
            .iter()
            .map(|c| format!("'{}', _engine_src.{}", c.replace('\'', "''"), quote(c)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let from = from_item(source);
    match backend {
        Backend::Sqlite => format!(
            "SELECT {key}, json_object({}) FROM {from} ORDER BY {key}",
            pairs(columns)
        ),
        Backend::Postgres => {
            let row = if columns.len() > MAX_BUILT_COLUMNS {
                "row_to_json(_engine_src)".to_string()
            } else {
                format!("json_build_object({})", pairs(columns))
            };
            format!("SELECT {key}, {row} FROM {from} ORDER BY {key} COLLATE \"C\"")
        }
    }
}
