//! Brevo's contact store. Email, SMS and ext_id are unique identifiers.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::super::common::iso;
use super::errors::BvError;
use super::process::Process;

/// What one write sets; an attribute mapped to `None` is cleared.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    pub(crate) email: Option<String>,
    pub(crate) ext_id: Option<String>,
    pub(crate) attributes: BTreeMap<String, Option<Value>>,
    pub(crate) list_ids: Vec<u64>,
    pub(crate) unlink_list_ids: Vec<u64>,
    pub(crate) email_blacklisted: Option<bool>,
    pub(crate) sms_blacklisted: Option<bool>,
}

impl Changes {
    /// The SMS number this write sets, normalized to digits.
    pub(crate) fn sms(&self) -> Option<&str> {
        self.attributes.get("SMS")?.as_ref()?.as_str()
    }
}

/// How a lookup names its contact: a `/v3/contacts/{identifier}` path, or
/// the identifiers a write carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ident {
    Email(String),
    Id(u64),
    Sms(String),
    ExtId(String),
    /// Digits without `identifierType`: a contact id, else an SMS number.
    IdOrSms(String),
    /// A phone-like attribute (`WHATSAPP`, `LANDLINE_NUMBER`).
    Attribute(&'static str, String),
}

#[derive(Debug)]
pub(crate) struct Contact {
    id: u64,
    email: Option<String>,
    ext_id: Option<String>,
    attributes: BTreeMap<String, Value>,
    list_ids: BTreeSet<u64>,
    email_blacklisted: bool,
    sms_blacklisted: bool,
    created_at: DateTime<Utc>,
    modified_at: DateTime<Utc>,
}

impl Contact {
    fn attribute(&self, name: &str) -> Option<&str> {
        self.attributes.get(name).and_then(Value::as_str)
    }

    fn apply(&mut self, changes: Changes, now: DateTime<Utc>) {
        if let Some(email) = changes.email {
            self.email = Some(email);
        }
        if let Some(ext_id) = changes.ext_id {
            self.ext_id = Some(ext_id);
        }
        for (name, value) in changes.attributes {
            match value {
                Some(value) => self.attributes.insert(name, value),
                None => self.attributes.remove(&name),
            };
        }
        self.list_ids.extend(changes.list_ids);
        for id in changes.unlink_list_ids {
            self.list_ids.remove(&id);
        }
        self.email_blacklisted = changes.email_blacklisted.unwrap_or(self.email_blacklisted);
        self.sms_blacklisted = changes.sms_blacklisted.unwrap_or(self.sms_blacklisted);
        self.modified_at = now;
    }

    /// The body of `GET /v3/contacts/{identifier}`.
    pub(crate) fn json(&self) -> Value {
        let mut attributes = self.attributes.clone();
        if let Some(ext_id) = &self.ext_id {
            attributes.insert("EXT_ID".into(), ext_id.clone().into());
        }
        let mut body = json!({
            "email": self.email,
            "id": self.id,
            "emailBlacklisted": self.email_blacklisted,
            "smsBlacklisted": self.sms_blacklisted,
            "createdAt": iso(self.created_at),
            "modifiedAt": iso(self.modified_at),
            "attributes": attributes,
            "listIds": self.list_ids,
            "statistics": {},
        });
        if self.email.is_none() {
            body.as_object_mut().map(|b| b.remove("email"));
        }
        body
    }
}

#[derive(Debug, Default)]
pub(crate) struct Store {
    contacts: BTreeMap<u64, Contact>,
    by_email: HashMap<String, u64>,
    /// SMS number -> contact, so that an import of thousands does not scan
    /// every contact per row.
    by_sms: HashMap<String, u64>,
    /// Imports, applied once their processing delay is over.
    pub(crate) processes: Vec<Process>,
}

impl Store {
    /// The id of the next import's process.
    pub(crate) fn next_process_id(&self) -> u64 {
        self.processes.len() as u64 + 1
    }

    /// Contacts modified (and created) strictly after the given instants,
    /// oldest first, as the listing shows them.
    pub(crate) fn changed_since(
        &self,
        modified: Option<DateTime<Utc>>,
        created: Option<DateTime<Utc>>,
    ) -> Vec<&Contact> {
        self.contacts
            .values()
            .filter(|c| modified.is_none_or(|t| c.modified_at > t))
            .filter(|c| created.is_none_or(|t| c.created_at > t))
            .collect()
    }

    pub(crate) fn get(&self, id: u64) -> Option<&Contact> {
        self.contacts.get(&id)
    }

