//! Cache keys and the file names derived from them.
//!
//! A key is the blake3 of the source file. Entries live in a directory named after the SMQ
//! format major and the converter layout version (`v{major}.{layout}`), so an entry written
//! by an older importer is never served to a newer one: it simply sits in another directory
//! until `clear` sweeps it.
//!
//! Per key, a version directory holds:
//! - `<hex>.smq`: the complete entry (appears only through an atomic rename);
//! - `<hex>.json`: a sidecar with the source's file name;
//! - `<hex>.lock`: the lock file that serialises builders of that key;
//! - `<hex>.partial…` (and `.<hex>.partial…`, the temp files of an atomic writer aimed at
//!   the partial path): an unfinished build, never served, removed under the key's lock.

/// Length of a key in hex digits.
pub const HEX_LEN: usize = 64;

/// Lower-case hex of a 32-byte hash.
pub fn to_hex(hash: &[u8; 32]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(HEX_LEN);
    for b in hash {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

/// Parses exactly 64 lower-case hex digits (the form the cache writes).
pub fn from_hex(s: &str) -> Option<[u8; 32]> {
    if s.len() != HEX_LEN || !is_lower_hex(s) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.as_bytes().chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

/// True when every character is a lower-case hex digit.
pub fn is_lower_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn nibble(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// Name of the directory holding entries for one (format major, layout version) pair.
pub fn version_dir_name(format_major: u16, layout: u32) -> String {
    format!("v{format_major}.{layout}")
}

/// True for names of the form `v{u16}.{u32}`: directories the cache owns.
pub fn is_version_dir_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('v') else {
        return false;
    };
    let Some((major, layout)) = rest.split_once('.') else {
        return false;
    };
    major.parse::<u16>().is_ok() && layout.parse::<u32>().is_ok()
}

pub fn entry_name(hex: &str) -> String {
    format!("{hex}.smq")
}

pub fn sidecar_name(hex: &str) -> String {
    format!("{hex}.json")
}

pub fn lock_name(hex: &str) -> String {
    format!("{hex}.lock")
}

/// Where a builder writes; also the prefix of every temp file belonging to a build.
pub fn partial_name(hex: &str) -> String {
    format!("{hex}.partial")
}

/// What a file in a version directory is, judged by its name alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileKind {
    Entry(String),
    Sidecar(String),
    Lock(String),
    /// Leftover of an unfinished build (or of an unfinished sidecar write).
    Partial(String),
}

/// Classifies a file name; `None` for names the cache did not write.
pub fn classify(name: &str) -> Option<FileKind> {
    // Atomic writers put their temp files beside the target with a leading dot.
    let (dotted, bare) = match name.strip_prefix('.') {
        Some(rest) => (true, rest),
        None => (false, name),
    };
    if bare.len() <= HEX_LEN || !bare.is_char_boundary(HEX_LEN) {
        return None;
    }
    let (hex, suffix) = bare.split_at(HEX_LEN);
    if !is_lower_hex(hex) {
        return None;
    }
    let hex = hex.to_string();
    if suffix.starts_with(".partial") {
        return Some(FileKind::Partial(hex));
    }
    if dotted {
        return None;
    }
    match suffix {
        ".smq" => Some(FileKind::Entry(hex)),
        ".json" => Some(FileKind::Sidecar(hex)),
        ".lock" => Some(FileKind::Lock(hex)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let mut h = [0u8; 32];
        for (i, b) in h.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37).wrapping_add(5);
        }
        let s = to_hex(&h);
        assert_eq!(s.len(), 64);
        assert_eq!(from_hex(&s), Some(h));
        assert_eq!(from_hex(&s.to_uppercase()), None);
        assert_eq!(from_hex(&s[..63]), None);
    }

    #[test]
    fn classify_names() {
        let hex = "ab".repeat(32);
        assert_eq!(
            classify(&format!("{hex}.smq")),
            Some(FileKind::Entry(hex.clone()))
        );
        assert_eq!(
            classify(&format!("{hex}.lock")),
            Some(FileKind::Lock(hex.clone()))
        );
        assert_eq!(
            classify(&format!("{hex}.partial")),
            Some(FileKind::Partial(hex.clone()))
        );
        assert_eq!(
            classify(&format!(".{hex}.partial.tmp-12-0")),
            Some(FileKind::Partial(hex.clone()))
        );
        assert_eq!(classify(&format!(".{hex}.smq")), None);
        assert_eq!(classify(&format!("{hex}.txt")), None);
        assert_eq!(classify("CACHEDIR.TAG"), None);
        assert_eq!(classify(&format!("{}.smq", "AB".repeat(32))), None);
    }

    #[test]
    fn version_dir_names() {
        assert_eq!(version_dir_name(1, 1), "v1.1");
        assert!(is_version_dir_name("v1.1"));
        assert!(is_version_dir_name("v0.12"));
        assert!(!is_version_dir_name("v1"));
        assert!(!is_version_dir_name("vx.1"));
        assert!(!is_version_dir_name("stats"));
    }
}
