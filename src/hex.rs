//! Lowercase hex of digest bytes, for the fingerprints, the template hash
//! helpers and the shared budget's key. A leaf: it imports nothing of the
//! crate, so none of its users depends on another through it.

/// Lowercase hex of `bytes`, two digits a byte (md-5/sha2 0.11 digests have
/// no `LowerHex`).
pub fn encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::encode;

    #[test]
    fn hex_is_lowercase_two_digits_per_byte() {
        assert_eq!(encode(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
    }
}
