//! GGUF metadata to the typed parts of an SMQ manifest: model config, tokenizer and
//! source record. Import and the direct GGUF path both go through [`describe_gguf`], so a
//! model opened either way gets the same config and tokenizer.

use smq_format::{Metadata, MetadataValue, ModelConfig, SourceInfo, TokenizerSpec};

use crate::error::{Error, Result};
use crate::gguf::reader::value_type;
use crate::gguf::GgufFile;

/// The manifest parts that come from the GGUF header (everything but the tensor directory).
#[derive(Clone, Debug, PartialEq)]
pub struct GgufDescription {
    pub source: SourceInfo,
    pub config: ModelConfig,
    pub tokenizer: Option<TokenizerSpec>,
}

/// Builds the source record, config and tokenizer of a parsed GGUF. `blake3` is the
/// whole file's hash (all zero when it was not computed).
pub fn describe_gguf(
    gguf: &GgufFile,
    file_name: &str,
    blake3: [u8; 32],
) -> Result<GgufDescription> {
    Ok(GgufDescription {
        source: SourceInfo {
            file_name: file_name.to_string(),
            file_size: gguf.file_size,
            blake3,
            gguf_version: gguf.version,
            alignment: gguf.alignment,
            data_offset: gguf.data_offset,
            zero_padding: gguf.zero_padding,
        },
        config: model_config(&gguf.metadata)?,
        tokenizer: tokenizer_spec(&gguf.metadata)?,
    })
}

/// Typed lookups that fail with the key's name when a present value has the wrong type.
struct Keys<'a>(&'a Metadata);

impl Keys<'_> {
    fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.0.get(key)
    }

    /// Any integer type with a non-negative value.
    fn u64(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                Error::metadata(
                    key,
                    format!("expected a non-negative integer, found {}", describe(v)),
                )
            }),
        }
    }

    fn u32(&self, key: &str) -> Result<Option<u32>> {
        match self.u64(key)? {
            None => Ok(None),
            Some(v) => u32::try_from(v)
                .map(Some)
                .map_err(|_| Error::metadata(key, format!("{v} does not fit in 32 bits"))),
        }
    }

    fn f32(&self, key: &str) -> Result<Option<f32>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_f32().map(Some).ok_or_else(|| {
                Error::metadata(key, format!("expected a float, found {}", describe(v)))
            }),
        }
    }

    fn string(&self, key: &str) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_str().map(|s| Some(s.to_string())).ok_or_else(|| {
                Error::metadata(key, format!("expected a string, found {}", describe(v)))
            }),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| {
                Error::metadata(key, format!("expected a bool, found {}", describe(v)))
            }),
        }
    }

    /// The items of an array whose declared element type is `element_type`.
    fn array(&self, key: &str, element_type: u32) -> Result<Option<&[MetadataValue]>> {
        match self.get(key) {
            None => Ok(None),
            Some(MetadataValue::Array(a)) if a.element_type == element_type => Ok(Some(&a.items)),
            Some(v) => Err(Error::metadata(
                key,
                format!(
                    "expected an array of {}, found {}",
                    type_name(element_type),
                    describe(v)
                ),
            )),
        }
    }
}

fn type_name(ty: u32) -> &'static str {
    use value_type::*;
    match ty {
        U8 => "u8",
        I8 => "i8",
        U16 => "u16",
        I16 => "i16",
        U32 => "u32",
        I32 => "i32",
        F32 => "f32",
        BOOL => "bool",
        STRING => "string",
        ARRAY => "array",
        U64 => "u64",
        I64 => "i64",
        F64 => "f64",
        _ => "unknown",
    }
}

fn describe(v: &MetadataValue) -> String {
    match v {
        MetadataValue::Array(a) => format!("an array of {}", type_name(a.element_type)),
        MetadataValue::String(_) => "a string".to_string(),
        other => match other.as_u64() {
            // A negative integer is the usual surprise: say so.
            None if matches!(
                other,
                MetadataValue::I8(_)
                    | MetadataValue::I16(_)
                    | MetadataValue::I32(_)
                    | MetadataValue::I64(_)
            ) =>
            {
                format!("a negative {}", type_name(other.type_id()))
            }
            _ => format!("a {}", type_name(other.type_id())),
        },
    }
}

