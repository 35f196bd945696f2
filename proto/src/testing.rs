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

/// Replays every file of the fuzz corpus `<repo>/fuzz/corpus/<target>/`
/// through `check` (the same check the cargo-fuzz target runs), so `cargo
/// test` on stable covers the corpus and every crash input kept there stays
/// a regression test. Fails the calling test on an unreadable or empty
/// corpus, or on the first input whose check panics.
#[allow(clippy::unwrap_used, clippy::panic)] // a test helper: failing loudly is the point
pub fn replay_corpus(target: &str, check: fn(&[u8])) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .collect();
    entries.sort();
    assert!(!entries.is_empty(), "empty corpus {}", dir.display());
    for path in entries {
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{} fails its check", path.display());
    }
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
