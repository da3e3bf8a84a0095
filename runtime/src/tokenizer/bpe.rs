//! Byte-level BPE: merge ranks from `tokenizer.ggml.merges` and the merge loop run on each
//! pre-tokenized word, lowest rank first (ties: leftmost pair), as llama.cpp does.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use smq_format::TokenizerSpec;

use super::vocab::{fnv1a, table_size, Vocab, FNV_OFFSET};
use super::TokenizerError;

/// `"left right"` merge strings in one blob, indexed by a hash of the whole string, so a
/// pair lookup needs no allocation.
pub(crate) struct Merges {
    blob: Vec<u8>,
    offsets: Vec<u32>,
    /// Byte position of the separating space in each merge; `u32::MAX` for malformed
    /// merges, which can never match.
    split: Vec<u32>,
    /// `rank + 1` per slot, 0 for empty.
    index: Vec<u32>,
    mask: usize,
}

impl Merges {
    pub fn from_spec(spec: &TokenizerSpec) -> Result<Merges, TokenizerError> {
        let n = spec.n_merges();
        if n >= i32::MAX as usize {
            return Err(TokenizerError::Invalid(format!("{n} merges is too many")));
        }
        let size = table_size(n)?;
        let mut merges = Merges {
            blob: Vec::with_capacity(spec.merge_bytes.len()),
            offsets: Vec::with_capacity(n + 1),
            split: Vec::with_capacity(n),
            index: vec![0; size],
            mask: size - 1,
        };
        merges.offsets.push(0);
        for i in 0..n {
            let m = spec
                .merge(i)
                .ok_or_else(|| TokenizerError::Invalid(format!("merge {i} has bad offsets")))?;
            merges.blob.extend_from_slice(m);
            let end = u32::try_from(merges.blob.len())
                .map_err(|_| TokenizerError::Invalid("merges exceed 4 GiB".into()))?;
            merges.offsets.push(end);
            // The separator is the first space after the first byte, as in llama.cpp.
            let split = m.iter().skip(1).position(|&b| b == b' ').map(|p| p + 1);
            merges.split.push(split.map_or(u32::MAX, |s| s as u32));
            if split.is_some() {
                merges.insert(i as u32, m);
            }
        }
        Ok(merges)
    }

    fn merge(&self, rank: u32) -> (&[u8], &[u8]) {
        let i = rank as usize;
        let m = &self.blob[self.offsets[i] as usize..self.offsets[i + 1] as usize];
        let s = self.split[i] as usize;
        (&m[..s], &m[s + 1..])
    }

    /// Earlier merges win over later duplicates.
    fn insert(&mut self, rank: u32, text: &[u8]) {
        let mut slot = fnv1a(FNV_OFFSET, text) as usize & self.mask;
        loop {
            match self.index[slot] {
                0 => {
                    self.index[slot] = rank + 1;
                    return;
                }
                other => {
                    let (l, r) = self.merge(other - 1);
                    if l.len() + 1 + r.len() == text.len()
                        && text.starts_with(l)
                        && text.ends_with(r)
                        && text[l.len()] == b' '
                    {
                        return;
                    }
                }
            }
            slot = (slot + 1) & self.mask;
        }
    }

    pub fn rank(&self, left: &[u8], right: &[u8]) -> Option<u32> {
        let h = fnv1a(fnv1a(fnv1a(FNV_OFFSET, left), b" "), right);
        let mut slot = h as usize & self.mask;
        loop {
            match self.index[slot] {
                0 => return None,
                other => {
                    let (l, r) = self.merge(other - 1);
                    if l == left && r == right {
                        return Some(other - 1);
                    }
                }
            }
            slot = (slot + 1) & self.mask;
        }
    }
}

#[derive(Clone, Copy)]
struct Symbol {
    start: u32,
    len: u32,
    prev: i32,
    next: i32,
}

/// Reusable buffers for [`tokenize_word`].
#[derive(Default)]
pub(crate) struct BpeScratch {
    symbols: Vec<Symbol>,
    /// (rank, left, right, byte length of the pair when queued).
    queue: BinaryHeap<Reverse<(u32, u32, u32, u32)>>,
}

fn push_pair(word: &[u8], merges: &Merges, s: &mut BpeScratch, left: i32, right: i32) {
    if left < 0 || right < 0 {
        return;
    }
    let (l, r) = (s.symbols[left as usize], s.symbols[right as usize]);
    let lt = &word[l.start as usize..(l.start + l.len) as usize];
    let rt = &word[r.start as usize..(r.start + r.len) as usize];
    if let Some(rank) = merges.rank(lt, rt) {
        s.queue
            .push(Reverse((rank, left as u32, right as u32, l.len + r.len)));
    }
}

/// Tokenizes one pre-tokenized, GPT-2 byte-encoded word and appends the ids to `out`.
pub(crate) fn tokenize_word(
    vocab: &Vocab,
    merges: &Merges,
    ignore_merges: bool,
    word: &str,
    s: &mut BpeScratch,
    out: &mut Vec<u32>,
) {
    if ignore_merges {
        if let Some(id) = vocab.lookup(word.as_bytes()) {
            out.push(id);
            return;
        }
    }
    let bytes = word.as_bytes();
    s.symbols.clear();
    s.queue.clear();
    let n_chars = word.chars().count();
    for (i, (start, c)) in word.char_indices().enumerate() {
        s.symbols.push(Symbol {
            start: start as u32,
            len: c.len_utf8() as u32,
            prev: i as i32 - 1,
            next: if i + 1 == n_chars { -1 } else { i as i32 + 1 },
        });
    }
    for i in 1..s.symbols.len() {
        push_pair(bytes, merges, s, i as i32 - 1, i as i32);
    }

    while let Some(Reverse((_, left, right, size))) = s.queue.pop() {
        let (l, r) = (s.symbols[left as usize], s.symbols[right as usize]);
        // Stale: one side was merged away or has grown since the pair was queued.
        if l.len == 0 || r.len == 0 || l.len + r.len != size {
            continue;
        }
        let merged = &mut s.symbols[left as usize];
        merged.len += r.len;
        merged.next = r.next;
        let prev = merged.prev;
        s.symbols[right as usize].len = 0;
        if r.next >= 0 {
            s.symbols[r.next as usize].prev = left as i32;
        }
        push_pair(bytes, merges, s, prev, left as i32);
        push_pair(bytes, merges, s, left as i32, r.next);
    }

    for sym in s.symbols.iter().filter(|sym| sym.len > 0) {
        let text = &bytes[sym.start as usize..(sym.start + sym.len) as usize];
        match vocab.lookup(text) {
            Some(id) => out.push(id),
            // A piece with no token of its own: llama.cpp looks its bytes up one by one
            // (only ASCII ones can match) and drops the rest.
            None => out.extend(text.iter().filter_map(|&b| vocab.lookup(&[b]))),
        }
    }
}
