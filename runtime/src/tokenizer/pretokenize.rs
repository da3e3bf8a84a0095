//! Pre-tokenizers of byte-level BPE vocabularies: the text is cut into words before BPE
//! runs on each word. llama.cpp names each split by the regex it stands for; each stage
//! here implements one of those regexes by hand with the same results (the pieces between
//! matches are kept as words too). Stages run in order, each splitting the previous
//! stage's words further.

use super::unicode::CpFlags;
use super::TokenizerError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
    Gpt2,
    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,max}|
    ///  ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
    Llama3 { max_digits: usize },
    /// `\p{N}`: every number character on its own.
    EachNumber,
    /// `\p{N}+`
    NumberRuns,
    /// `[\p{P}\$\+<=>\^~\|]+`
    PunctuationRuns,
    /// `[0-9][0-9][0-9]`
    AsciiDigitTriples,
}

/// What a `tokenizer.ggml.pre` name selects.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PreConfig {
    pub stages: &'static [Stage],
    /// Detokenizing removes spaces before punctuation and contractions.
    pub clean_spaces: bool,
    /// A word that is already a token is emitted without running merges.
    pub ignore_merges: bool,
    /// Default for `add_bos` when the metadata does not say.
    pub add_bos: bool,
}

const GPT2: &[Stage] = &[Stage::Gpt2];
const DIGITS_THEN_GPT2: &[Stage] = &[Stage::EachNumber, Stage::Gpt2];
const DEFAULT: &[Stage] = &[
    Stage::PunctuationRuns,
    Stage::Gpt2,
    Stage::NumberRuns,
    Stage::AsciiDigitTriples,
];
const LLAMA3: &[Stage] = &[Stage::Llama3 { max_digits: 3 }];
const QWEN2: &[Stage] = &[Stage::Llama3 { max_digits: 1 }];

/// The pre-tokenizer llama.cpp uses for `name` (absent means its "default").
pub(crate) fn pre_config(name: Option<&str>) -> Result<PreConfig, TokenizerError> {
    let cfg = |stages, clean_spaces, ignore_merges, add_bos| PreConfig {
        stages,
        clean_spaces,
        ignore_merges,
        add_bos,
    };
    let name = match name {
        None => return Ok(cfg(DEFAULT, true, false, false)),
        Some(n) => n,
    };
    Ok(match name {
        "default" => cfg(DEFAULT, true, false, false),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" => cfg(LLAMA3, true, true, true),
        "dbrx" | "smaug-bpe" => cfg(LLAMA3, true, false, false),
        "qwen2" | "deepseek-r1-qwen" => cfg(QWEN2, false, false, false),
        "megrez" | "stablelm2" => cfg(QWEN2, true, false, false),
        // "gpt2" is not a llama.cpp name, but it is what the pattern is called everywhere.
        "gpt-2" | "gpt2" | "phi-2" | "jina-es" | "jina-de" | "jina-v2-es" | "jina-v2-de"
        | "mpt" | "olmo" | "jais" | "exaone4" => cfg(GPT2, true, false, false),
        "smollm" | "command-r" => cfg(DIGITS_THEN_GPT2, false, false, false),
        "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b" | "mellum2" => {
            cfg(DIGITS_THEN_GPT2, true, false, false)
        }
        other => return Err(TokenizerError::UnsupportedPre(other.to_string())),
    })
}

/// Cuts `cpts` (with their `flags`) into words; returns each word's length in code points.
pub(crate) fn split(stages: &[Stage], cpts: &[char], flags: &[CpFlags]) -> Vec<usize> {
    let mut lens = vec![cpts.len()];
    for &stage in stages {
        let mut out = Vec::with_capacity(lens.len() * 2);
        let mut start = 0;
        for &len in &lens {
            let end = start + len;
            let chunk = Chunk { cpts, flags, end };
            let mut em = Emitter {
                prev_end: start,
                out: &mut out,
            };
            match stage {
                Stage::Gpt2 => gpt2(&chunk, start, &mut em),
                Stage::Llama3 { max_digits } => llama3(&chunk, start, max_digits, &mut em),
                Stage::EachNumber => each_number(&chunk, start, &mut em),
                Stage::NumberRuns => runs(&chunk, start, &mut em, |f, _| f.is_number()),
                Stage::PunctuationRuns => runs(&chunk, start, &mut em, punctuation_class),
                Stage::AsciiDigitTriples => digit_triples(&chunk, start, &mut em),
            }
            em.add(end);
            start = end;
        }
        lens = out;
    }
    lens
}

