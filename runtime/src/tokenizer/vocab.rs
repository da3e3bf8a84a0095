//! The token table: texts in one owned blob, per-token score and attributes, and an
//! open-addressing hash index from text to id. A 262k-token vocabulary costs a handful of
//! large allocations instead of one small allocation per token.

use smq_format::TokenizerSpec;

use super::TokenizerError;

/// Token attributes, llama.cpp's `llama_token_attr` bits (the GGUF token types map onto
/// them one to one).
pub(crate) mod attr {
    pub const UNKNOWN: u16 = 1 << 0;
    pub const UNUSED: u16 = 1 << 1;
    pub const NORMAL: u16 = 1 << 2;
    pub const CONTROL: u16 = 1 << 3;
    pub const USER_DEFINED: u16 = 1 << 4;
    pub const BYTE: u16 = 1 << 5;
}

/// GGUF `tokenizer.ggml.token_type` values to attribute bits; unknown values become
/// "undefined" (no bit), which renders as nothing, like llama.cpp.
fn attr_from_type(t: i32) -> u16 {
    match t {
        1 => attr::NORMAL,
        2 => attr::UNKNOWN,
        3 => attr::CONTROL,
        4 => attr::USER_DEFINED,
        5 => attr::UNUSED,
        6 => attr::BYTE,
        _ => 0,
    }
}

/// FNV-1a: short keys, no allocation, good enough spread for an open-addressing table.
pub(crate) fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

pub(crate) const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// Power-of-two table size with load factor at most one half.
pub(crate) fn table_size(n: usize) -> Result<usize, TokenizerError> {
    n.checked_mul(2)
        .and_then(|x| x.max(16).checked_next_power_of_two())
        .ok_or_else(|| TokenizerError::Invalid(format!("table for {n} entries is too large")))
}

pub(crate) struct Vocab {
    blob: Vec<u8>,
    offsets: Vec<u32>,
    scores: Vec<f32>,
    attrs: Vec<u16>,
    /// `id + 1` per slot, 0 for an empty slot.
    index: Vec<u32>,
    mask: usize,
}

impl Vocab {
    pub fn from_spec(spec: &TokenizerSpec) -> Result<Vocab, TokenizerError> {
        Vocab::from_parts(
            &spec.token_types,
            spec.token_bytes.clone(),
            spec.token_offsets.clone(),
            spec.scores.clone(),
        )
    }

    /// Like [`Vocab::from_spec`], taking over the spec's texts and scores instead of
    /// copying them (a 262k-token vocabulary is several MB).
    pub fn from_owned(spec: &mut TokenizerSpec) -> Result<Vocab, TokenizerError> {
        let blob = std::mem::take(&mut spec.token_bytes);
        let offsets = std::mem::take(&mut spec.token_offsets);
        let scores = std::mem::take(&mut spec.scores);
        let types = std::mem::take(&mut spec.token_types);
        Vocab::from_parts(&types, blob, offsets, scores)
    }

    /// Builds the table from token texts (`blob` + `offsets`), scores and GGUF token types.
    fn from_parts(
        types: &[i32],
        src_blob: Vec<u8>,
        src_offsets: Vec<u32>,
        src_scores: Vec<f32>,
    ) -> Result<Vocab, TokenizerError> {
        let n = src_offsets.len().saturating_sub(1);
        if n == 0 {
            return Err(TokenizerError::Invalid("the vocabulary is empty".into()));
        }
        if n >= i32::MAX as usize {
            return Err(TokenizerError::Invalid(format!("{n} tokens is too many")));
        }
        if !src_scores.is_empty() && src_scores.len() < n {
            return Err(TokenizerError::Invalid(format!(
                "{} scores for {n} tokens",
                src_scores.len()
            )));
        }
        if !types.is_empty() && types.len() < n {
            return Err(TokenizerError::Invalid(format!(
                "{} token types for {n} tokens",
                types.len()
            )));
        }
        let text = |i: usize| -> Option<&[u8]> {
            let (s, e) = (
                *src_offsets.get(i)? as usize,
                *src_offsets.get(i + 1)? as usize,
            );
            src_blob.get(s..e)
        };
        let well_formed = (0..n).all(|i| text(i).is_some_and(|t| !t.is_empty()));
        let (blob, offsets) = if well_formed {
            (src_blob, src_offsets)
        } else {
            // Copy the texts into a new blob; llama.cpp renames empty tokens to
            // `[EMPTY_<id>]` so that every token stays addressable by text.
            let mut blob = Vec::with_capacity(src_blob.len());
            let mut offsets = Vec::with_capacity(n + 1);
            offsets.push(0u32);
            for i in 0..n {
                let t = text(i)
                    .ok_or_else(|| TokenizerError::Invalid(format!("token {i} has bad offsets")))?;
                if t.is_empty() {
                    blob.extend_from_slice(format!("[EMPTY_{i}]").as_bytes());
                } else {
                    blob.extend_from_slice(t);
                }
                let end = u32::try_from(blob.len())
                    .map_err(|_| TokenizerError::Invalid("token texts exceed 4 GiB".into()))?;
                offsets.push(end);
            }
            (blob, offsets)
        };

        let scores = if src_scores.is_empty() {
            vec![0.0; n]
        } else {
            let mut s = src_scores;
            s.truncate(n);
            s
        };
        let attrs = if types.is_empty() {
            vec![attr::NORMAL; n]
        } else {
            types[..n].iter().map(|&t| attr_from_type(t)).collect()
        };

        let size = table_size(n)?;
        let mut vocab = Vocab {
            blob,
            offsets,
            scores,
            attrs,
            index: vec![0; size],
            mask: size - 1,
        };
        for id in 0..n as u32 {
            vocab.insert(id)?;
        }
        Ok(vocab)
    }

    fn insert(&mut self, id: u32) -> Result<(), TokenizerError> {
        let text = self.text(id);
        let mut slot = fnv1a(FNV_OFFSET, text) as usize & self.mask;
        loop {
            match self.index[slot] {
                0 => {
                    self.index[slot] = id + 1;
                    return Ok(());
                }
                other => {
                    if self.text(other - 1) == text {
                        return Err(TokenizerError::Invalid(format!(
                            "duplicate token {:?} has ids {} and {id}",
                            String::from_utf8_lossy(text),
                            other - 1
                        )));
                    }
                }
            }
            slot = (slot + 1) & self.mask;
        }
    }

    pub fn len(&self) -> usize {
        self.attrs.len()
    }

    /// Text of a token known to be in range.
    pub fn text(&self, id: u32) -> &[u8] {
        let i = id as usize;
        &self.blob[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    pub fn get_text(&self, id: u32) -> Option<&[u8]> {
        ((id as usize) < self.len()).then(|| self.text(id))
    }

    pub fn score(&self, id: u32) -> f32 {
        self.scores[id as usize]
    }

    pub fn attr(&self, id: u32) -> u16 {
        self.attrs[id as usize]
    }

    pub fn set_attr(&mut self, id: u32, value: u16) {
        self.attrs[id as usize] = value;
    }

    /// The id whose text is exactly `text`.
    pub fn lookup(&self, text: &[u8]) -> Option<u32> {
        let mut slot = fnv1a(FNV_OFFSET, text) as usize & self.mask;
        loop {
            match self.index[slot] {
                0 => return None,
                other => {
                    if self.text(other - 1) == text {
                        return Some(other - 1);
                    }
                }
            }
            slot = (slot + 1) & self.mask;
        }
    }
}
