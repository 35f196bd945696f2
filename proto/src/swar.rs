//! Eight bytes at a time with word arithmetic (the classic "has a zero
//! byte" tricks), for short inputs checked on every request, where a SIMD
//! search's call and setup cost more than the search itself.
//!
//! A mask has a byte's high bit set where that byte matches. Bytes above a
//! match may be flagged spuriously (a borrow), bytes below it never, so the
//! lowest flagged byte is always a true match and an empty mask is exact.

const ONES: u64 = u64::from_le_bytes([1; 8]);
const HIGH: u64 = u64::from_le_bytes([0x80; 8]);

/// The word of `bytes`, which must be eight long (else zero).
pub(crate) fn word(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes.try_into().unwrap_or_default())
}

/// Flags the bytes equal to `b`.
pub(crate) fn equal(w: u64, b: u8) -> u64 {
    let x = w ^ (ONES * u64::from(b));
    x.wrapping_sub(ONES) & !x & HIGH
}

/// Flags the bytes below `n` (exact for `n` up to 128).
pub(crate) fn below(w: u64, n: u8) -> u64 {
    w.wrapping_sub(ONES * u64::from(n)) & !w & HIGH
}

/// The position of the lowest flagged byte of a non-empty mask.
pub(crate) fn first(mask: u64) -> usize {
    (mask.trailing_zeros() / 8) as usize
}
