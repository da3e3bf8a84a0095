//! SentencePiece-style BPE as llama.cpp runs it for `llama` vocabularies: start from single
//! characters, repeatedly merge the adjacent pair whose concatenation is the vocabulary
//! token with the highest score (ties: leftmost pair), then fall back to `<0xXX>` byte
//! tokens for characters that never became a token.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::vocab::Vocab;

#[derive(Clone, Copy)]
struct Symbol {
    start: u32,
    len: u32,
    prev: i32,
    next: i32,
}

struct Bigram {
    score: f32,
    left: u32,
    right: u32,
    size: u32,
}

impl Ord for Bigram {
    /// The heap's top is the highest score, and among equal scores the leftmost pair.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}

/// Token for each byte value: `<0xXX>`, else the one-byte text itself (llama.cpp's order).
pub(crate) fn byte_tokens(vocab: &Vocab) -> [Option<u32>; 256] {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut table = [None; 256];
    for (b, slot) in table.iter_mut().enumerate() {
        let name = [b'<', b'0', b'x', HEX[b >> 4], HEX[b & 15], b'>'];
        *slot = vocab.lookup(&name).or_else(|| vocab.lookup(&[b as u8]));
    }
    table
}

#[derive(Default)]
pub(crate) struct SpmScratch {
    symbols: Vec<Symbol>,
    queue: BinaryHeap<Bigram>,
}

fn push_pair(text: &[u8], vocab: &Vocab, s: &mut SpmScratch, left: i32, right: i32) {
    if left < 0 || right < 0 {
        return;
    }
    let (l, r) = (s.symbols[left as usize], s.symbols[right as usize]);
    // Adjacent symbols are contiguous in the text.
    let pair = &text[l.start as usize..(r.start + r.len) as usize];
    if let Some(id) = vocab.lookup(pair) {
        s.queue.push(Bigram {
            score: vocab.score(id),
            left: left as u32,
            right: right as u32,
            size: pair.len() as u32,
        });
    }
}

/// Tokenizes `text` (spaces already escaped to U+2581) and appends the ids to `out`.
/// A byte with no token at all becomes `unk` if the vocabulary has one, else is dropped.
pub(crate) fn tokenize(
    vocab: &Vocab,
    bytes_to_tokens: &[Option<u32>; 256],
    unk: Option<u32>,
    text: &str,
    s: &mut SpmScratch,
    out: &mut Vec<u32>,
) {
    let bytes = text.as_bytes();
    s.symbols.clear();
    s.queue.clear();
    let n_chars = text.chars().count();
    for (i, (start, c)) in text.char_indices().enumerate() {
        s.symbols.push(Symbol {
            start: start as u32,
            len: c.len_utf8() as u32,
            prev: i as i32 - 1,
            next: if i + 1 == n_chars { -1 } else { i as i32 + 1 },
        });
    }
    for i in 1..s.symbols.len() {
        push_pair(bytes, vocab, s, i as i32 - 1, i as i32);
    }

    while let Some(b) = s.queue.pop() {
        let (l, r) = (s.symbols[b.left as usize], s.symbols[b.right as usize]);
        if l.len == 0 || r.len == 0 || l.len + r.len != b.size {
            continue;
        }
        let merged = &mut s.symbols[b.left as usize];
        merged.len += r.len;
        merged.next = r.next;
        let prev = merged.prev;
        s.symbols[b.right as usize].len = 0;
        if r.next >= 0 {
            s.symbols[r.next as usize].prev = b.left as i32;
        }
        push_pair(bytes, vocab, s, prev, b.left as i32);
        push_pair(bytes, vocab, s, b.left as i32, r.next);
    }

    // Every merged symbol is a token by construction; only single characters can miss.
    for sym in s.symbols.iter().filter(|sym| sym.len > 0) {
        let piece = &bytes[sym.start as usize..(sym.start + sym.len) as usize];
        match vocab.lookup(piece) {
            Some(id) => out.push(id),
            None => out.extend(
                piece
                    .iter()
                    .filter_map(|&b| bytes_to_tokens[b as usize].or(unk)),
            ),
        }
    }
}