/// Reads the model hyperparameters from `general.*` and `{arch}.*` keys.
pub fn model_config(meta: &Metadata) -> Result<ModelConfig> {
    let k = Keys(meta);
    let arch = k.string("general.architecture")?.unwrap_or_default();
    let a = |suffix: &str| format!("{arch}.{suffix}");
    Ok(ModelConfig {
        name: k.string("general.name")?,
        file_type: k.u32("general.file_type")?,
        context_length: k.u64(&a("context_length"))?,
        embedding_length: k.u64(&a("embedding_length"))?,
        block_count: k.u64(&a("block_count"))?,
        feed_forward_length: k.u64(&a("feed_forward_length"))?,
        head_count: k.u64(&a("attention.head_count"))?,
        head_count_kv: k.u64(&a("attention.head_count_kv"))?,
        key_length: k.u64(&a("attention.key_length"))?,
        value_length: k.u64(&a("attention.value_length"))?,
        rms_norm_epsilon: k.f32(&a("attention.layer_norm_rms_epsilon"))?,
        layer_norm_epsilon: k.f32(&a("attention.layer_norm_epsilon"))?,
        rope_dimension_count: k.u64(&a("rope.dimension_count"))?,
        rope_freq_base: k.f32(&a("rope.freq_base"))?,
        rope_scaling_type: k.string(&a("rope.scaling.type"))?,
        rope_scaling_factor: k.f32(&a("rope.scaling.factor"))?,
        rope_scaling_original_context_length: k.u64(&a("rope.scaling.original_context_length"))?,
        sliding_window: k.u64(&a("attention.sliding_window"))?,
        attn_logit_softcapping: k.f32(&a("attn_logit_softcapping"))?,
        final_logit_softcapping: k.f32(&a("final_logit_softcapping"))?,
        vocab_size: k.u64(&a("vocab_size"))?,
        expert_count: k.u64(&a("expert_count"))?,
        expert_used_count: k.u64(&a("expert_used_count"))?,
        architecture: arch,
    })
}

/// Reads the tokenizer; `None` when `tokenizer.ggml.model` is absent.
pub fn tokenizer_spec(meta: &Metadata) -> Result<Option<TokenizerSpec>> {
    let k = Keys(meta);
    let Some(model) = k.string("tokenizer.ggml.model")? else {
        return Ok(None);
    };

    let (token_bytes, token_offsets) = string_blob(&k, "tokenizer.ggml.tokens")?;
    let n_tokens = token_offsets.len() - 1;
    let (merge_bytes, merge_offsets) = string_blob(&k, "tokenizer.ggml.merges")?;

    let scores: Vec<f32> = k
        .array("tokenizer.ggml.scores", value_type::F32)?
        .unwrap_or_default()
        .iter()
        .filter_map(MetadataValue::as_f32)
        .collect();
    let token_types: Vec<i32> = k
        .array("tokenizer.ggml.token_type", value_type::I32)?
        .unwrap_or_default()
        .iter()
        .filter_map(|v| match v {
            MetadataValue::I32(t) => Some(*t),
            _ => None,
        })
        .collect();
    for (key, len) in [
        ("tokenizer.ggml.scores", scores.len()),
        ("tokenizer.ggml.token_type", token_types.len()),
    ] {
        if len != 0 && len != n_tokens {
            return Err(Error::metadata(
                key,
                format!("{len} entries for {n_tokens} tokens"),
            ));
        }
    }

    let id = |key: &str| -> Result<Option<u32>> {
        match k.u32(key)? {
            Some(id) if id as usize >= n_tokens => Err(Error::metadata(
                key,
                format!("token id {id} is out of range ({n_tokens} tokens)"),
            )),
            other => Ok(other),
        }
    };

    Ok(Some(TokenizerSpec {
        model,
        pre: k.string("tokenizer.ggml.pre")?,
        token_bytes,
        token_offsets,
        scores,
        token_types,
        merge_bytes,
        merge_offsets,
        bos_id: id("tokenizer.ggml.bos_token_id")?,
        eos_id: id("tokenizer.ggml.eos_token_id")?,
        eot_id: id("tokenizer.ggml.eot_token_id")?,
        unknown_id: id("tokenizer.ggml.unknown_token_id")?,
        padding_id: id("tokenizer.ggml.padding_token_id")?,
        separator_id: id("tokenizer.ggml.seperator_token_id")?,
        add_bos: k.bool("tokenizer.ggml.add_bos_token")?,
        add_eos: k.bool("tokenizer.ggml.add_eos_token")?,
        add_space_prefix: k.bool("tokenizer.ggml.add_space_prefix")?,
        chat_template: k.string("tokenizer.chat_template")?,
    }))
}

