//! One Brevo import process: the rows an import sent, held until its
//! processing delay is over on the sandbox clock, then handed out once to be
//! applied (`GET /v3/processes/{id}` then answers `completed`).

use std::time::Instant;

use serde::Deserialize;
use serde_json::{Map, Value};

/// One row of an import's `jsonBody`.
#[derive(Debug, Deserialize)]
pub(crate) struct ImportContact {
    #[serde(default)]
    pub(crate) email: Option<String>,
    #[serde(default)]
    pub(crate) attributes: Map<String, Value>,
}

/// What applying one import needs: its rows and its options.
#[derive(Debug)]
pub(crate) struct ImportRows {
    pub(crate) contacts: Vec<ImportContact>,
    pub(crate) list_ids: Vec<u64>,
    pub(crate) update_existing: bool,
}

/// One import waiting to be applied.
#[derive(Debug)]
pub(crate) struct Process {
    id: u64,
    ready_at: Instant,
    /// Taken when the import is applied, so that it is applied only once.
    pending: Option<ImportRows>,
}

impl Process {
    pub(crate) fn new(id: u64, ready_at: Instant, rows: ImportRows) -> Self {
        Process {
            id,
            ready_at,
            pending: Some(rows),
        }
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Whether the import has been applied (the process is `completed`).
    pub(crate) fn done(&self) -> bool {
        self.pending.is_none()
    }

    /// The rows to apply if the processing delay is over at `now`; each
    /// import hands them out once.
    pub(crate) fn take_due(&mut self, now: Instant) -> Option<ImportRows> {
        if self.ready_at <= now {
            self.pending.take()
        } else {
            None
        }
    }
}
