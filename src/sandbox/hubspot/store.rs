//! HubSpot's contact store: the primary records (what GET and batch/read
//! see) plus, per contact, the versions the search index will show once
//! `search_lag_ms` has passed since each write.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::super::clock::Now;
use super::super::common::iso;
use super::validate::Props;

/// The first id handed out; HubSpot's record ids are large integers.
const FIRST_ID: u64 = 176_559_342_601;

/// Properties returned when a request names none.
const DEFAULT_VIEW: [&str; 3] = ["email", "firstname", "lastname"];

/// Which properties an answer carries.
#[derive(Debug, Clone)]
pub(crate) enum Projection {
    /// Every stored value (write answers and the inspection endpoint).
    All,
    /// `email`, `firstname`, `lastname` (reads that name no properties).
    Default,
    /// The named ones, `null` when unset.
    Named(Vec<String>),
}

impl Projection {
    pub(crate) fn requested(names: Option<Vec<String>>) -> Self {
        match names {
            Some(names) if !names.is_empty() => Projection::Named(names),
            _ => Projection::Default,
        }
    }
}

/// A contact as of one write.
#[derive(Debug, Clone)]
pub(crate) struct Version {
    pub(crate) props: Props,
    pub(crate) updated_at: DateTime<Utc>,
    visible_at: Instant,
}

#[derive(Debug)]
pub(crate) struct Contact {
    pub(crate) id: u64,
    pub(crate) created_at: DateTime<Utc>,
    current: Version,
    /// Versions waiting for, or last shown by, the search index (oldest first).
    indexed: VecDeque<Version>,
}

impl Contact {
    /// This contact in the primary store.
    pub(crate) fn json(&self, projection: &Projection) -> Value {
        object_json(self.id, self.created_at, &self.current, projection)
    }

    /// What the search index shows at `now`, if anything yet.
    pub(crate) fn searchable(&self, now: Instant) -> Option<&Version> {
        self.indexed.iter().rev().find(|v| v.visible_at <= now)
    }

    pub(crate) fn version_json(&self, version: &Version, projection: &Projection) -> Value {
        object_json(self.id, self.created_at, version, projection)
    }

    fn record(&mut self, now: &Now) {
        let version = Version {
            visible_at: now.instant + now.lag,
            ..self.current.clone()
        };
        while self.indexed.len() > 1 && self.indexed[1].visible_at <= now.instant {
            self.indexed.pop_front();
        }
        self.indexed.push_back(version);
    }
}

/// A SimplePublicObject: `{id, properties, createdAt, updatedAt, archived}`,
/// properties sorted by name. Built straight into its maps: a batch answer
/// holds 100 of these.
fn object_json(
    id: u64,
    created_at: DateTime<Utc>,
    version: &Version,
    projection: &Projection,
) -> Value {
    let value = |name: &str| {
        version
            .props
            .get(name)
            .map_or(Value::Null, |v| v.as_str().into())
    };
    let mut props: Vec<(&str, Value)> = match projection {
        Projection::All => version
            .props
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str().into()))
            .collect(),
        Projection::Default => DEFAULT_VIEW
            .iter()
            .map(|&name| (name, value(name)))
            .collect(),
        Projection::Named(names) => names
            .iter()
            .map(|name| (name.as_str(), value(name)))
            .collect(),
    };
    let (id_text, created, updated) = (id.to_string(), iso(created_at), iso(version.updated_at));
    // System properties replace a stored or requested value of the same name.
    let system = ["hs_object_id", "createdate", "lastmodifieddate"];
    props.retain(|(name, _)| !system.contains(name));
    props.extend([
        ("hs_object_id", Value::from(id_text.as_str())),
        ("createdate", Value::from(created.as_str())),
        ("lastmodifieddate", Value::from(updated.as_str())),
    ]);
    props.sort_unstable_by(|a, b| a.0.cmp(b.0));
    props.dedup_by(|a, b| a.0 == b.0);
    let properties: Map<String, Value> =
        props.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    let mut object = Map::with_capacity(5);
    object.insert("id".into(), id_text.into());
    object.insert("properties".into(), properties.into());
    object.insert("createdAt".into(), created.into());
    object.insert("updatedAt".into(), updated.into());
    object.insert("archived".into(), false.into());
    Value::Object(object)
}

#[derive(Debug, Default)]
pub(crate) struct Store {
    contacts: BTreeMap<u64, Contact>,
    by_email: HashMap<String, u64>,
    issued: u64,
}

impl Store {
    pub(crate) fn get(&self, id: u64) -> Option<&Contact> {
        self.contacts.get(&id)
    }

    /// The id of the contact with this email, case-insensitively.
    pub(crate) fn id_by_email(&self, email: &str) -> Option<u64> {
        self.by_email.get(&email.to_lowercase()).copied()
    }

    /// Resolves a path or batch id: a record id, or an email with `by_email`.
    pub(crate) fn find(&self, id: &str, by_email: bool) -> Option<u64> {
        if by_email {
            self.id_by_email(id)
        } else {
            id.parse().ok().filter(|id| self.contacts.contains_key(id))
        }
    }

    pub(crate) fn contacts(&self) -> impl Iterator<Item = &Contact> {
        self.contacts.values()
    }

    /// Stores a new contact; the caller has checked that its email is free.
    pub(crate) fn create(&mut self, props: Props, now: &Now) -> &Contact {
        let id = FIRST_ID + self.issued;
        self.issued += 1;
        let props: Props = props.into_iter().filter(|(_, v)| !v.is_empty()).collect();
        if let Some(email) = props.get("email") {
            self.by_email.insert(email.to_lowercase(), id);
        }
        let current = Version {
            props,
            updated_at: now.wall,
            visible_at: now.instant,
        };
        let mut contact = Contact {
            id,
            created_at: now.wall,
            current,
            indexed: VecDeque::new(),
        };
        contact.record(now);
        self.contacts.entry(id).or_insert(contact)
    }

    /// Overwrites the given values (an empty string clears one); the caller
    /// has checked that a changed email is free.
    pub(crate) fn update(&mut self, id: u64, changes: Props, now: &Now) -> Option<&Contact> {
        let contact = self.contacts.get_mut(&id)?;
        let old_email = contact.current.props.get("email").map(|e| e.to_lowercase());
        for (name, value) in changes {
            if value.is_empty() {
                contact.current.props.remove(&name);
            } else {
                contact.current.props.insert(name, value);
            }
        }
        contact.current.updated_at = now.wall;
        contact.record(now);
        let new_email = contact.current.props.get("email").map(|e| e.to_lowercase());
        if old_email != new_email {
            if let Some(old) = old_email {
                self.by_email.remove(&old);
            }
            if let Some(new) = new_email {
                self.by_email.insert(new, id);
            }
        }
        self.contacts.get(&id)
    }

    /// Archives (removes) contact `id`; `false` when there is none.
    pub(crate) fn archive(&mut self, id: u64) -> bool {
        let Some(contact) = self.contacts.remove(&id) else {
            return false;
        };
        if let Some(email) = contact.current.props.get("email") {
            self.by_email.remove(&email.to_lowercase());
        }
        true
    }

    /// Every contact with all its values, sorted by id.
    pub(crate) fn dump(&self) -> Vec<Value> {
        self.contacts
            .values()
            .map(|c| c.json(&Projection::All))
            .collect()
    }
}
