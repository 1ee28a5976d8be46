//! Brevo attribute validation: UPPERCASE names that exist, SMS with a
//! country code, valid emails; and how a path identifier is read.

use serde_json::{Map, Value};

use super::super::common::is_valid_email;
use super::errors::BvError;
use super::store::{Changes, Ident};

/// Contact attributes that exist in every sandbox account.
pub(crate) const DEFAULT_ATTRIBUTES: [&str; 6] = [
    "EMAIL",
    "FIRSTNAME",
    "LASTNAME",
    "SMS",
    "WHATSAPP",
    "LANDLINE_NUMBER",
];

/// Reads `attributes` into `changes`; `null` or `""` clears an attribute.
pub(crate) fn check_attributes(
    raw: &Map<String, Value>,
    changes: &mut Changes,
) -> Result<(), BvError> {
    for (name, value) in raw {
        if !DEFAULT_ATTRIBUTES.contains(&name.as_str()) {
            return Err(BvError::invalid(format!("Attribute {name} does not exist")));
        }
        if matches!(value, Value::Object(_)) {
            return Err(BvError::invalid(format!(
                "Invalid value for attribute {name}"
            )));
        }
        let cleared = value.is_null() || value.as_str() == Some("");
        match name.as_str() {
            "EMAIL" if !cleared => changes.email = Some(check_email(&text(value))?),
            "EMAIL" => {}
            "SMS" if !cleared => {
                let sms = normalize_phone(&text(value)).ok_or_else(invalid_phone)?;
                changes.attributes.insert(name.clone(), Some(sms.into()));
            }
            _ => {
                let value = (!cleared).then(|| value.clone());
                changes.attributes.insert(name.clone(), value);
            }
        }
    }
    Ok(())
}

/// A lower-cased email, or 400 "Invalid email address".
pub(crate) fn check_email(email: &str) -> Result<String, BvError> {
    if is_valid_email(email) {
        Ok(email.to_lowercase())
    } else {
        Err(BvError::invalid("Invalid email address"))
    }
}

fn invalid_phone() -> BvError {
    BvError::invalid("Invalid phone number")
}

/// `+` or `00`, then 8 to 15 digits; answers the digits (as Brevo shows SMS).
pub(crate) fn normalize_phone(phone: &str) -> Option<String> {
    let digits = phone
        .strip_prefix('+')
        .or_else(|| phone.strip_prefix("00"))?;
    let ok = (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit());
    ok.then(|| digits.to_owned())
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Reads the identifier per `identifierType`, or guesses as Brevo does.
pub(crate) fn ident(raw: &str, kind: Option<&str>) -> Result<Ident, BvError> {
    let sms = |raw: &str| normalize_phone(raw).unwrap_or_else(|| raw.to_owned());
    Ok(match kind {
        Some("email_id") => Ident::Email(raw.to_lowercase()),
        Some("contact_id") => Ident::Id(
            raw.parse()
                .map_err(|_| BvError::invalid("Invalid contact id"))?,
        ),
        Some("phone_id") => Ident::Sms(sms(raw)),
        Some("ext_id") => Ident::ExtId(raw.to_owned()),
        Some("whatsapp_id") => Ident::Attribute("WHATSAPP", raw.to_owned()),
        Some("landline_number_id") => Ident::Attribute("LANDLINE_NUMBER", raw.to_owned()),
        Some(other) => return Err(BvError::invalid(format!("Invalid identifierType {other}"))),
        None if raw.contains('@') => Ident::Email(raw.to_lowercase()),
        None if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) => {
            Ident::IdOrSms(raw.to_owned())
        }
        None => Ident::Sms(sms(raw)),
    })
}

#[cfg(test)]
mod tests {
    use super::normalize_phone;

    #[test]
    fn sms_needs_a_country_code_prefix() {
        assert_eq!(
            normalize_phone("+33612345678").as_deref(),
            Some("33612345678")
        );
        assert_eq!(
            normalize_phone("0033612345678").as_deref(),
            Some("33612345678")
        );
        for bad in [
            "0612345678",
            "+336 12 34 56 78",
            "+1234567",
            "+1234567890123456",
        ] {
            assert_eq!(normalize_phone(bad), None, "{bad}");
        }
    }
}
