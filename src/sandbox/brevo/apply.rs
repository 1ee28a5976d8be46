//! Applying Brevo imports whose processing delay is over. Rows Brevo would
//! not import (an invalid email, a value an attribute refuses, an identifier
//! another contact owns) are skipped silently: the process still ends
//! `completed`, and nothing says which rows were left out. Attributes the
//! account lacks are ignored, as the spec says.

use std::time::Instant;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::super::common::is_valid_email;
use super::process::{ImportContact, ImportRows};
use super::store::{Changes, Store};
use super::validate::{DEFAULT_ATTRIBUTES, check_attributes};

/// Applies every import whose processing delay is over, in submit order.
pub(crate) fn settle(store: &mut Store, now: Instant, wall: DateTime<Utc>) {
    let due: Vec<ImportRows> = store
        .processes
        .iter_mut()
        .filter_map(|process| process.take_due(now))
        .collect();
    for rows in due {
        for contact in rows.contacts {
            apply(store, contact, &rows.list_ids, rows.update_existing, wall);
        }
    }
}

/// Imports one contact, or skips it silently.
fn apply(
    store: &mut Store,
    contact: ImportContact,
    list_ids: &[u64],
    update_existing: bool,
    now: DateTime<Utc>,
) {
    let Some(email) = contact
        .email
        .map(|e| e.trim().to_lowercase())
        .filter(|e| is_valid_email(e))
    else {
        return;
    };
    let known: Map<String, Value> = contact
        .attributes
        .into_iter()
        .filter(|(name, _)| DEFAULT_ATTRIBUTES.contains(&name.as_str()) && name != "EMAIL")
        .collect();
    let mut changes = Changes {
        email: Some(email),
        list_ids: list_ids.to_vec(),
        ..Changes::default()
    };
    if check_attributes(&known, &mut changes).is_err() {
        return;
    }
    let target = store.existing(&changes).map(|(id, _)| id);
    if target.is_some() && !update_existing {
        return;
    }
    if store.check_unique(&changes, target, "import").is_err() {
        return;
    }
    match target {
        Some(id) => store.update(id, changes, now),
        None => {
            store.create(changes, now);
        }
    }
}