/// Concatenates a string array into one blob plus `n + 1` offsets (empty if absent).
fn string_blob(k: &Keys<'_>, key: &str) -> Result<(Vec<u8>, Vec<u32>)> {
    let items = k.array(key, value_type::STRING)?.unwrap_or_default();
    let total: usize = items.iter().map(|v| v.as_str().map_or(0, str::len)).sum();
    if u32::try_from(total).is_err() {
        return Err(Error::metadata(
            key,
            format!("{total} bytes of text exceed 4 GiB"),
        ));
    }
    let mut blob = Vec::with_capacity(total);
    let mut offsets = Vec::with_capacity(items.len() + 1);
    offsets.push(0u32);
    for v in items {
        // The reader guarantees every item of a string array is a string.
        blob.extend_from_slice(v.as_str().unwrap_or_default().as_bytes());
        offsets.push(blob.len() as u32);
    }
    Ok((blob, offsets))
}

#[cfg(test)]
mod tests {
    use smq_format::{MetadataArray, MetadataEntry};

    use super::*;

    fn meta(entries: Vec<(&str, MetadataValue)>) -> Metadata {
        Metadata {
            entries: entries
                .into_iter()
                .map(|(k, v)| MetadataEntry {
                    key: k.to_string(),
                    value: v,
                })
                .collect(),
        }
    }

    fn strings(items: &[&str]) -> MetadataValue {
        MetadataValue::Array(MetadataArray {
            element_type: value_type::STRING,
            items: items
                .iter()
                .map(|s| MetadataValue::String(s.to_string()))
                .collect(),
        })
    }

    fn f32s(items: &[f32]) -> MetadataValue {
        MetadataValue::Array(MetadataArray {
            element_type: value_type::F32,
            items: items.iter().map(|&x| MetadataValue::F32(x)).collect(),
        })
    }

    #[test]
    fn config_reads_arch_keys() {
        use MetadataValue as V;
        let m = meta(vec![
            ("general.architecture", V::String("qwen2".into())),
            ("general.name", V::String("tiny".into())),
            ("general.file_type", V::U32(15)),
            ("qwen2.context_length", V::U32(4096)),
            ("qwen2.embedding_length", V::U64(896)),
            ("qwen2.block_count", V::I32(24)),
            ("qwen2.attention.head_count", V::U32(14)),
            ("qwen2.attention.head_count_kv", V::U32(2)),
            ("qwen2.attention.layer_norm_rms_epsilon", V::F32(1e-6)),
            ("qwen2.rope.freq_base", V::F64(1e6)),
            ("qwen2.rope.scaling.type", V::String("yarn".into())),
            ("qwen2.final_logit_softcapping", V::F32(30.0)),
            ("llama.block_count", V::U32(99)), // another architecture's key: ignored
        ]);
        let c = model_config(&m).unwrap();
        assert_eq!(c.architecture, "qwen2");
        assert_eq!(c.name.as_deref(), Some("tiny"));
        assert_eq!(c.file_type, Some(15));
        assert_eq!(c.context_length, Some(4096));
        assert_eq!(c.embedding_length, Some(896));
        assert_eq!(c.block_count, Some(24));
        assert_eq!(c.head_count, Some(14));
        assert_eq!(c.head_count_kv, Some(2));
        assert_eq!(c.rms_norm_epsilon, Some(1e-6));
        assert_eq!(c.rope_freq_base, Some(1e6));
        assert_eq!(c.rope_scaling_type.as_deref(), Some("yarn"));
        assert_eq!(c.final_logit_softcapping, Some(30.0));
        assert_eq!(c.feed_forward_length, None);
        assert_eq!(c.sliding_window, None);
    }

