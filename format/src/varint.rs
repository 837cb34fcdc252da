//! Kafka's variable-length integers, as in `org.apache.kafka.common.utils.ByteUtils`.
//!
//! A varint stores seven bits per byte, least significant group first, and
//! sets the high bit of every byte except the last. Signed values are
//! zigzag-mapped first (0, -1, 1, -2, ... become 0, 1, 2, 3, ...) so that
//! small negative numbers stay short. An `i32` takes at most five bytes and an
//! `i64` at most ten.
//!
//! Decoders accept exactly what Kafka's decoders accept: non-minimal
//! encodings (such as `0x80 0x00` for zero) are allowed, and the bits of the
//! last permitted byte that do not fit the integer are dropped, as Java's
//! shifts drop them. An encoding whose last permitted byte still has its
//! continuation bit set is rejected as overlong, and input that ends inside
//! an encoding is rejected as truncated. Decoders never panic.

use bytes::BufMut;

/// The most bytes a zigzag or unsigned `i32` varint may take.
pub const VARINT_BYTES_MAX: usize = 5;

/// The most bytes a zigzag or unsigned `i64` varlong may take.
pub const VARLONG_BYTES_MAX: usize = 10;

/// Bits carried by each encoded byte.
const PAYLOAD_BITS: u32 = 7;
const PAYLOAD_MASK: u8 = 0x7f;
const CONTINUATION_BIT: u8 = 0x80;

/// Why a variable-length integer could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum VarintError {
    /// The input ended while the encoding still announced more bytes.
    #[error("the input ends in the middle of a variable-length integer")]
    Truncated,
    /// The encoding announced more bytes than the integer type can use.
    #[error("a variable-length integer runs past its {bytes_max}-byte limit")]
    Overlong { bytes_max: usize },
}

/// Decodes an unsigned varint, returning the value and the bytes consumed.
pub fn read_unsigned_varint(bytes: &[u8]) -> Result<(u32, usize), VarintError> {
    let (raw, bytes_used) = read_unsigned(bytes, VARINT_BYTES_MAX)?;
    // Kafka keeps only the low 32 bits of the fifth byte's contribution; the
    // truncating cast drops the same bits.
    Ok((raw as u32, bytes_used))
}

/// Decodes an unsigned varlong, returning the value and the bytes consumed.
pub fn read_unsigned_varlong(bytes: &[u8]) -> Result<(u64, usize), VarintError> {
    read_unsigned(bytes, VARLONG_BYTES_MAX)
}

/// Decodes a zigzag varint (Kafka's `readVarint`).
pub fn read_varint(bytes: &[u8]) -> Result<(i32, usize), VarintError> {
    let (raw, bytes_used) = read_unsigned_varint(bytes)?;
    Ok((zigzag_decode_32(raw), bytes_used))
}

/// Decodes a zigzag varlong (Kafka's `readVarlong`).
pub fn read_varlong(bytes: &[u8]) -> Result<(i64, usize), VarintError> {
    let (raw, bytes_used) = read_unsigned_varlong(bytes)?;
    Ok((zigzag_decode_64(raw), bytes_used))
}

/// Appends an unsigned varint.
pub fn write_unsigned_varint<B: BufMut + ?Sized>(buf: &mut B, value: u32) {
    write_unsigned(buf, u64::from(value));
}

/// Appends an unsigned varlong.
pub fn write_unsigned_varlong<B: BufMut + ?Sized>(buf: &mut B, value: u64) {
    write_unsigned(buf, value);
}

/// Appends a zigzag varint (Kafka's `writeVarint`).
pub fn write_varint<B: BufMut + ?Sized>(buf: &mut B, value: i32) {
    write_unsigned(buf, u64::from(zigzag_encode_32(value)));
}

/// Appends a zigzag varlong (Kafka's `writeVarlong`).
pub fn write_varlong<B: BufMut + ?Sized>(buf: &mut B, value: i64) {
    write_unsigned(buf, zigzag_encode_64(value));
}

