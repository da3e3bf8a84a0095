//! Conversations through a model's chat template: `smq chat`, which keeps the
//! conversation in the KV cache from turn to turn, and the one-turn prompt of
//! `smq run --chat`.

use std::io::{BufRead, IsTerminal, Write};
use std::ops::ControlFlow;

use serde_json::json;
use smq_runtime::chat::{ChatError, ChatMessage, ChatTemplate};
use smq_runtime::generate::{FinishReason, Generation, Session};
use smq_runtime::tokenizer::{TextStream, Tokenizer};

use super::run::{generate_params, random_seed};
use super::{fail, print_json, CliError, CliResult};
use crate::cli::ChatArgs;
use crate::model_open;
use crate::signals;
use crate::stop::StopFilter;

/// Plain ChatML, used only when the user asks for it with `--chat-template-fallback`.
const CHATML: &str = "{% for m in messages %}\
{{ '<|im_start|>' ~ m.role ~ '\\n' ~ m.content ~ '<|im_end|>\\n' }}\
{% endfor %}\
{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";
/// ChatML's end of turn, as text: a vocabulary without it as a token still stops there.
const CHATML_END: &str = "<|im_end|>";

const FALLBACK_HINT: &str = " (--chat-template-fallback uses plain ChatML instead)";

/// A model's chat format: its template, and how rendered text becomes prompt ids.
pub struct ChatFormat {
    template: ChatTemplate,
    allow_fallback: bool,
    on_fallback: bool,
    bos_text: Option<String>,
    eos_text: String,
}

/// A rendered conversation and its token ids.
pub struct ChatPrompt {
    pub text: String,
    pub ids: Vec<u32>,
}

fn token_string(tokenizer: &Tokenizer, id: Option<u32>) -> Option<String> {
    id.and_then(|id| tokenizer.token_text(id))
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .filter(|s| !s.is_empty())
}

impl ChatFormat {
    /// The model's template (or the runtime's stand-in for files without one). If there
    /// is none, or it does not compile, that is an error unless `allow_fallback`.
    pub fn new(
        template: Option<&str>,
        tokenizer: &Tokenizer,
        allow_fallback: bool,
    ) -> Result<ChatFormat, CliError> {
        let bos_text = token_string(tokenizer, tokenizer.bos_id());
        let eos_text = token_string(tokenizer, tokenizer.eos_id()).unwrap_or_default();
        let (template, on_fallback) = match ChatTemplate::for_model(template, tokenizer) {
            Ok(t) => (t, false),
            Err(e) if allow_fallback => {
                note_fallback(&e);
                (chatml(bos_text.as_deref(), &eos_text)?, true)
            }
            Err(e) => return Err(fail(format!("{e}{FALLBACK_HINT}"))),
        };
        Ok(ChatFormat {
            template,
            allow_fallback,
            on_fallback,
            bos_text,
            eos_text,
        })
    }

    /// Renders `messages` with the assistant's turn opened and tokenizes the text,
    /// special tokens parsed. BOS is added by the model's rule only when the template
    /// did not already write it (as llama.cpp does), so it is never doubled.
    pub fn prompt(
        &mut self,
        tokenizer: &Tokenizer,
        messages: &[ChatMessage],
    ) -> Result<ChatPrompt, CliError> {
        let text = match self.template.render(messages, true) {
            Ok(text) => text,
            Err(e) if self.allow_fallback && !self.on_fallback => {
                note_fallback(&e);
                // Stays on ChatML for the rest of the conversation, so that earlier
                // turns render the same way and the cached prefix stays valid.
                self.template = chatml(self.bos_text.as_deref(), &self.eos_text)?;
                self.on_fallback = true;
                self.template.render(messages, true)?
            }
            Err(e) if self.on_fallback => return Err(e.into()),
            Err(e) => return Err(fail(format!("{e}{FALLBACK_HINT}"))),
        };
        let template_wrote_bos = self
            .bos_text
            .as_deref()
            .is_some_and(|bos| text.starts_with(bos));
        let ids = tokenizer.encode(&text, !template_wrote_bos, true);
        Ok(ChatPrompt { text, ids })
    }

