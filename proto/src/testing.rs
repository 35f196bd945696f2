//! Test helpers shared by this crate's tests and by other crates' tests.
//!
//! Incremental parsers must give the same answer however the network cuts
//! their input; [`for_each_split`] produces the cuts worth trying. The
//! [`fuzz`] module holds the properties the fuzz targets check.

pub mod fuzz;

/// Runs `f` over every two-way split of `input` (including the splits with an
/// empty first or last piece) and over the byte-by-byte feeding: `f` receives
/// the list of pieces, whose concatenation is always `input`.
pub fn for_each_split(input: &[u8], mut f: impl FnMut(&[&[u8]])) {
    for at in 0..=input.len() {
        let (a, b) = input.split_at(at);
        f(&[a, b]);
    }
    let bytes: Vec<&[u8]> = input.chunks(1).collect();
    f(&bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_concatenate_to_input() {
        let input = b"abc";
        let mut calls = 0;
        for_each_split(input, |pieces| {
            calls += 1;
            assert_eq!(pieces.concat(), input);
        });
        assert_eq!(calls, 5);
    }

    #[test]
    fn empty_input() {
        let mut calls = 0;
        for_each_split(b"", |pieces| {
            calls += 1;
            assert!(pieces.concat().is_empty());
        });
        assert_eq!(calls, 2);
    }
}
