//! Tokenizers built from a model's [`TokenizerSpec`], giving exactly llama.cpp's token ids:
//! byte-level BPE (`gpt2` vocabularies, with the pre-tokenizer named by
//! `tokenizer.ggml.pre`) and SentencePiece-style BPE (`llama` vocabularies, e.g. Gemma).
//!
//! Encoding runs in two passes, like llama.cpp: special-token texts are cut out of the
//! input first ([`special`]), then each remaining piece of text goes through the model's
//! own algorithm ([`bpe`] or [`spm`]).

mod bpe;
mod pretokenize;
mod special;
mod spm;
mod stream;
mod unicode;
mod vocab;

use std::borrow::Cow;

use smq_format::TokenizerSpec;

use self::pretokenize::PreConfig;
use self::special::Fragment;
use self::unicode::CpFlags;
use self::vocab::{attr, Vocab};

pub use self::stream::TextStream;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenizerError {
    #[error("unsupported tokenizer model {0:?} (supported: \"gpt2\", \"llama\")")]
    UnsupportedModel(String),
    #[error("unsupported pre-tokenizer {0:?}")]
    UnsupportedPre(String),
    #[error("invalid tokenizer: {0}")]
    Invalid(String),
}

enum Algorithm {
    Bpe {
        merges: bpe::Merges,
        pre: PreConfig,
    },
    Spm {
        byte_tokens: Box<[Option<u32>; 256]>,
    },
}

/// A loaded tokenizer. Immutable after loading; `encode` may run on several threads.
pub struct Tokenizer {
    vocab: Vocab,
    algorithm: Algorithm,
    bos: Option<u32>,
    eos: Option<u32>,
    unk: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    clean_spaces: bool,
    /// Sorted.
    eog: Vec<u32>,
    special_cache: Vec<u32>,
}

/// `id` if it names a token, else `None` (llama.cpp ignores out-of-range special ids).
fn in_range(id: Option<u32>, n: usize) -> Option<u32> {
    id.filter(|&i| (i as usize) < n)
}

impl Tokenizer {
    pub fn from_spec(spec: &TokenizerSpec) -> Result<Tokenizer, TokenizerError> {
        Tokenizer::build(spec, Vocab::from_spec)
    }

    /// Like [`Tokenizer::from_spec`], taking over the spec's token table instead of
    /// copying it: what a runtime that owns its manifest uses to keep load-time memory low.
    pub fn from_owned(mut spec: TokenizerSpec) -> Result<Tokenizer, TokenizerError> {
        let vocab = Vocab::from_owned(&mut spec)?;
        Tokenizer::build(&spec, |_| Ok(vocab))
    }