/// `[\p{P}\$\+<=>\^~\|]` as llama.cpp evaluates it: ASCII by its fixed punctuation list
/// (which leaves out the backquote) plus the listed symbols, other characters by category.
fn punctuation_class(f: CpFlags, c: char) -> bool {
    if c.is_ascii() {
        matches!(c, '!'..='#' | '%'..='*' | ','..='/' | ':' | ';' | '?' | '@' | '['..=']' | '_' | '{' | '}')
            || matches!(c, '$' | '+' | '<' | '=' | '>' | '^' | '~' | '|')
    } else {
        !f.is_whitespace() && f.is_punctuation()
    }
}

struct Chunk<'a> {
    cpts: &'a [char],
    flags: &'a [CpFlags],
    end: usize,
}

impl Chunk<'_> {
    /// Flags at `pos`, `NONE` past the chunk's end.
    fn flags(&self, pos: usize) -> CpFlags {
        if pos < self.end {
            self.flags[pos]
        } else {
            CpFlags::NONE
        }
    }
    fn cpt(&self, pos: usize) -> Option<char> {
        (pos < self.end).then(|| self.cpts[pos])
    }
}

/// Records word boundaries; empty words are dropped.
struct Emitter<'a> {
    prev_end: usize,
    out: &'a mut Vec<usize>,
}

impl Emitter<'_> {
    fn add(&mut self, end: usize) -> usize {
        let len = end - self.prev_end;
        if len > 0 {
            self.out.push(len);
        }
        self.prev_end = end;
        len
    }
}

fn gpt2(ch: &Chunk, start: usize, em: &mut Emitter) {
    let end = ch.end;
    let mut pos = start;
    while pos < end {
        let cpt = ch.cpts[pos];
        let flags = ch.flags(pos);

        // 's|'t|'re|'ve|'m|'ll|'d
        if cpt == '\'' && pos + 1 < end {
            let next = ch.cpts[pos + 1];
            if matches!(next, 's' | 't' | 'm' | 'd') {
                pos += em.add(pos + 2);
                continue;
            }
            if pos + 2 < end {
                let pair = (next, ch.cpts[pos + 2]);
                if matches!(pair, ('r', 'e') | ('v', 'e') | ('l', 'l')) {
                    pos += em.add(pos + 3);
                    continue;
                }
            }
        }

        // An optional leading space joins the letter, number or symbol run after it.
        let lead = usize::from(cpt == ' ');
        let mut f2 = if cpt == ' ' { ch.flags(pos + 1) } else { flags };
        if f2.is_letter() {
            pos += lead;
            while f2.is_letter() {
                pos += 1;
                f2 = ch.flags(pos);
            }
            em.add(pos);
            continue;
        }
        if f2.is_number() {
            pos += lead;
            while f2.is_number() {
                pos += 1;
                f2 = ch.flags(pos);
            }
            em.add(pos);
            continue;
        }
        if f2.is_other() {
            pos += lead;
            while f2.is_other() {
                pos += 1;
                f2 = ch.flags(pos);
            }
            em.add(pos);
            continue;
        }

        let mut n_ws = 0;
        while ch.flags(pos + n_ws).is_whitespace() {
            n_ws += 1;
        }
        // \s+(?!\S): a run followed by more text leaves its last space to the next word.
        if n_ws > 1 && pos + n_ws < end {
            pos += n_ws - 1;
            em.add(pos);
            continue;
        }
        if n_ws > 0 {
            pos += n_ws;
            em.add(pos);
            continue;
        }
        pos += 1;
        em.add(pos);
    }
}