    #[test]
    fn wrong_types_name_the_key() {
        use MetadataValue as V;
        let cases = [
            (
                "llama.block_count",
                V::String("30".into()),
                "llama.block_count",
            ),
            ("llama.block_count", V::I32(-3), "negative"),
            (
                "llama.rope.freq_base",
                V::U32(10000),
                "llama.rope.freq_base",
            ),
            ("general.file_type", V::U64(1 << 40), "32 bits"),
            ("llama.attention.head_count", f32s(&[1.0]), "array"),
        ];
        for (key, value, expect) in cases {
            let m = meta(vec![
                ("general.architecture", V::String("llama".into())),
                (key, value),
            ]);
            let msg = model_config(&m).unwrap_err().to_string();
            assert!(msg.contains(key) && msg.contains(expect), "{msg}");
        }
        let m = meta(vec![("general.architecture", V::U32(1))]);
        assert!(model_config(&m)
            .unwrap_err()
            .to_string()
            .contains("general.architecture"));
    }

    #[test]
    fn tokenizer_blobs_and_ids() {
        use MetadataValue as V;
        let m = meta(vec![
            ("tokenizer.ggml.model", V::String("gpt2".into())),
            ("tokenizer.ggml.pre", V::String("smollm".into())),
            ("tokenizer.ggml.tokens", strings(&["<s>", "a", "", "ab"])),
            ("tokenizer.ggml.merges", strings(&["a b"])),
            (
                "tokenizer.ggml.token_type",
                V::Array(MetadataArray {
                    element_type: value_type::I32,
                    items: vec![V::I32(3), V::I32(1), V::I32(1), V::I32(1)],
                }),
            ),
            ("tokenizer.ggml.bos_token_id", V::U32(0)),
            ("tokenizer.ggml.seperator_token_id", V::U32(3)),
            ("tokenizer.ggml.add_bos_token", V::Bool(true)),
            ("tokenizer.chat_template", V::String("{{ x }}".into())),
        ]);
        let t = tokenizer_spec(&m).unwrap().unwrap();
        assert_eq!(t.model, "gpt2");
        assert_eq!(t.pre.as_deref(), Some("smollm"));
        assert_eq!(t.n_tokens(), 4);
        assert_eq!(t.token(0), Some(&b"<s>"[..]));
        assert_eq!(t.token(2), Some(&b""[..]));
        assert_eq!(t.token(3), Some(&b"ab"[..]));
        assert_eq!(t.token_offsets, [0, 3, 4, 4, 6]);
        assert_eq!(t.n_merges(), 1);
        assert_eq!(t.merge(0), Some(&b"a b"[..]));
        assert_eq!(t.token_types, [3, 1, 1, 1]);
        assert!(t.scores.is_empty());
        assert_eq!(
            (t.bos_id, t.separator_id, t.eos_id),
            (Some(0), Some(3), None)
        );
        assert_eq!(t.add_bos, Some(true));
        assert_eq!(t.chat_template.as_deref(), Some("{{ x }}"));
    }

    #[test]
    fn tokenizer_inconsistencies_are_errors() {
        use MetadataValue as V;
        let base = || {
            vec![
                ("tokenizer.ggml.model", V::String("llama".into())),
                ("tokenizer.ggml.tokens", strings(&["a", "b"])),
            ]
        };
        let mut bad_scores = base();
        bad_scores.push(("tokenizer.ggml.scores", f32s(&[0.0])));
        let mut bad_id = base();
        bad_id.push(("tokenizer.ggml.eos_token_id", V::U32(2)));
        let mut bad_tokens = base();
        bad_tokens[1].1 = f32s(&[0.0, 1.0]);
        let mut bad_flag = base();
        bad_flag.push(("tokenizer.ggml.add_bos_token", V::U8(1)));
        for (entries, key) in [
            (bad_scores, "tokenizer.ggml.scores"),
            (bad_id, "tokenizer.ggml.eos_token_id"),
            (bad_tokens, "tokenizer.ggml.tokens"),
            (bad_flag, "tokenizer.ggml.add_bos_token"),
        ] {
            let msg = tokenizer_spec(&meta(entries)).unwrap_err().to_string();
            assert!(msg.contains(key), "{msg}");
        }
    }

    #[test]
    fn no_tokenizer_without_model_key() {
        let m = meta(vec![("tokenizer.ggml.tokens", strings(&["a"]))]);
        assert_eq!(tokenizer_spec(&m).unwrap(), None);
    }
}
