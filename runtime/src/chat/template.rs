//! A compiled chat template and its environment, set up the way transformers
//! sets up Jinja2 for `apply_chat_template`: trim_blocks and lstrip_blocks on,
//! no trailing newline kept, loop controls, `raise_exception`, `strftime_now`,
//! a Python-style `tojson`, and Python string/dict methods.

use std::io;

use minijinja::value::{Value, ValueKind};
use minijinja::{context, Environment, Error, ErrorKind, Output, State};

use super::error::{ChatError, RaisedException};
use super::json::tojson_filter;
use super::strftime::DateTime;

/// Instruction budget per render. Real templates spend a few hundred steps
/// per message; this bounds a runaway loop to well under a second.
pub const DEFAULT_FUEL: u64 = 5_000_000;
/// Nesting bound for loops, ifs and macro calls (minijinja's default is 500).
const RECURSION_LIMIT: usize = 200;
/// A prompt longer than this is no prompt any context window can hold.
pub const MAX_OUTPUT_BYTES: usize = 32 << 20;

const TEMPLATE_NAME: &str = "chat_template";

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A model's chat template, compiled once and rendered per conversation.
pub struct ChatTemplate {
    env: Environment<'static>,
    fuel: u64,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("fuel", &self.fuel)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles the template; bos/eos token texts are exposed to it as
    /// `bos_token`/`eos_token`.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<ChatTemplate, ChatError> {
        ChatTemplate::with_fuel(source, bos_token, eos_token, DEFAULT_FUEL)
    }

    /// As [`ChatTemplate::new`] with an explicit per-render instruction budget.
    pub fn with_fuel(
        source: &str,
        bos_token: &str,
        eos_token: &str,
        fuel: u64,
    ) -> Result<ChatTemplate, ChatError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_keep_trailing_newline(false);
        env.set_fuel(Some(fuel));
        env.set_recursion_limit(RECURSION_LIMIT);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(python_formatter);
        env.add_filter("tojson", tojson_filter);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_global("bos_token", bos_token.to_owned());
        env.add_global("eos_token", eos_token.to_owned());
        env.add_template_owned(TEMPLATE_NAME, source.to_owned())
            .map_err(|e| ChatError::compile(&e))?;
        Ok(ChatTemplate { env, fuel })
    }

    /// Renders `messages`; with `add_generation_prompt` the assistant turn
    /// header is appended.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| ChatError::compile(&e))?;
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| {
                Value::from_iter([
                    ("role", Value::from(m.role.as_str())),
                    ("content", Value::from(m.content.as_str())),
                ])
            })
            .collect();
        // transformers passes tools/documents as None when absent, so
        // `tools is not none` is false rather than true-for-undefined.
        let ctx = context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            tools => (),
            documents => (),
        };
        let mut sink = CappedSink::default();
        match template.render_captured_to(ctx, &mut sink) {
            Ok(_) => {}
            Err(_) if sink.overflowed => {
                return Err(ChatError::OutputTooLarge {
                    limit: MAX_OUTPUT_BYTES,
                })
            }
            Err(e) => return Err(ChatError::render(&e, self.fuel)),
        }
        String::from_utf8(sink.buf).map_err(|_| ChatError::Render {
            reason: "output is not valid UTF-8".to_owned(),
            line: None,
        })
    }
}

/// Collects output up to [`MAX_OUTPUT_BYTES`], then fails the write.
#[derive(Default)]
struct CappedSink {
    buf: Vec<u8>,
    overflowed: bool,
}

impl io::Write for CappedSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > MAX_OUTPUT_BYTES {
            self.overflowed = true;
            return Err(io::Error::other("chat template output limit reached"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Python prints `None`/`True`/`False` where minijinja would print
/// `none`/`true`/`false`.
fn python_formatter(out: &mut Output, state: &State, value: &Value) -> Result<(), Error> {
    let text = match value.kind() {
        ValueKind::None => "None",
        ValueKind::Bool if value.is_true() => "True",
        ValueKind::Bool => "False",
        _ => return minijinja::escape_formatter(out, state, value),
    };
    out.write_str(text)
        .map_err(|_| Error::new(ErrorKind::WriteFailure, "formatting failed"))
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message.clone())
        .with_source(RaisedException(message)))
}

fn strftime_now(format: &str) -> Result<String, Error> {
    DateTime::now()
        .format(format)
        .map_err(|msg| Error::new(ErrorKind::InvalidOperation, format!("strftime_now: {msg}")))
}
