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

/// Whether a table's id column, ordered as it is, is already in the byte order
/// of its text (so its index can stream the rows without a sort): a uuid on
/// PostgreSQL (its bytes in lower-case hex), a text column on SQLite (BINARY
/// collation). Otherwise the rows are sorted by the id cast to text. Either
/// way the diff checks the order it receives.
pub(crate) async fn id_sorts_as_text(
    store: &Store,
    source: &SnapshotSource,
    id_column: &str,
) -> anyhow::Result<bool> {
    let SnapshotSource::Table(table) = source else {
        return Ok(false);
    };
    let columns = store.columns(table).await?.unwrap_or_default();
    let Some(id) = columns.iter().find(|c| c.name == id_column) else {
        return Ok(false);
    };
    let declared = id.sql_type.to_ascii_lowercase();
    Ok(match store.backend() {
        Backend::Postgres => declared == "uuid",
        // SQLite's type affinity rules: a declared type holding CHAR, CLOB or TEXT.
        Backend::Sqlite => ["char", "clob", "text"]
            .iter()
            .any(|t| declared.contains(t)),
    })
}

/// `SELECT <key as text>, <row JSON> FROM <source> ORDER BY <key>`, with the
/// key ordered as the bytes of its text on both backends (see `state`):
/// by the column itself when `native_order`, else by its text.
pub(crate) fn select_sql(
    backend: Backend,
    source: &SnapshotSource,
    id_column: &str,
    columns: &[String],
    native_order: bool,
) -> String {
    let key = format!("CAST(_engine_src.{} AS TEXT)", quote(id_column));
    let order = if native_order {
        let collate = if backend == Backend::Sqlite {
            " COLLATE BINARY"
        } else {
            ""
        };
        format!("_engine_src.{}{collate}", quote(id_column))
    } else if backend == Backend::Postgres {
        format!("{key} COLLATE \"C\"")
    } else {
        key.clone()
    };
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
            "SELECT {key}, json_object({}) FROM {from} ORDER BY {order}",
            pairs(columns)
        ),
        Backend::Postgres => {
            let row = if columns.len() > MAX_BUILT_COLUMNS {
                "row_to_json(_engine_src)".to_string()
            } else {
                format!("json_build_object({})", pairs(columns))
            };
            format!("SELECT {key}, {row} FROM {from} ORDER BY {order}")
        }
    }
}