fn llama3(ch: &Chunk, start: usize, max_digits: usize, em: &mut Emitter) {
    let end = ch.end;
    let is_crlf = |c: Option<char>| matches!(c, Some('\r' | '\n'));
    let mut pos = start;
    while pos < end {
        let cpt = ch.cpts[pos];
        let flags = ch.flags(pos);

        // (?i:'s|'t|'re|'ve|'m|'ll|'d); only ASCII letters lower-case to these.
        if cpt == '\'' && pos + 1 < end {
            let next = ch.cpts[pos + 1].to_ascii_lowercase();
            if matches!(next, 's' | 't' | 'm' | 'd') {
                pos += em.add(pos + 2);
                continue;
            }
            if pos + 2 < end {
                let pair = (next, ch.cpts[pos + 2].to_ascii_lowercase());
                if matches!(pair, ('r', 'e') | ('v', 'e') | ('l', 'l')) {
                    pos += em.add(pos + 3);
                    continue;
                }
            }
        }

        // [^\r\n\p{L}\p{N}]?\p{L}+
        if !(cpt == '\r' || cpt == '\n' || flags.is_number())
            && (flags.is_letter() || ch.flags(pos + 1).is_letter())
        {
            pos += 1;
            while ch.flags(pos).is_letter() {
                pos += 1;
            }
            em.add(pos);
            continue;
        }

        // \p{N}{1,max_digits}
        if flags.is_number() {
            let mut group = pos;
            while ch.flags(pos).is_number() {
                pos += 1;
                if pos - group >= max_digits {
                    em.add(pos);
                    group = pos;
                }
            }
            em.add(pos);
            continue;
        }

        //  ?[^\s\p{L}\p{N}]+[\r\n]*
        let mut f2 = if cpt == ' ' { ch.flags(pos + 1) } else { flags };
        if !(f2.is_whitespace() || f2.is_letter() || f2.is_number()) && flags.any() {
            pos += usize::from(cpt == ' ');
            while f2.is_other() {
                pos += 1;
                f2 = ch.flags(pos);
            }
            while is_crlf(ch.cpt(pos)) {
                pos += 1;
            }
            em.add(pos);
            continue;
        }

        let mut n_ws = 0;
        let mut last_crlf_end = 0;
        while ch.flags(pos + n_ws).is_whitespace() {
            if is_crlf(ch.cpt(pos + n_ws)) {
                last_crlf_end = pos + n_ws + 1;
            }
            n_ws += 1;
        }
        // \s*[\r\n]+
        if last_crlf_end > 0 {
            pos = last_crlf_end;
            em.add(pos);
            continue;
        }
        // \s+(?!\S)
        if n_ws > 1 && pos + n_ws < end {
            pos += n_ws - 1;
            em.add(pos);
            continue;
        }
        if n_ws > 0 {
            pos += n_ws;
            em.add(pos);
            continue;
        }
        pos += 1;
        em.add(pos);
    }
}

fn each_number(ch: &Chunk, start: usize, em: &mut Emitter) {
    for pos in start..ch.end {
        if ch.flags[pos].is_number() {
            em.add(pos);
            em.add(pos + 1);
        }
    }
}

/// Maximal runs of characters in a class become words, and so do the gaps between them.
fn runs(ch: &Chunk, start: usize, em: &mut Emitter, class: impl Fn(CpFlags, char) -> bool) {
    let mut pos = start;
    while pos < ch.end {
        if class(ch.flags[pos], ch.cpts[pos]) {
            em.add(pos);
            while pos < ch.end && class(ch.flags[pos], ch.cpts[pos]) {
                pos += 1;
            }
            em.add(pos);
        } else {
            pos += 1;
        }
    }
}

fn digit_triples(ch: &Chunk, start: usize, em: &mut Emitter) {
    let digit = |p: usize| ch.cpt(p).is_some_and(|c| c.is_ascii_digit());
    let mut pos = start;
    while pos + 3 <= ch.end {
        if digit(pos) && digit(pos + 1) && digit(pos + 2) {
            em.add(pos);
            em.add(pos + 3);
            pos += 3;
        } else {
            pos += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(stages: &[Stage], text: &str) -> Vec<String> {
        let cpts: Vec<char> = text.chars().collect();
        let flags: Vec<CpFlags> = cpts.iter().map(|&c| CpFlags::of(c)).collect();
        let mut start = 0;
        split(stages, &cpts, &flags)
            .into_iter()
            .map(|len| {
                let w: String = cpts[start..start + len].iter().collect();
                start += len;
                w
            })
            .collect()
    }

    #[test]
    fn gpt2_pattern() {
        assert_eq!(
            words(GPT2, "Hello  world's 12ab!?\n\n x  "),
            ["Hello", " ", " world", "'s", " 12", "ab", "!?", "\n\n", " x", "  "]
        );
        assert_eq!(words(GPT2, "a\u{a0}b"), ["a", "\u{a0}", "b"]);
    }

    #[test]
    fn smollm_splits_digits_first() {
        assert_eq!(
            words(DIGITS_THEN_GPT2, "x 3.14 ab12"),
            ["x", " ", "3", ".", "1", "4", " ab", "1", "2"]
        );
    }

    #[test]
    fn llama3_pattern() {
        assert_eq!(
            words(LLAMA3, "I'M 12345 (hi)\r\n\n  x"),
            ["I", "'M", " ", "123", "45", " (", "hi", ")\r\n\n", " ", " x"]
        );
    }

    #[test]
    fn default_chain() {
        assert_eq!(words(DEFAULT, "a+=1234"), ["a", "+=", "123", "4"]);
    }

    #[test]
    fn unknown_pre_is_named() {
        let err = pre_config(Some("nonesuch")).unwrap_err();
        assert!(err.to_string().contains("nonesuch"));
    }
}
