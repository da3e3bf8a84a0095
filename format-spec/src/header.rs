//! The fixed 256-byte header at offset 0 (SPEC.md §2): where every section is, how long
//! the file is, and blake3 hashes that let a reader trust the rest before using it.

use crate::error::{Error, Result};

pub const MAGIC: [u8; 8] = *b"\x89SMQ\r\n\x1a\n";
pub const FORMAT_MAJOR: u16 = 1;
pub const FORMAT_MINOR: u16 = 0;
pub const HEADER_LEN: usize = 256;
/// Bytes of the header covered by `header_blake3` (everything before the hash itself).
pub const HEADER_HASHED_LEN: usize = 224;
/// Alignment of every tensor offset inside the data section.
pub const TENSOR_ALIGNMENT: u64 = 64;
/// Alignment of the data section's start in the file (a page).
pub const DATA_ALIGNMENT: u64 = 4096;

/// A byte range of the file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Section {
    pub offset: u64,
    pub len: u64,
}

impl Section {
    /// End offset, `None` on overflow.
    pub fn end(&self) -> Option<u64> {
        self.offset.checked_add(self.len)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub major: u16,
    pub minor: u16,
    pub flags: u32,
    pub file_len: u64,
    pub data: Section,
    /// The zstd-compressed manifest as stored.
    pub manifest: Section,
    /// Size of the manifest after decompression.
    pub manifest_raw_len: u64,
    pub metadata: Section,
    pub metadata_raw_len: u64,
    /// blake3 of the stored (compressed) manifest bytes.
    pub manifest_blake3: [u8; 32],
    /// blake3 of the stored (compressed) metadata bytes.
    pub metadata_blake3: [u8; 32],
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..10].copy_from_slice(&self.major.to_le_bytes());
        b[10..12].copy_from_slice(&self.minor.to_le_bytes());
        b[12..16].copy_from_slice(&self.flags.to_le_bytes());
        let u64s = [
            self.file_len,
            self.data.offset,
            self.data.len,
            self.manifest.offset,
            self.manifest.len,
            self.manifest_raw_len,
            self.metadata.offset,
            self.metadata.len,
            self.metadata_raw_len,
        ];
        for (i, v) in u64s.iter().enumerate() {
            let at = 16 + 8 * i;
            b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        b[88..120].copy_from_slice(&self.manifest_blake3);
        b[120..152].copy_from_slice(&self.metadata_blake3);
        let hash = blake3::hash(&b[..HEADER_HASHED_LEN]);
        b[HEADER_HASHED_LEN..].copy_from_slice(hash.as_bytes());
        b
    }

    /// Parses and checks a header: magic, major version, header hash, reserved bytes.
    /// Section bounds are checked against the file by the reader.
    pub fn decode(b: &[u8]) -> Result<Header> {
        if b.len() < HEADER_LEN {
            return Err(Error::TooShort(b.len() as u64));
        }
        check_magic(&b[0..8])?;
        let u16_at = |at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
        let u64_at = |at: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(a)
        };
        let major = u16_at(8);
        let minor = u16_at(10);
        // Refuse an unknown major before anything else: its header may differ entirely.
        if major != FORMAT_MAJOR {
            return Err(Error::UnsupportedMajor {
                major,
                minor,
                supported: FORMAT_MAJOR,
            });
        }
        if blake3::hash(&b[..HEADER_HASHED_LEN]).as_bytes()[..] != b[HEADER_HASHED_LEN..HEADER_LEN]
        {
            return Err(Error::HashMismatch {
                what: "header".into(),
            });
        }
        let flags = u32::from_le_bytes([b[12], b[13], b[14], b[15]]);
        if flags != 0 {
            return Err(Error::invalid(format!(
                "unknown header flags {flags:#x} (version 1 defines none)"
            )));
        }
        if b[152..HEADER_HASHED_LEN].iter().any(|&x| x != 0) {
            return Err(Error::invalid("reserved header bytes are not zero"));
        }
        let mut manifest_blake3 = [0u8; 32];
        manifest_blake3.copy_from_slice(&b[88..120]);
        let mut metadata_blake3 = [0u8; 32];
        metadata_blake3.copy_from_slice(&b[120..152]);
        Ok(Header {
            major,
            minor,
            flags,
            file_len: u64_at(16),
            data: Section {
                offset: u64_at(24),
                len: u64_at(32),
            },
            manifest: Section {
                offset: u64_at(40),
                len: u64_at(48),
            },
            manifest_raw_len: u64_at(56),
            metadata: Section {
                offset: u64_at(64),
                len: u64_at(72),
            },
            metadata_raw_len: u64_at(80),
            manifest_blake3,
            metadata_blake3,
        })
    }
}

/// The magic's bytes are chosen so that common corruptions are recognisable: the high
/// bit of 0x89 is lost by 7-bit transfers, and `\r\n` / `\n` change under line-ending
/// conversion.
fn check_magic(m: &[u8]) -> Result<()> {
    if m == MAGIC {
        return Ok(());
    }
    let mangled = (m[0] == 0x09 && m[1..4] == MAGIC[1..4])
        || (m[0] == 0x89 && &m[1..4] == b"SMQ" && m[4..] != MAGIC[4..]);
    if mangled {
        Err(Error::MangledMagic)
    } else {
        Err(Error::BadMagic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Header {
        Header {
            major: FORMAT_MAJOR,
            minor: FORMAT_MINOR,
            flags: 0,
            file_len: 10_000,
            data: Section {
                offset: 4096,
                len: 5000,
            },
            manifest: Section {
                offset: 9096,
                len: 500,
            },
            manifest_raw_len: 2000,
            metadata: Section {
                offset: 9596,
                len: 404,
            },
            metadata_raw_len: 900,
            manifest_blake3: [7; 32],
            metadata_blake3: [9; 32],
        }
    }

    #[test]
    fn round_trip() {
        let h = sample();
        assert_eq!(Header::decode(&h.encode()).unwrap(), h);
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let bytes = sample().encode();
        for i in 0..HEADER_LEN {
            let mut b = bytes;
            b[i] ^= 0x01;
            assert!(Header::decode(&b).is_err(), "flip at byte {i} accepted");
        }
    }

    #[test]
    fn future_major_is_refused_by_name() {
        let mut h = sample();
        h.major = 2;
        let err = Header::decode(&h.encode()).unwrap_err();
        assert!(matches!(err, Error::UnsupportedMajor { major: 2, .. }));
    }

    #[test]
    fn newer_minor_is_read() {
        let mut h = sample();
        h.minor = 7;
        assert_eq!(Header::decode(&h.encode()).unwrap().minor, 7);
    }

    #[test]
    fn text_mode_mangling_is_named() {
        let mut b = sample().encode();
        b[4] = b'\n';
        assert!(matches!(Header::decode(&b), Err(Error::MangledMagic)));
    }
}
