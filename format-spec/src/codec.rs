//! How the manifest and metadata sections are encoded: bincode 2 (serde) with fixed-width
//! little-endian integers, then zstd. SPEC.md §4 states these bytes exactly so that other
//! languages can read SMQ without the bincode crate.

use std::io::Read;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

/// Largest decoded size a reader accepts for one section (a bound against decompression
/// bombs and lying headers; real manifests and metadata are a few MB).
pub const MAX_SECTION_RAW_LEN: u64 = 256 << 20;

/// zstd level used by the writer (any level decodes the same). Level 1: on a 262k-token
/// vocabulary it compresses about 1.6x faster than level 3 for 10% more bytes (0.4% of
/// the file), and the sections are encoded while an import copies the tensor data.
const ZSTD_LEVEL: i32 = 1;

type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Fixint,
    bincode::config::Limit<{ MAX_SECTION_RAW_LEN as usize }>,
>;

fn config() -> Config {
    bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
        .with_limit::<{ MAX_SECTION_RAW_LEN as usize }>()
}

/// Encodes `value` and compresses it; returns (stored bytes, decoded length).
pub fn encode_section<T: Serialize>(value: &T, what: &str) -> Result<(Vec<u8>, u64)> {
    let raw = bincode::serde::encode_to_vec(value, config())
        .map_err(|e| Error::Write(format!("encoding the {what}: {e}")))?;
    let stored = zstd::bulk::compress(&raw, ZSTD_LEVEL)
        .map_err(|e| Error::Write(format!("compressing the {what}: {e}")))?;
    Ok((stored, raw.len() as u64))
}

/// Decompresses and decodes a section, streaming (no buffer of the whole decompressed
/// section is held next to the decoded value). The stream must be exactly `raw_len`
/// bytes, and every byte must be used, unless `allow_trailing`: a file of a newer minor
/// version may append fields at the end of a section, which this reader then ignores.
pub fn decode_section<T: DeserializeOwned>(
    stored: &[u8],
    raw_len: u64,
    what: &str,
    allow_trailing: bool,
) -> Result<T> {
    if raw_len > MAX_SECTION_RAW_LEN {
        return Err(Error::invalid(format!(
            "{what} claims {raw_len} decoded bytes (limit {MAX_SECTION_RAW_LEN})"
        )));
    }
    let bad = |msg: String| Error::invalid(format!("{what} {msg}"));
    let mut stream = zstd::stream::read::Decoder::with_buffer(stored)
        .map_err(|e| bad(format!("does not decompress: {e}")))?;
    let mut section = (&mut stream).take(raw_len);
    let value = bincode::serde::decode_from_std_read(&mut section, config())
        .map_err(|e| bad(format!("does not decode: {e}")))?;
    let unread = section.limit();
    if unread != 0 && !allow_trailing {
        return Err(bad(format!("has {unread} trailing bytes")));
    }
    // The rest of the stream (ignored fields of a newer minor) must end exactly at
    // `raw_len`.
    let drained = std::io::copy(&mut section, &mut std::io::sink())
        .map_err(|e| bad(format!("does not decompress: {e}")))?;
    let mut extra = [0u8; 1];
    let more = stream
        .read(&mut extra)
        .map_err(|e| bad(format!("does not decompress: {e}")))?;
    if drained != unread || more != 0 {
        return Err(bad(format!(
            "does not decompress to the {raw_len} bytes the header states"
        )));
    }
    Ok(value)
}
