//! Hex codec for the TCP responder's payloads (`--tcp-request-hex`, `reply_hex=`), matching
//! Envoy's `tcp_health_check.send.text` format: plain hex digits, either case, no separators.

use std::fmt;

/// Why a hex string could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HexError {
    OddLength(usize),
    InvalidDigit { position: usize, found: char },
}

impl fmt::Display for HexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HexError::OddLength(len) => write!(f, "{len} hex digits is an odd number"),
            HexError::InvalidDigit { position, found } => {
                write!(f, "{found:?} at position {position} is not a hex digit")
            }
        }
    }
}

impl std::error::Error for HexError {}

/// Lower-case hex of `bytes`.
pub fn encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

/// Decodes hex digits (either case) into bytes. The empty string is the empty payload.
pub fn decode(text: &str) -> Result<Vec<u8>, HexError> {
    let mut nibbles = Vec::with_capacity(text.len());
    for (position, found) in text.chars().enumerate() {
        let nibble = found
            .to_digit(16)
            .ok_or(HexError::InvalidDigit { position, found })?;
        // to_digit(16) is below 16, so the narrowing cannot lose bits.
        nibbles.push(nibble as u8);
    }
    if nibbles.len() % 2 != 0 {
        return Err(HexError::OddLength(nibbles.len()));
    }
    Ok(nibbles
        .chunks_exact(2)
        .map(|pair| (pair[0] << 4) | pair[1])
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        assert_eq!(encode(b"ping"), "70696e67");
        assert_eq!(decode("70696E67").unwrap(), b"ping");
        assert_eq!(decode("").unwrap(), b"");
        let all: Vec<u8> = (0..=255).collect();
        assert_eq!(decode(&encode(&all)).unwrap(), all);
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(decode("abc"), Err(HexError::OddLength(3)));
        assert_eq!(
            decode("zz"),
            Err(HexError::InvalidDigit {
                position: 0,
                found: 'z'
            })
        );
        assert!(decode("0x12").is_err());
        assert!(decode("é1").is_err());
    }
}