/// The number of bytes `write_unsigned_varint` emits for `value`.
pub fn unsigned_varint_bytes(value: u32) -> usize {
    unsigned_bytes(u64::from(value))
}

/// The number of bytes `write_varint` emits for `value`.
pub fn varint_bytes(value: i32) -> usize {
    unsigned_bytes(u64::from(zigzag_encode_32(value)))
}

/// The number of bytes `write_varlong` emits for `value`.
pub fn varlong_bytes(value: i64) -> usize {
    unsigned_bytes(zigzag_encode_64(value))
}

fn read_unsigned(bytes: &[u8], bytes_max: usize) -> Result<(u64, usize), VarintError> {
    debug_assert!(bytes_max <= VARLONG_BYTES_MAX);
    let mut value: u64 = 0;
    let mut shift_bits: u32 = 0;
    for (index, &byte) in bytes.iter().take(bytes_max).enumerate() {
        // The shift stays below 64 because at most ten bytes are read, so it
        // cannot panic; bits pushed past the top are dropped, as in Java.
        debug_assert!(shift_bits < u64::BITS);
        value |= u64::from(byte & PAYLOAD_MASK) << shift_bits;
        if byte & CONTINUATION_BIT == 0 {
            return Ok((value, index + 1));
        }
        shift_bits += PAYLOAD_BITS;
    }
    if bytes.len() >= bytes_max { Err(VarintError::Overlong { bytes_max }) } else { Err(VarintError::Truncated) }
}

fn write_unsigned<B: BufMut + ?Sized>(buf: &mut B, mut value: u64) {
    let mut bytes_written = 0;
    while value > u64::from(PAYLOAD_MASK) {
        // The mask keeps the low seven bits, so the cast cannot lose data.
        buf.put_u8((value as u8 & PAYLOAD_MASK) | CONTINUATION_BIT);
        value >>= PAYLOAD_BITS;
        bytes_written += 1;
    }
    buf.put_u8(value as u8);
    debug_assert!(bytes_written < VARLONG_BYTES_MAX);
}

fn unsigned_bytes(value: u64) -> usize {
    // Zero still takes one byte, hence the floor of one significant bit.
    let significant_bits = (u64::BITS - value.leading_zeros()).max(1);
    let bytes = significant_bits.div_ceil(PAYLOAD_BITS) as usize;
    debug_assert!((1..=VARLONG_BYTES_MAX).contains(&bytes));
    bytes
}

fn zigzag_encode_32(value: i32) -> u32 {
    ((value << 1) ^ (value >> 31)) as u32
}