    fn find_by(&self, test: impl Fn(&Contact) -> bool) -> Option<u64> {
        self.contacts.values().find(|c| test(c)).map(|c| c.id)
    }

    pub(crate) fn find(&self, ident: &Ident) -> Option<u64> {
        match ident {
            Ident::Email(email) => self.by_email.get(email).copied(),
            Ident::Id(id) => self.contacts.get(id).map(|c| c.id),
            Ident::Sms(sms) => self.by_sms.get(sms).copied(),
            Ident::ExtId(ext) => self.find_by(|c| c.ext_id.as_deref() == Some(ext)),
            Ident::IdOrSms(digits) => digits
                .parse()
                .ok()
                .and_then(|id| self.find(&Ident::Id(id)))
                .or_else(|| self.find(&Ident::Sms(digits.clone()))),
            Ident::Attribute(name, value) => self.find_by(|c| c.attribute(name) == Some(value)),
        }
    }

    /// The contact a create addresses, with the identifier that matched: the
    /// email when one is given, else the ext_id, else the SMS number. Any
    /// other identifier that belongs to someone else is a duplicate.
    pub(crate) fn existing(&self, changes: &Changes) -> Option<(u64, &'static str)> {
        let (ident, what) = if let Some(email) = &changes.email {
            (Ident::Email(email.clone()), "email")
        } else if let Some(ext_id) = &changes.ext_id {
            (Ident::ExtId(ext_id.clone()), "ext_id")
        } else {
            (Ident::Sms(changes.sms()?.to_owned()), "SMS")
        };
        self.find(&ident).map(|id| (id, what))
    }

    /// 400 `duplicate_parameter` if another contact than `target` already
    /// has the email, ext_id or SMS this write sets.
    pub(crate) fn check_unique(
        &self,
        changes: &Changes,
        target: Option<u64>,
        action: &str,
    ) -> Result<(), BvError> {
        let taken = |ident: Ident| self.find(&ident).is_some_and(|id| Some(id) != target);
        let email = changes.email.clone().map(Ident::Email);
        let ext_id = changes.ext_id.clone().map(Ident::ExtId);
        let sms = changes.sms().map(|s| Ident::Sms(s.into()));
        for (ident, what) in [(email, "email"), (ext_id, "ext_id"), (sms, "SMS")] {
            if ident.is_some_and(taken) {
                return Err(BvError::duplicate(action, what));
            }
        }
        Ok(())
    }

    pub(crate) fn create(&mut self, changes: Changes, now: DateTime<Utc>) -> u64 {
        let id = self.contacts.last_key_value().map_or(1, |(id, _)| id + 1);
        let mut contact = Contact {
            id,
            email: None,
            ext_id: None,
            attributes: BTreeMap::new(),
            list_ids: BTreeSet::new(),
            email_blacklisted: false,
            sms_blacklisted: false,
            created_at: now,
            modified_at: now,
        };
        contact.apply(changes, now);
        if let Some(email) = &contact.email {
            self.by_email.insert(email.clone(), id);
        }
        if let Some(sms) = contact.attribute("SMS") {
            self.by_sms.insert(sms.to_owned(), id);
        }
        self.contacts.insert(id, contact);
        id
    }

    pub(crate) fn update(&mut self, id: u64, changes: Changes, now: DateTime<Utc>) {
        let Some(contact) = self.contacts.get_mut(&id) else {
            return;
        };
        let old_email = contact.email.clone();
        let old_sms = contact.attribute("SMS").map(str::to_owned);
        contact.apply(changes, now);
        let new_sms = contact.attribute("SMS").map(str::to_owned);
        if new_sms != old_sms {
            if let Some(old) = old_sms {
                self.by_sms.remove(&old);
            }
            if let Some(new) = new_sms {
                self.by_sms.insert(new, id);
            }
        }
        if contact.email != old_email {
            if let Some(old) = old_email {
                self.by_email.remove(&old);
            }
            if let Some(new) = &contact.email {
                self.by_email.insert(new.clone(), id);
            }
        }
    }

    /// Deletes contact `id`; `false` when there is none.
    pub(crate) fn delete(&mut self, id: u64) -> bool {
        let Some(contact) = self.contacts.remove(&id) else {
            return false;
        };
        if let Some(email) = &contact.email {
            self.by_email.remove(email);
        }
        if let Some(sms) = contact.attribute("SMS") {
            self.by_sms.remove(sms);
        }
        true
    }

    /// Every contact as GET shows it, sorted by id.
    pub(crate) fn dump(&self) -> Vec<Value> {
        self.contacts.values().map(Contact::json).collect()
    }
}
