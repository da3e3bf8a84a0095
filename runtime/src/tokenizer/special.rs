//! Special tokens: llama.cpp's text-based detection of end-of-turn and fill-in-the-middle
//! tokens (which also decides what ends generation), and the first tokenization pass that
//! cuts special-token texts out of the input before the model's tokenizer sees it.

use super::vocab::{attr, Vocab};

// Token texts llama.cpp recognises by name. Which one wins when a vocabulary has several
// candidates for the same role is unspecified there; here the lowest id does.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const EOM_TEXTS: &[&str] = &["<|eom_id|>"];
const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
];
const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
];
const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &[
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];
/// Tokens that end generation whatever their role.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];
/// Always rendered, even when control tokens are not.
const ALWAYS_RENDERED: &[&str] = &["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"];

fn find_first(vocab: &Vocab, texts: &[&str]) -> Option<u32> {
    texts
        .iter()
        .filter_map(|t| vocab.lookup(t.as_bytes()))
        .min()
}

fn mark_control(vocab: &mut Vocab, id: u32) {
    vocab.set_attr(id, vocab.attr(id) | attr::CONTROL);
}

/// Applies llama.cpp's name-based attribute fixes and returns the sorted end-of-generation
/// ids. `eos` and `eot` are the ids already resolved from the metadata.
pub(crate) fn detect_end_of_generation(
    vocab: &mut Vocab,
    eos: Option<u32>,
    eot: Option<u32>,
) -> Vec<u32> {
    let eot = eot.or_else(|| find_first(vocab, EOT_TEXTS));
    let eom = find_first(vocab, EOM_TEXTS);
    let mut roles = vec![eot, eom];
    for texts in [FIM_PRE_TEXTS, FIM_SUF_TEXTS, FIM_MID_TEXTS] {
        roles.push(find_first(vocab, texts));
    }
    let fim_ends: Vec<Option<u32>> = [FIM_PAD_TEXTS, FIM_REP_TEXTS, FIM_SEP_TEXTS]
        .iter()
        .map(|t| find_first(vocab, t))
        .collect();
    // A token found by name is a control token even if the file says otherwise.
    for id in roles.iter().chain(&fim_ends).flatten() {
        mark_control(vocab, *id);
    }

    // Control tokens named "unused" are placeholders.
    for id in 0..vocab.len() as u32 {
        let a = vocab.attr(id);
        if a & attr::CONTROL != 0 && contains(vocab.text(id), b"unused") {
            vocab.set_attr(id, a | attr::UNUSED);
        }
    }

    let mut eog: Vec<u32> = fim_ends.iter().flatten().copied().collect();
    for t in EOG_TEXTS {
        if let Some(id) = vocab.lookup(t.as_bytes()) {
            eog.push(id);
            mark_control(vocab, id);
        }
    }
    for t in ALWAYS_RENDERED {
        if let Some(id) = vocab.lookup(t.as_bytes()) {
            vocab.set_attr(id, attr::USER_DEFINED);
        }
    }
    eog.extend([eos, eot, eom].into_iter().flatten());
    eog.sort_unstable();
    eog.dedup();

    let has = |eog: &[u32], vocab: &Vocab, t: &str| {
        vocab
            .lookup(t.as_bytes())
            .filter(|id| eog.binary_search(id).is_ok())
    };
    // Harmony-style vocabularies end a message with `<|end|>` but keep generating.
    let ret = has(&eog, vocab, "<|return|>").is_some();
    let call = has(&eog, vocab, "<|call|>").is_some() || has(&eog, vocab, "<|calls|>").is_some();
    let flush = has(&eog, vocab, "<|flush|>").is_some();
    if let Some(end) = has(&eog, vocab, "<|end|>") {
        if call && (ret || flush) {
            eog.retain(|&id| id != end);
            vocab.set_attr(end, attr::USER_DEFINED);
        }
    }
    // Vocabularies with `<|tool_response>` use `</s>` as ordinary text.
    if has(&eog, vocab, "<|tool_response>").is_some() {
        if let Some(s) = has(&eog, vocab, "</s>") {
            eog.retain(|&id| id != s);
            vocab.set_attr(s, attr::NORMAL);
        }
    }
    eog
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Control, user-defined and unknown tokens, longest text first (equal lengths by id).
/// Texts that are not UTF-8 can never occur in a `&str` input and are left out.
pub(crate) fn special_cache(vocab: &Vocab) -> Vec<u32> {
    let mut ids: Vec<u32> = (0..vocab.len() as u32)
        .filter(|&id| {
            vocab.attr(id) & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0
                && std::str::from_utf8(vocab.text(id)).is_ok()
        })
        .collect();
    ids.sort_by_key(|&id| std::cmp::Reverse(vocab.text(id).len()));
    ids
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fragment {
    /// A byte range of the input still to be tokenized.
    Text(usize, usize),
    Token(u32),
}

/// Cuts every occurrence of each special token's text out of `text`, one token at a time
/// in `cache` order, as llama.cpp does. Without `parse_special` only user-defined tokens
/// are cut out.
pub(crate) fn partition(
    text: &str,
    cache: &[u32],
    vocab: &Vocab,
    parse_special: bool,
) -> Vec<Fragment> {
    let mut frags = Vec::new();
    if text.is_empty() {
        return frags;
    }
    frags.push(Fragment::Text(0, text.len()));
    // Which bytes and byte pairs occur, to skip most special tokens without a search.
    let bytes = text.as_bytes();
    let mut present = [false; 256];
    let mut pairs = vec![0u64; 1024];
    for (i, &b) in bytes.iter().enumerate() {
        present[b as usize] = true;
        if let Some(&c) = bytes.get(i + 1) {
            let k = (b as usize) << 8 | c as usize;
            pairs[k >> 6] |= 1 << (k & 63);
        }
    }
    let may_occur = |needle: &[u8]| match needle {
        [] => false,
        [b] => present[*b as usize],
        [b, c, ..] => {
            let k = (*b as usize) << 8 | *c as usize;
            pairs[k >> 6] & (1 << (k & 63)) != 0
        }
    };
    let mut next = Vec::new();
    for &id in cache {
        if !parse_special && vocab.attr(id) & (attr::CONTROL | attr::UNKNOWN) != 0 {
            continue;
        }
        let Ok(needle) = std::str::from_utf8(vocab.text(id)) else {
            continue;
        };
        // Cheap rejections before a substring search of the whole input.
        if needle.len() > text.len() || !may_occur(needle.as_bytes()) || !text.contains(needle) {
            continue;
        }
        next.clear();
        for &frag in &frags {
            let Fragment::Text(start, end) = frag else {
                next.push(frag);
                continue;
            };
            let mut pos = start;
            for (at, _) in text[start..end].match_indices(needle) {
                let at = start + at;
                if at > pos {
                    next.push(Fragment::Text(pos, at));
                }
                next.push(Fragment::Token(id));
                pos = at + needle.len();
            }
            if pos < end {
                next.push(Fragment::Text(pos, end));
            }
        }
        std::mem::swap(&mut frags, &mut next);
    }
    frags
}