    /// `make_vocab` builds the token table; everything else comes from `spec` (whose
    /// token table may already have been taken).
    fn build(
        spec: &TokenizerSpec,
        make_vocab: impl FnOnce(&TokenizerSpec) -> Result<Vocab, TokenizerError>,
    ) -> Result<Tokenizer, TokenizerError> {
        // Defaults llama.cpp assumes per vocabulary kind when the metadata is silent.
        let (algorithm_kind, def_bos, def_eos, def_unk) = match spec.model.as_str() {
            "gpt2" => ("bpe", Some(11), Some(11), None),
            "llama" => ("spm", Some(1), Some(2), Some(0)),
            other => return Err(TokenizerError::UnsupportedModel(other.to_string())),
        };
        let pre = if algorithm_kind == "bpe" {
            Some(pretokenize::pre_config(spec.pre.as_deref())?)
        } else {
            None
        };

        let mut vocab = make_vocab(spec)?;
        let n = vocab.len();
        let pick =
            |given: Option<u32>, default: Option<u32>| in_range(given, n).or(in_range(default, n));
        let bos = pick(spec.bos_id, def_bos);
        let eos = pick(spec.eos_id, def_eos);
        let unk = pick(spec.unknown_id, def_unk);
        let eot = in_range(spec.eot_id, n);

        let (def_add_bos, def_space_prefix, clean_spaces) = match &pre {
            Some(p) => (p.add_bos, false, p.clean_spaces),
            None => (true, true, false),
        };
        let add_bos = spec.add_bos.unwrap_or(def_add_bos);
        let add_eos = spec.add_eos.unwrap_or(false);
        let add_space_prefix = spec.add_space_prefix.unwrap_or(def_space_prefix);
        if add_bos && bos.is_none() {
            return Err(TokenizerError::Invalid(
                "add_bos_token is true, but there is no BOS token".into(),
            ));
        }
        if add_eos && eos.is_none() {
            return Err(TokenizerError::Invalid(
                "add_eos_token is true, but there is no EOS token".into(),
            ));
        }

        let eog = special::detect_end_of_generation(&mut vocab, eos, eot);
        let special_cache = special::special_cache(&vocab);

        let algorithm = match pre {
            Some(pre) => Algorithm::Bpe {
                merges: bpe::Merges::from_spec(spec)?,
                pre,
            },
            None => Algorithm::Spm {
                byte_tokens: Box::new(spm::byte_tokens(&vocab)),
            },
        };
        Ok(Tokenizer {
            vocab,
            algorithm,
            bos,
            eos,
            unk,
            add_bos,
            add_eos,
            add_space_prefix,
            clean_spaces,
            eog,
            special_cache,
        })
    }

    /// Tokenizes as llama.cpp does. `add_special` applies the model's BOS/EOS rule;
    /// `parse_special` turns control-token texts (e.g. `<|im_start|>`) into their ids
    /// (user-defined tokens are always recognised, as in llama.cpp).
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Vec<u32> {
        let mut out = Vec::new();
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        let frags = special::partition(text, &self.special_cache, &self.vocab, parse_special);
        match &self.algorithm {
            Algorithm::Bpe { merges, pre } => self.encode_bpe(text, &frags, merges, pre, &mut out),
            Algorithm::Spm { byte_tokens } => self.encode_spm(text, &frags, byte_tokens, &mut out),
        }
        if add_special && self.add_eos {
            out.extend(self.eos);
        }
        out
    }

    fn encode_bpe(
        &self,
        text: &str,
        frags: &[Fragment],
        merges: &bpe::Merges,
        pre: &PreConfig,
        out: &mut Vec<u32>,
    ) {
        let mut scratch = bpe::BpeScratch::default();
        let mut word = String::new();
        for &frag in frags {
            let (start, end) = match frag {
                Fragment::Token(id) => {
                    out.push(id);
                    continue;
                }
                Fragment::Text(s, e) => (s, e),
            };
            let cpts: Vec<char> = text[start..end].chars().collect();
            let flags: Vec<CpFlags> = cpts.iter().map(|&c| CpFlags::of(c)).collect();
            let mut pos = 0;
            let mut utf8 = [0u8; 4];
            for len in pretokenize::split(pre.stages, &cpts, &flags) {
                word.clear();
                for &c in &cpts[pos..pos + len] {
                    unicode::byte_encode_into(c.encode_utf8(&mut utf8), &mut word);
                }
                pos += len;
                bpe::tokenize_word(
                    &self.vocab,
                    merges,
                    pre.ignore_merges,
                    &word,
                    &mut scratch,
                    out,
                );
            }
        }
    }

