//! Choosing a template for a model: its own `tokenizer.chat_template` when the
//! file has one, otherwise a stand-in picked from the turn markers its
//! vocabulary defines (some GGUFs, e.g. Gemma 3 270M exports, ship none).

use crate::tokenizer::Tokenizer;

use super::error::ChatError;
use super::template::ChatTemplate;

/// ChatML: `<|im_start|>role\ncontent<|im_end|>\n` per turn.
const CHATML: &str = "{% for m in messages %}\
{{ '<|im_start|>' ~ m.role ~ '\\n' ~ m.content ~ '<|im_end|>\\n' }}\
{% endfor %}\
{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Gemma's turn format: BOS, `<start_of_turn>user|model\n...<end_of_turn>\n`,
/// trimmed content, a leading system message folded into the first turn.
const GEMMA: &str = "{{ bos_token }}\
{% set ns = namespace(prefix='', skip=false) %}\
{% if messages and messages[0].role == 'system' %}\
{% set ns.prefix = messages[0].content ~ '\\n\\n' %}{% set ns.skip = true %}\
{% endif %}\
{% for m in messages %}{% if not (loop.first and ns.skip) %}\
{{ '<start_of_turn>' ~ ('model' if m.role == 'assistant' else m.role) ~ '\\n' }}\
{% if loop.index0 == (1 if ns.skip else 0) %}{{ ns.prefix }}{% endif %}\
{{ m.content | trim }}{{ '<end_of_turn>\\n' }}\
{% endif %}{% endfor %}\
{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}";

/// Markers whose presence in the vocabulary selects a stand-in, checked in order.
const BY_MARKERS: [(&[&str], &str); 2] = [
    (&["<start_of_turn>", "<end_of_turn>"], GEMMA),
    (&["<|im_start|>", "<|im_end|>"], CHATML),
];

impl ChatTemplate {
    /// The model's own template (`tokenizer.chat_template`), or a stand-in matching the
    /// turn markers of its vocabulary when the file carries none.
    pub fn for_model(
        template: Option<&str>,
        tokenizer: &Tokenizer,
    ) -> Result<ChatTemplate, ChatError> {
        let text = |id: Option<u32>| {
            id.and_then(|id| tokenizer.token_text(id))
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        };
        let (bos, eos) = (text(tokenizer.bos_id()), text(tokenizer.eos_id()));
        if let Some(source) = template.filter(|s| !s.is_empty()) {
            return ChatTemplate::new(source, &bos, &eos);
        }
        for (markers, source) in BY_MARKERS {
            if markers.iter().all(|m| tokenizer.token_id(m).is_some()) {
                return ChatTemplate::new(source, &bos, &eos);
            }
        }
        Err(ChatError::NoTemplate)
    }
}