    /// Stop strings the format needs on top of the model's end-of-turn tokens.
    pub fn stops(&self) -> Vec<String> {
        if self.on_fallback {
            vec![CHATML_END.to_string()]
        } else {
            Vec::new()
        }
    }
}

fn chatml(bos: Option<&str>, eos: &str) -> Result<ChatTemplate, CliError> {
    Ok(ChatTemplate::new(CHATML, bos.unwrap_or(""), eos)?)
}

fn note_fallback(e: &ChatError) {
    eprintln!("note: {e}; using plain ChatML");
}

/// What one answer produced.
struct Answer {
    text: String,
    generation: Generation,
    interrupted: bool,
    context_full: bool,
}

/// Everything a conversation needs besides its history.
struct Chat<'a, 'm> {
    args: &'a ChatArgs,
    tokenizer: &'a Tokenizer,
    format: ChatFormat,
    session: Session<'m>,
    seed: u64,
}

pub fn run(args: &ChatArgs) -> CliResult {
    let threads = model_open::setup_threads(&args.model)?;
    let mut mapped = model_open::open(&args.model)?;
    let (model, tokenizer, chat_template) = model_open::load(&mut mapped)?;
    let n_ctx = model_open::context_size(&args.model, &model)?;
    let format = ChatFormat::new(
        chat_template.as_deref(),
        &tokenizer,
        args.chat_template_fallback,
    )?;
    let seed = args.sampling.seed.unwrap_or_else(random_seed);
    // Checks the sampling options before the first line is read.
    generate_params(&args.sampling, args.n_predict, seed)?;
    let mut chat = Chat {
        args,
        tokenizer: &tokenizer,
        format,
        session: Session::new(&model, n_ctx)?,
        seed,
    };

    let opening: Vec<ChatMessage> = args
        .system
        .iter()
        .map(|s| ChatMessage::new("system", s.as_str()))
        .collect();
    let mut history = opening.clone();
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    if interactive {
        eprintln!(
            "chatting with {} ({threads} threads, context {n_ctx}); /reset clears, /exit quits, \
             Ctrl-C stops an answer",
            args.model.model.display()
        );
    }
    signals::catch_interrupt();
    let mut input = stdin.lock();
    let mut turn = 0usize;
    loop {
        if interactive {
            eprint!("> ");
        }
        let mut line = String::new();
        if input
            .read_line(&mut line)
            .map_err(|e| fail(format!("reading stdin: {e}")))?
            == 0
        {
            break;
        }
        let line = line.trim_end_matches(['\n', '\r']);
        let word = line.trim();
        if word.is_empty() {
            continue;
        }
        // A lone `/word` is a command; a line merely starting with `/` is a message.
        if word.starts_with('/') && !word.contains(char::is_whitespace) {
            match word {
                "/exit" | "/quit" => break,
                "/reset" => {
                    history.clone_from(&opening);
                    chat.session.reset();
                    eprintln!("(conversation cleared)");
                }
                _ => eprintln!("unknown command {word} (commands: /reset, /exit)"),
            }
            continue;
        }

        history.push(ChatMessage::new("user", line));
        let prompt = chat.format.prompt(chat.tokenizer, &history)?;
        if prompt.ids.len() >= n_ctx {
            history.pop();
            eprintln!(
                "the conversation ({} tokens with this message) no longer fits in the context \
                 of {n_ctx}: /reset starts over (or raise --ctx)",
                prompt.ids.len()
            );
            continue;
        }
        let answer = chat.answer(&prompt.ids, turn)?;
        report(&chat, &prompt, &answer, turn);
        history.push(ChatMessage::new("assistant", answer.text));
        turn += 1;
    }
    Ok(())
}

