//! Text the engine writes into the user's table (error messages, CRM ids),
//! made safe to store: a CRM's answer must never fail a batch's write-back.
//!
//! PostgreSQL rejects NUL in `text` and `\u0000` in `jsonb` (the write-back
//! travels as one JSON array), so one message with a NUL would keep every row
//! of its batch `Processing`. A message of megabytes would be copied into
//! every row of the batch, and PostgreSQL caps a `jsonb` value at 256 MB.

use std::borrow::Cow;

/// The most characters stored for one value; longer text is cut and marked.
pub const MAX_STORED_CHARS: usize = 2_000;

/// `text` with control characters that backends reject or that garble a
/// terminal (every C0 and C1 control but tab, newline and carriage return)
/// replaced by U+FFFD, and cut to [`MAX_STORED_CHARS`] characters on a
/// character boundary with a note saying how much was left out.
///
/// Borrows when nothing needs changing, which is the common case.
pub fn stored_text(text: &str) -> Cow<'_, str> {
    let cut_at = text.char_indices().nth(MAX_STORED_CHARS).map(|(at, _)| at);
    let kept = &text[..cut_at.unwrap_or(text.len())];
    if cut_at.is_none() && !kept.chars().any(is_rejected) {
        return Cow::Borrowed(text);
    }
    let mut clean: String = kept
        .chars()
        .map(|c| if is_rejected(c) { '\u{FFFD}' } else { c })
        .collect();
    if let Some(at) = cut_at {
        clean.push_str("… [cut: ");
        clean.push_str(&(text.len() - at).to_string());
        clean.push_str(" more bytes]");
    }
    Cow::Owned(clean)
}

fn is_rejected(c: char) -> bool {
    c.is_control() && !matches!(c, '\t' | '\n' | '\r')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_text_is_stored_as_it_is_without_a_copy() {
        let text = "HTTP 400 Bad Request: Invalid email\taddress\n";
        assert!(matches!(stored_text(text), Cow::Borrowed(t) if t == text));
    }

    #[test]
    fn a_nul_and_other_controls_are_replaced() {
        assert_eq!(
            stored_text("bad\0id\u{1b}[31m"),
            "bad\u{FFFD}id\u{FFFD}[31m"
        );
        assert_eq!(stored_text("c1\u{85}"), "c1\u{FFFD}");
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary_and_marked() {
        let text = "é".repeat(MAX_STORED_CHARS + 10);
        let stored = stored_text(&text);
        assert!(stored.starts_with(&"é".repeat(MAX_STORED_CHARS)));
        assert!(stored.ends_with("… [cut: 20 more bytes]"), "{stored}");
        assert_eq!(
            stored_text(&"x".repeat(MAX_STORED_CHARS)).len(),
            MAX_STORED_CHARS
        );
    }
}
