//! The invariants a manifest must satisfy before any tensor byte is trusted, checked in
//! one place (SPEC.md §8). Both the reader and the writer run it.

use std::collections::HashSet;

use crate::error::{Error, Result};
use crate::header::TENSOR_ALIGNMENT;
use crate::manifest::{Manifest, Metadata, MetadataValue, TokenizerSpec, MAX_ARRAY_DEPTH};

/// Checks the tensor directory against a data section of `data_len` bytes, and the
/// internal consistency of the tokenizer and config.
pub fn validate_manifest(m: &Manifest, data_len: u64) -> Result<()> {
    let mut names = HashSet::with_capacity(m.tensors.len());
    let mut ranges = Vec::with_capacity(m.tensors.len());
    for t in &m.tensors {
        let bad = |msg: String| Error::invalid(format!("tensor '{}': {msg}", t.name));
        if t.name.is_empty() {
            return Err(Error::invalid("a tensor has an empty name"));
        }
        if !names.insert(t.name.as_str()) {
            return Err(bad("duplicate name".into()));
        }
        if t.shape.is_empty() || t.shape.len() > 4 {
            return Err(bad(format!(
                "{} dimensions (expected 1 to 4)",
                t.shape.len()
            )));
        }
        let expected = t.ggml_type.tensor_bytes(&t.shape).ok_or_else(|| {
            bad(format!(
                "shape {:?} is not a whole number of {} blocks or overflows",
                t.shape, t.ggml_type
            ))
        })?;
        if expected != t.size {
            return Err(bad(format!(
                "byte length {} does not match shape {:?} of type {} ({expected} bytes)",
                t.size, t.shape, t.ggml_type
            )));
        }
        if !t.offset.is_multiple_of(TENSOR_ALIGNMENT) {
            return Err(bad(format!(
                "offset {} is not {TENSOR_ALIGNMENT}-byte aligned",
                t.offset
            )));
        }
        let end = t
            .offset
            .checked_add(t.size)
            .filter(|&e| e <= data_len)
            .ok_or_else(|| {
                bad(format!(
                    "bytes lie outside the data section ({data_len} bytes)"
                ))
            })?;
        ranges.push((t.offset, end, t.name.as_str()));
    }
    ranges.sort_unstable();
    for w in ranges.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(Error::invalid(format!(
                "tensors '{}' and '{}' overlap",
                w[0].2, w[1].2
            )));
        }
    }
    if let Some(tok) = &m.tokenizer {
        validate_tokenizer(tok)?;
    }
    let c = &m.config;
    if let (Some(h), Some(kv)) = (c.head_count, c.head_count_kv) {
        if h == 0 || kv == 0 || !h.is_multiple_of(kv) {
            return Err(Error::invalid(format!(
                "config: head_count {h} is not a positive multiple of head_count_kv {kv}"
            )));
        }
    }
    Ok(())
}

fn validate_blob(what: &str, blob: &[u8], offsets: &[u32]) -> Result<()> {
    if offsets.is_empty() {
        return if blob.is_empty() {
            Ok(())
        } else {
            Err(Error::invalid(format!(
                "tokenizer {what}: bytes without offsets"
            )))
        };
    }
    if offsets[0] != 0 || *offsets.last().unwrap_or(&0) as usize != blob.len() {
        return Err(Error::invalid(format!(
            "tokenizer {what}: offsets do not span the byte blob"
        )));
    }
    if offsets.windows(2).any(|w| w[1] < w[0]) {
        return Err(Error::invalid(format!(
            "tokenizer {what}: offsets are not increasing"
        )));
    }
    Ok(())
}

fn validate_tokenizer(t: &TokenizerSpec) -> Result<()> {
    validate_blob("tokens", &t.token_bytes, &t.token_offsets)?;
    validate_blob("merges", &t.merge_bytes, &t.merge_offsets)?;
    let n = t.n_tokens();
    for (what, len) in [
        ("scores", t.scores.len()),
        ("token types", t.token_types.len()),
    ] {
        if len != 0 && len != n {
            return Err(Error::invalid(format!(
                "tokenizer: {len} {what} for {n} tokens"
            )));
        }
    }
    let ids = [
        ("bos", t.bos_id),
        ("eos", t.eos_id),
        ("eot", t.eot_id),
        ("unknown", t.unknown_id),
        ("padding", t.padding_id),
        ("separator", t.separator_id),
    ];
    for (what, id) in ids {
        if let Some(id) = id {
            if id as usize >= n {
                return Err(Error::invalid(format!(
                    "tokenizer: {what} id {id} is outside the vocabulary ({n} tokens)"
                )));
            }
        }
    }
    Ok(())
}

/// Metadata keys must be unique, as in GGUF, and arrays well-formed (SPEC.md §5.8).
pub fn validate_metadata(m: &Metadata) -> Result<()> {
    let mut keys = HashSet::with_capacity(m.entries.len());
    for e in &m.entries {
        if !keys.insert(e.key.as_str()) {
            return Err(Error::invalid(format!(
                "metadata key '{}' appears twice",
                e.key
            )));
        }
        validate_value(&e.key, &e.value, 0)?;
    }
    Ok(())
}

/// Arrays nest at most `MAX_ARRAY_DEPTH` deep and hold items of their declared type.
fn validate_value(key: &str, v: &MetadataValue, depth: usize) -> Result<()> {
    let MetadataValue::Array(a) = v else {
        return Ok(());
    };
    let bad = |msg: String| Error::invalid(format!("metadata key '{key}': {msg}"));
    if depth >= MAX_ARRAY_DEPTH {
        return Err(bad(format!("arrays nested deeper than {MAX_ARRAY_DEPTH}")));
    }
    if a.element_type > 12 {
        return Err(bad(format!(
            "unknown array element type {}",
            a.element_type
        )));
    }
    for item in &a.items {
        if item.type_id() != a.element_type {
            return Err(bad(format!(
                "array of type {} holds a value of type {}",
                a.element_type,
                item.type_id()
            )));
        }
        validate_value(key, item, depth + 1)?;
    }
    Ok(())
}
