//! Errors from compiling or rendering a chat template, each a one-line message.

use std::fmt;

/// Why a chat template could not be compiled or rendered.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("chat template does not compile: {}{}", one_line(reason), at_line(*line))]
    Compile { reason: String, line: Option<usize> },
    /// The template itself rejected the conversation (`raise_exception(msg)`).
    #[error("chat template rejected the conversation: {}{}", one_line(message), at_line(*line))]
    Raised {
        message: String,
        line: Option<usize>,
    },
    #[error("chat template ran out of fuel after {fuel} steps (runaway or hostile template)")]
    OutOfFuel { fuel: u64 },
    #[error("chat template output exceeds {limit} bytes")]
    OutputTooLarge { limit: usize },
    #[error("model has no chat template and its vocabulary has no known turn markers")]
    NoTemplate,
    #[error("chat template failed to render: {}{}", one_line(reason), at_line(*line))]
    Render { reason: String, line: Option<usize> },
}

/// Message carried by the error that `raise_exception` returns, so the render
/// path can tell a deliberate rejection from an engine failure.
#[derive(Debug)]
pub(crate) struct RaisedException(pub String);

impl fmt::Display for RaisedException {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RaisedException {}

impl ChatError {
    pub(crate) fn compile(err: &minijinja::Error) -> ChatError {
        ChatError::Compile {
            reason: reason(err),
            line: err.line(),
        }
    }

    pub(crate) fn render(err: &minijinja::Error, fuel: u64) -> ChatError {
        if err.kind() == minijinja::ErrorKind::OutOfFuel {
            return ChatError::OutOfFuel { fuel };
        }
        let mut source = std::error::Error::source(err);
        while let Some(cause) = source {
            if let Some(raised) = cause.downcast_ref::<RaisedException>() {
                return ChatError::Raised {
                    message: raised.0.clone(),
                    line: err.line(),
                };
            }
            source = cause.source();
        }
        ChatError::Render {
            reason: reason(err),
            line: err.line(),
        }
    }
}

/// The engine's kind and detail without its location suffix (added separately).
fn reason(err: &minijinja::Error) -> String {
    match err.detail() {
        Some(detail) => format!("{}: {detail}", err.kind()),
        None => err.kind().to_string(),
    }
}

fn at_line(line: Option<usize>) -> String {
    line.map(|n| format!(" (line {n})")).unwrap_or_default()
}

/// Template text can carry newlines; the message must stay on one line.
fn one_line(s: &str) -> String {
    s.chars()
        .flat_map(|c| match c {
            '\n' => vec!['\\', 'n'],
            '\r' => vec!['\\', 'r'],
            c if c.is_control() => vec![' '],
            c => vec![c],
        })
        .collect()
}