impl Chat<'_, '_> {
    /// Generates one answer after `prompt`, streaming it unless `--json`. The session
    /// reuses the cached tokens `prompt` starts with, so only the new turn is evaluated.
    fn answer(&mut self, prompt: &[u32], turn: usize) -> Result<Answer, CliError> {
        let params = generate_params(
            &self.args.sampling,
            self.args.n_predict,
            self.seed.wrapping_add(turn as u64),
        )?;
        let json = self.args.json;
        let tokenizer = self.tokenizer;
        let mut stream = TextStream::new();
        // After rendering: a render may have just switched the format to ChatML.
        let mut stops = self.args.sampling.stop.clone();
        stops.extend(self.format.stops());
        let mut filter = StopFilter::new(&stops);
        let mut text = String::new();
        let mut stdout = std::io::stdout().lock();
        let mut emit = |piece: &str| {
            text.push_str(piece);
            if !json {
                let _ = stdout.write_all(piece.as_bytes());
                let _ = stdout.flush();
            }
        };
        let mut interrupted = false;
        signals::set_answering(true);
        let result = self.session.generate(prompt, &params, |id| {
            if signals::interrupted() {
                interrupted = true;
                return ControlFlow::Break(());
            }
            let (out, stopped) = filter.push(&stream.push(tokenizer, id));
            emit(&out);
            if stopped {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        });
        signals::set_answering(false);
        let mut generation = result?;
        if interrupted {
            // The token that arrived after Ctrl-C was neither shown nor kept.
            generation.ids.pop();
        }
        if generation.finish_reason != FinishReason::Stop {
            let (out, _) = filter.push(&stream.finish());
            emit(&out);
        }
        if generation.finish_reason != FinishReason::Stop || interrupted {
            // Text held back as a possible stop string was not one.
            emit(&filter.finish());
        }
        if !json {
            let _ = writeln!(stdout);
            let _ = stdout.flush();
        }
        let context_full = generation.finish_reason == FinishReason::Length
            && self.session.tokens().len() >= self.session.n_ctx();
        Ok(Answer {
            text,
            generation,
            interrupted,
            context_full,
        })
    }
}

/// The per-turn account: one JSON line with `--json`, a stderr line with `--verbose`,
/// and on stderr whatever cut the answer short.
fn report(chat: &Chat, prompt: &ChatPrompt, answer: &Answer, turn: usize) {
    let t = answer.generation.timings;
    let n_ctx = chat.session.n_ctx();
    let context_tokens = chat.session.tokens().len();
    let reused = prompt.ids.len() - t.n_prompt;
    if chat.args.json {
        print_json(&json!({
            "turn": turn,
            "text": answer.text,
            "ids": answer.generation.ids,
            "finish_reason": answer.generation.finish_reason.as_str(),
            "interrupted": answer.interrupted,
            "context_full": answer.context_full,
            "prompt_tokens": prompt.ids.len(),
            "evaluated_tokens": t.n_prompt,
            "reused_tokens": reused,
            "context_tokens": context_tokens,
            "n_ctx": n_ctx,
            "prompt_ms": t.prompt_ms,
            "prompt_tok_s": t.prompt_tok_s(),
            "gen_tokens": t.n_gen,
            "gen_ms": t.gen_ms,
            "gen_tok_s": t.gen_tok_s(),
        }));
    }
    if answer.interrupted {
        eprintln!("(answer stopped)");
    }
    if answer.context_full {
        eprintln!(
            "(the context is full: {context_tokens} of {n_ctx} tokens; /reset starts over, or \
             raise --ctx)"
        );
    }
    if chat.args.verbose {
        eprintln!(
            "[prompt {} new + {reused} cached tok, {:.1} tok/s | generated {} tok, {:.1} tok/s | \
             {} | context {context_tokens}/{n_ctx}]",
            t.n_prompt,
            t.prompt_tok_s(),
            t.n_gen,
            t.gen_tok_s(),
            answer.generation.finish_reason.as_str(),
        );
    }
}