    fn encode_spm(
        &self,
        text: &str,
        frags: &[Fragment],
        byte_tokens: &[Option<u32>; 256],
        out: &mut Vec<u32>,
    ) {
        let mut scratch = spm::SpmScratch::default();
        let mut escaped = String::new();
        // The space prefix goes before text that starts the input or follows a special token.
        let mut after_special = true;
        for &frag in frags {
            match frag {
                Fragment::Token(id) => {
                    out.push(id);
                    after_special = true;
                }
                Fragment::Text(s, e) => {
                    escaped.clear();
                    if self.add_space_prefix && after_special {
                        escaped.push('\u{2581}');
                    }
                    for c in text[s..e].chars() {
                        escaped.push(if c == ' ' { '\u{2581}' } else { c });
                    }
                    spm::tokenize(
                        &self.vocab,
                        byte_tokens,
                        self.unk,
                        &escaped,
                        &mut scratch,
                        out,
                    );
                    after_special = false;
                }
            }
        }
    }

    /// The bytes token `id` prints as, control and unknown tokens included only when
    /// `special` is true (llama.cpp's `token_to_piece`). `None` if `id` is out of range.
    pub fn token_piece(&self, id: u32, special: bool) -> Option<Cow<'_, [u8]>> {
        let text = self.vocab.get_text(id)?;
        let a = self.vocab.attr(id);
        let special_attrs = attr::UNKNOWN | attr::CONTROL;
        if !special && a & special_attrs != 0 {
            return Some(Cow::Borrowed(&[]));
        }
        if a & (special_attrs | attr::USER_DEFINED) != 0 {
            return Some(Cow::Borrowed(text));
        }
        if a & attr::NORMAL != 0 {
            return Some(match self.algorithm {
                Algorithm::Spm { .. } => unescape_spaces(text),
                Algorithm::Bpe { .. } => Cow::Owned(gpt2_decode(text)),
            });
        }
        if a & attr::BYTE != 0 {
            return Some(Cow::Owned(vec![byte_token_value(text)]));
        }
        // Unused and undefined tokens print nothing.
        Some(Cow::Borrowed(&[]))
    }

    /// The bytes token `id` stands for when printed: GPT-2 byte decoding, `▁` as space,
    /// `<0xAB>` as the byte; control tokens print nothing.
    pub fn token_bytes(&self, id: u32) -> Option<Cow<'_, [u8]>> {
        self.token_piece(id, false)
    }

    /// The token's stored text, unprocessed.
    pub fn token_text(&self, id: u32) -> Option<&[u8]> {
        self.vocab.get_text(id)
    }

    /// The text of `ids` as llama.cpp's detokenizer gives it without special tokens: the
    /// space prefix (if the model adds one) is removed from the first token, and for
    /// vocabularies that ask for it spaces before punctuation are cleaned up. Bytes that
    /// are not UTF-8 become U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        let mut bytes = Vec::new();
        let mut strip_space = self.add_space_prefix;
        for &id in ids {
            if let Some(piece) = self.token_piece(id, false) {
                let piece: &[u8] = &piece;
                let piece = match piece {
                    [b' ', rest @ ..] if strip_space => rest,
                    p => p,
                };
                bytes.extend_from_slice(piece);
            }
            strip_space = false;
        }
        if self.clean_spaces {
            clean_up_spaces(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The id of the token whose text is exactly `text`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.vocab.lookup(text.as_bytes())
    }

    pub fn n_vocab(&self) -> usize {
        self.vocab.len()
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Whether `encode(.., add_special = true, ..)` prepends BOS.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// Ids that end a turn or generation: EOS, EOT and the control tokens llama.cpp treats
    /// as such by name (e.g. `<|im_end|>`, `<end_of_turn>`).
    pub fn is_end_of_generation(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// All end-of-generation ids, sorted.
    pub fn end_of_generation_ids(&self) -> &[u32] {
        &self.eog
    }

    /// Whether `id` is a control token (prints nothing by default).
    pub fn is_control(&self, id: u32) -> bool {
        (id as usize) < self.vocab.len() && self.vocab.attr(id) & attr::CONTROL != 0
    }
}

fn unescape_spaces(text: &[u8]) -> Cow<'_, [u8]> {
    const ESCAPED: &[u8] = "\u{2581}".as_bytes();
    if !text.windows(ESCAPED.len()).any(|w| w == ESCAPED) {
        return Cow::Borrowed(text);
    }
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i..].starts_with(ESCAPED) {
            out.push(b' ');
            i += ESCAPED.len();
        } else {
            out.push(text[i]);
            i += 1;
        }
    }
    Cow::Owned(out)
}

