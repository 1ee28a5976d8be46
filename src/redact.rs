//! Keeping secrets out of what the engine prints: URLs shown in messages and
//! logs lose their credentials (userinfo and secret-looking query values).

use url::Url;

/// What replaces a hidden value.
pub const HIDDEN: &str = "***";

/// Query parameter names (compared case-insensitively, ignoring `-` and `_`)
/// whose values are credentials, e.g. HubSpot's legacy `hapikey`,
/// Pipedrive's `api_token`.
const SECRET_QUERY_WORDS: &[&str] = &[
    "key",
    "token",
    "secret",
    "password",
    "passwd",
    "pwd",
    "auth",
    "signature",
    "sig",
    "credential",
    "session",
];

/// `true` when a query parameter named `name` likely carries a credential.
pub fn is_secret_param(name: &str) -> bool {
    let folded: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase();
    SECRET_QUERY_WORDS.iter().any(|word| folded.contains(word))
}

/// `url` fit to print: its user name and password, and the value of every
/// secret-looking query parameter, become `***`. Text that is not a URL is
/// shown only up to where a credential could start (`@`, `?`).
pub fn url_for_display(url: &str) -> String {
    let Ok(mut parsed) = Url::parse(url) else {
        return unparsed_for_display(url);
    };
    if !parsed.username().is_empty() {
        let _ = parsed.set_username(HIDDEN);
    }
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some(HIDDEN));
    }
    if parsed.query().is_some() {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(name, value)| {
                let value = if is_secret_param(&name) {
                    HIDDEN.to_string()
                } else {
                    value.into_owned()
                };
                (name.into_owned(), value)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

/// Anything after the first `@` or `?` of text that did not parse as a URL
/// may be a credential.
fn unparsed_for_display(text: &str) -> String {
    match text.find(['@', '?']) {
        Some(at) => format!("{}{HIDDEN}", &text[..at]),
        None => text.to_string(),
    }
}

/// Replaces every URL-shaped word of `text` (from `http://` or `https://` to
/// the next whitespace) with [`url_for_display`] of it.
pub fn urls_in_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = [rest.find("http://"), rest.find("https://")]
        .into_iter()
        .flatten()
        .min()
    {
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '`' | '"' | '\'' | '<' | '>' | ')'))
            .unwrap_or(tail.len());
        out.push_str(&url_for_display(&tail[..end]));
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_and_secret_query_values_are_hidden() {
        assert_eq!(
            url_for_display(
                "https://user:hunter2@api.example.com/v3?hapikey=abc&limit=5&api_key=x"
            ),
            "https://***:***@api.example.com/v3?hapikey=***&limit=5&api_key=***"
        );
        assert_eq!(
            url_for_display("https://api.example.com/v3"),
            "https://api.example.com/v3"
        );
        assert_eq!(url_for_display("not a url?token=abc"), "not a url***");
    }

    #[test]
    fn urls_inside_a_message_are_hidden_in_place() {
        assert_eq!(
            urls_in_text("error sending request for url (http://h/x?access_token=zz): timed out"),
            "error sending request for url (http://h/x?access_token=***): timed out"
        );
        assert_eq!(urls_in_text("no url here"), "no url here");
    }

    #[test]
    fn secret_parameter_names_are_recognised() {
        for name in [
            "hapikey",
            "api_key",
            "API-KEY",
            "access_token",
            "client_secret",
            "sig",
        ] {
            assert!(is_secret_param(name), "{name}");
        }
        for name in ["limit", "email", "properties", "idProperty"] {
            assert!(!is_secret_param(name), "{name}");
        }
    }
}
