//! Tamper evidence: every line carries an HMAC-SHA256 over its content and
//! the previous line's MAC, so an edited, removed, inserted or reordered
//! line breaks the chain at that line. Each file opens with a `file_start`
//! line naming the MAC it continues from (itself MAC'd), so a file can be
//! checked after older files were rotated away, and a file removed from the
//! middle breaks the chain at the next file's start.
//!
//! A sealed line is the event's JSON object with `"mac"` as its last
//! member: `{...,"mac":"<64 hex>"}`.

use ring::hmac;

pub const MAC_HEX: usize = 64;
const SUFFIX_START: &[u8] = b",\"mac\":\"";

/// The MAC before the first line ever written.
pub const GENESIS: [u8; 32] = [0; 32];

pub struct Chain {
    key: hmac::Key,
    prev: [u8; 32],
    /// `prev` as the hex the next MAC covers (and the last line carries).
    prev_hex: [u8; MAC_HEX],
}

impl Chain {
    pub fn new(key_bytes: &[u8], prev: [u8; 32]) -> Self {
        Chain {
            key: hmac::Key::new(hmac::HMAC_SHA256, key_bytes),
            prev,
            prev_hex: hex(&prev),
        }
    }

    pub fn prev(&self) -> [u8; 32] {
        self.prev
    }

    fn mac(&self, content: &[u8]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(&self.prev_hex);
        ctx.update(content);
        let tag = ctx.sign();
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Appends `event` (one JSON object, no newline) sealed, and a
    /// newline, to `out`; the chain moves on past it.
    pub fn seal(&mut self, event: &[u8], out: &mut Vec<u8>) {
        let Some(body) = event.strip_suffix(b"}") else {
            return;
        };
        let mac = self.mac(event);
        self.move_on(mac);
        out.extend_from_slice(body);
        out.extend_from_slice(SUFFIX_START);
        out.extend_from_slice(&self.prev_hex);
        out.extend_from_slice(b"\"}\n");
    }

    /// Checks one sealed line (no newline) against the chain and moves on.
    pub fn check(&mut self, line: &[u8]) -> Result<(), &'static str> {
        let (event, mac) = split(line).ok_or("no mac")?;
        if self.mac(&event) != mac {
            return Err("the mac does not match (edited, or out of order)");
        }
        self.move_on(mac);
        Ok(())
    }

    /// Starts checking at a file's `file_start` line: the chain continues
    /// from the MAC it names.
    pub fn restart_at(&mut self, prev: [u8; 32]) {
        self.move_on(prev);
    }

    fn move_on(&mut self, mac: [u8; 32]) {
        self.prev = mac;
        self.prev_hex = hex(&mac);
    }
}

/// A sealed line's event (as it was MAC'd) and its MAC.
pub fn split(line: &[u8]) -> Option<(Vec<u8>, [u8; 32])> {
    let tail = SUFFIX_START.len() + MAC_HEX + 2;
    if line.len() < tail + 1 || !line.ends_with(b"\"}") {
        return None;
    }
    let at = line.len() - tail;
    if &line[at..at + SUFFIX_START.len()] != SUFFIX_START {
        return None;
    }
    let mac = unhex(&line[at + SUFFIX_START.len()..line.len() - 2])?;
    let mut event = line[..at].to_vec();
    event.push(b'}');
    Some((event, mac))
}

pub fn hex(bytes: &[u8; 32]) -> [u8; 64] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 64];
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
    }
    out
}

pub fn unhex(text: &[u8]) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in text.chunks(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_catches_an_edit_a_removal_and_a_swap() {
        let mut w = Chain::new(b"k", GENESIS);
        let mut out = Vec::new();
        for e in [r#"{"n":1}"#, r#"{"n":2}"#, r#"{"n":3}"#] {
            w.seal(e.as_bytes(), &mut out);
        }
        let lines: Vec<&[u8]> = out
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .collect();
        let ok = |ls: &[&[u8]]| {
            let mut c = Chain::new(b"k", GENESIS);
            ls.iter().position(|l| c.check(l).is_err())
        };
        assert_eq!(ok(&lines), None);
        let edited = String::from_utf8_lossy(lines[1]).replace("\"n\":2", "\"n\":7");
        assert_eq!(ok(&[lines[0], edited.as_bytes(), lines[2]]), Some(1));
        assert_eq!(ok(&[lines[0], lines[2]]), Some(1));
        assert_eq!(ok(&[lines[1], lines[0], lines[2]]), Some(0));
        let mut other = Chain::new(b"other key", GENESIS);
        assert!(other.check(lines[0]).is_err());
    }
}