/// GPT-2 characters back to bytes. A character outside the byte table is spelled out
/// as llama.cpp does: `[UNK_BYTE_0x<utf-8 hex><token text>]`.
fn gpt2_decode(text: &[u8]) -> Vec<u8> {
    let s = String::from_utf8_lossy(text);
    let mut out = Vec::with_capacity(text.len());
    for c in s.chars() {
        match unicode::char_to_byte(c) {
            Some(b) => out.push(b),
            None => {
                out.extend_from_slice(b"[UNK_BYTE_0x");
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
                out.extend_from_slice(text);
                out.push(b']');
            }
        }
    }
    out
}

/// The byte of a `<0xAB>` token: the hex digits at offset 3..5, read like `strtol`
/// (stopping at the first non-hex character).
fn byte_token_value(text: &[u8]) -> u8 {
    let digits = text.get(3..text.len().min(5)).unwrap_or(&[]);
    let mut v = 0u8;
    for &d in digits {
        match (d as char).to_digit(16) {
            Some(x) => v = v.wrapping_mul(16).wrapping_add(x as u8),
            None => break,
        }
    }
    v
}

/// llama.cpp's three clean-up passes, in place, with the same reads of already rewritten
/// bytes: remove the space in ` ?`, ` !`, ` .`, ` ,`; turn ` ' ` into `'`; remove the space
/// before `'s`, `'m`, `'re`, `'ve`.
fn clean_up_spaces(text: &mut Vec<u8>) {
    // Pass 1.
    let n = text.len();
    let mut total = usize::from(n > 0);
    for i in 1..n {
        let x = text[i];
        if text[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            total -= 1;
        }
        text[total] = x;
        total += 1;
    }
    // Pass 2.
    let n = total;
    total = usize::from(n > 0);
    let mut i = 1;
    while i < n {
        let x = text[i];
        if x == b'\'' && i + 1 < n && text[i - 1] == b' ' && text[i + 1] == b' ' {
            total -= 1;
            i += 1;
            text[i] = 0;
        }
        text[total] = x;
        total += 1;
        i += 1;
    }
    // Pass 3.
    let n = total;
    total = usize::from(n > 0);
    for i in 1..n {
        let x = text[i];
        if text[i - 1] == b' ' && x == b'\'' && i + 1 < n {
            let x1 = text[i + 1];
            let drop = match x1 {
                b's' | b'm' => true,
                b't' | b'd' => false,
                _ => i + 2 < n && matches!((x1, text[i + 2]), (b'r', b'e') | (b'v', b'e')),
            };
            if drop {
                total -= 1;
            }
        }
        text[total] = x;
        total += 1;
    }
    text.truncate(total);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_up_matches_llama_cpp_passes() {
        let mut t = b"Hi , there ! it 's a ' b ' c 're 'll 't".to_vec();
        clean_up_spaces(&mut t);
        assert_eq!(
            String::from_utf8(t).unwrap(),
            "Hi, there! it's a'b'c're 'll 't"
        );
        // The space skipped after ` ' ` no longer counts as the next quote's left space.
        let mut t = b"x ' ' y".to_vec();
        clean_up_spaces(&mut t);
        assert_eq!(String::from_utf8(t).unwrap(), "x'' y");
    }

    #[test]
    fn byte_token_values() {
        assert_eq!(byte_token_value(b"<0x0A>"), 10);
        assert_eq!(byte_token_value(b"<0xFF>"), 255);
        assert_eq!(byte_token_value(b"<0x4G>"), 4);
        assert_eq!(byte_token_value(b"<0"), 0);
    }
}
