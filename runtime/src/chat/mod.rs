//! Chat templates: a model's own `tokenizer.chat_template` (Jinja2) rendered
//! with the semantics transformers and llama.cpp give it.

mod error;
mod fallback;
mod json;
mod strftime;
mod template;

pub use error::ChatError;
pub use template::{ChatMessage, ChatTemplate, DEFAULT_FUEL, MAX_OUTPUT_BYTES};
