//! Lowercase hexadecimal of digests (journal keys, file hashes, batch
//! boundaries): a leaf every room may use.

/// `bytes` as lowercase hexadecimal, two digits a byte.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_is_lowercase_and_padded() {
        assert_eq!(super::hex(&[0x00, 0xab, 0x0f]), "00ab0f");
    }
}