fn zigzag_encode_64(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

fn zigzag_decode_32(raw: u32) -> i32 {
    ((raw >> 1) as i32) ^ -((raw & 1) as i32)
}

fn zigzag_decode_64(raw: u64) -> i64 {
    ((raw >> 1) as i64) ^ -((raw & 1) as i64)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode_varint(value: i32) -> Vec<u8> {
        let mut buf = Vec::new();
        write_varint(&mut buf, value);
        buf
    }

    fn encode_varlong(value: i64) -> Vec<u8> {
        let mut buf = Vec::new();
        write_varlong(&mut buf, value);
        buf
    }

    /// Encodings worked out by hand from the zigzag and base-128 rules; they
    /// agree with the vectors in Kafka's ByteUtilsTest.
    #[test]
    fn varint_matches_kafka_encodings() {
        let cases: &[(i32, &[u8])] = &[
            (0, &[0x00]),
            (-1, &[0x01]),
            (1, &[0x02]),
            (-64, &[0x7f]),
            (64, &[0x80, 0x01]),
            (300, &[0xd8, 0x04]),
            (i32::MAX, &[0xfe, 0xff, 0xff, 0xff, 0x0f]),
            (i32::MIN, &[0xff, 0xff, 0xff, 0xff, 0x0f]),
        ];
        for &(value, encoded) in cases {
            assert_eq!(encode_varint(value), encoded, "encoding {value}");
            assert_eq!(read_varint(encoded), Ok((value, encoded.len())), "decoding {value}");
            assert_eq!(varint_bytes(value), encoded.len());
        }
    }

    #[test]
    fn varlong_matches_kafka_encodings() {
        let max: &[u8] = &[0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        let min: &[u8] = &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        let cases: &[(i64, &[u8])] =
            &[(0, &[0x00]), (-1, &[0x01]), (5, &[0x0a]), (300, &[0xd8, 0x04]), (i64::MAX, max), (i64::MIN, min)];
        for &(value, encoded) in cases {
            assert_eq!(encode_varlong(value), encoded, "encoding {value}");
            assert_eq!(read_varlong(encoded), Ok((value, encoded.len())), "decoding {value}");
            assert_eq!(varlong_bytes(value), encoded.len());
        }
    }

    #[test]
    fn decoder_reports_only_the_bytes_it_consumed() {
        assert_eq!(read_varint(&[0xd8, 0x04, 0xff, 0xff]), Ok((300, 2)));
        assert_eq!(read_unsigned_varint(&[0x05, 0x80]), Ok((5, 1)));
    }

    #[test]
    fn empty_or_unfinished_input_is_truncated() {
        assert_eq!(read_varint(&[]), Err(VarintError::Truncated));
        assert_eq!(read_varint(&[0x80]), Err(VarintError::Truncated));
        assert_eq!(read_varlong(&[0xff; 9]), Err(VarintError::Truncated));
    }

    #[test]
    fn overlong_encodings_are_rejected() {
        let varint_max = VARINT_BYTES_MAX;
        let varlong_max = VARLONG_BYTES_MAX;
        assert_eq!(
            read_varint(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x00]),
            Err(VarintError::Overlong { bytes_max: varint_max })
        );
        assert_eq!(read_varlong(&[0x80; 11]), Err(VarintError::Overlong { bytes_max: varlong_max }));
    }

    #[test]
    fn non_minimal_encodings_decode_as_kafka_decodes_them() {
        // Zero padded to two bytes is accepted, as in Kafka.
        assert_eq!(read_varint(&[0x80, 0x00]), Ok((0, 2)));
        // The fifth byte's bits above bit 31 are dropped, as Java's shift drops them.
        assert_eq!(read_unsigned_varint(&[0xff, 0xff, 0xff, 0xff, 0x7f]), Ok((u32::MAX, 5)));
    }

    #[test]
    fn unsigned_varint_round_trips_at_the_edges() {
        for value in [0, 1, 127, 128, 16_383, 16_384, u32::MAX] {
            let mut buf = Vec::new();
            write_unsigned_varint(&mut buf, value);
            assert_eq!(buf.len(), unsigned_varint_bytes(value));
            assert_eq!(read_unsigned_varint(&buf), Ok((value, buf.len())));
        }
    }

    proptest! {
        #[test]
        fn every_varint_round_trips(value in any::<i32>()) {
            let encoded = encode_varint(value);
            prop_assert_eq!(encoded.len(), varint_bytes(value));
            prop_assert_eq!(read_varint(&encoded), Ok((value, encoded.len())));
        }

        #[test]
        fn every_varlong_round_trips(value in any::<i64>()) {
            let encoded = encode_varlong(value);
            prop_assert_eq!(encoded.len(), varlong_bytes(value));
            prop_assert_eq!(read_varlong(&encoded), Ok((value, encoded.len())));
        }

        #[test]
        fn every_unsigned_varlong_round_trips(value in any::<u64>()) {
            let mut buf = Vec::new();
            write_unsigned_varlong(&mut buf, value);
            prop_assert_eq!(read_unsigned_varlong(&buf), Ok((value, buf.len())));
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_stay_in_bounds(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
            if let Ok((_, used)) = read_varint(&bytes) {
                prop_assert!((1..=VARINT_BYTES_MAX).contains(&used) && used <= bytes.len());
            }
            if let Ok((_, used)) = read_varlong(&bytes) {
                prop_assert!((1..=VARLONG_BYTES_MAX).contains(&used) && used <= bytes.len());
            }
        }
    }
}
