//! `smq inspect`: what a .gguf or .smq file holds, for people or (with --json) machines.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde_json::{json, Value};
use smq_converter::gguf::GgufFile;
use smq_converter::manifest_from_gguf::describe_gguf;
use smq_format::{map_file, Metadata, ModelConfig, SmqFile, TokenizerSpec, MAGIC};
use smq_runtime::chat::ChatTemplate;
use smq_runtime::tokenizer::Tokenizer;

use super::{check_input, fail, hex, mb, print_json, CliError, CliResult};
use crate::cli::InspectArgs;

/// A tensor as shown: absolute file offset, whichever format it came from.
struct TensorRow {
    name: String,
    ty: String,
    shape: Vec<u64>,
    offset: u64,
    size: u64,
}

/// What both file kinds have in common, for display.
struct FileView {
    format: String,
    file_size: u64,
    source: Option<Value>,
    config: ModelConfig,
    tokenizer: Option<TokenizerSpec>,
    metadata: Metadata,
    tensors: Vec<TensorRow>,
}

pub fn run(args: &InspectArgs) -> CliResult {
    check_input(&args.file)?;
    let view = load(&args.file).map_err(|e| fail(format!("{}: {e}", args.file.display())))?;
    if args.json {
        print_json(&to_json(&view));
    } else {
        print_human(&view, args.all_tensors);
    }
    Ok(())
}

fn load(path: &Path) -> Result<FileView, CliError> {
    let mut magic = [0u8; 8];
    let n = std::fs::File::open(path)?.read(&mut magic)?;
    if n >= 4 && &magic[..4] == b"GGUF" {
        load_gguf(path)
    } else if n == 8 && magic == MAGIC {
        load_smq(path)
    } else {
        Err(fail("not a GGUF or SMQ file (unrecognised magic bytes)"))
    }
}

fn load_smq(path: &Path) -> Result<FileView, CliError> {
    let f = SmqFile::open(path)?;
    let h = f.header();
    let m = f.manifest();
    let s = &m.source;
    Ok(FileView {
        format: format!("SMQ {}.{}", h.major, h.minor),
        file_size: h.file_len,
        source: Some(json!({
            "file_name": s.file_name,
            "file_size": s.file_size,
            "blake3": hex(&s.blake3),
            "gguf_version": s.gguf_version,
            "alignment": s.alignment,
            "zero_padding": s.zero_padding,
        })),
        config: m.config.clone(),
        tokenizer: m.tokenizer.clone(),
        metadata: f.metadata()?,
        tensors: m
            .tensors
            .iter()
            .map(|t| TensorRow {
                name: t.name.clone(),
                ty: t.ggml_type.name().to_string(),
                shape: t.shape.clone(),
                offset: h.data.offset + t.offset,
                size: t.size,
            })
            .collect(),
    })
}

fn load_gguf(path: &Path) -> Result<FileView, CliError> {
    let map = map_file(path)?;
    let gguf = GgufFile::parse(&map)?;
    let desc = describe_gguf(&gguf, "", [0; 32])?;
    Ok(FileView {
        format: format!("GGUF v{} (alignment {})", gguf.version, gguf.alignment),
        file_size: gguf.file_size,
        source: None,
        config: desc.config,
        tokenizer: desc.tokenizer,
        tensors: gguf
            .tensors
            .iter()
            .map(|t| TensorRow {
                name: t.name.clone(),
                ty: t.ggml_type.name().to_string(),
                shape: t.shape.clone(),
                offset: gguf.data_offset + t.offset,
                size: t.size,
            })
            .collect(),
        metadata: gguf.metadata,
    })
}

/// Non-null config fields, in declaration order.
fn config_fields(c: &ModelConfig) -> Vec<(String, Value)> {
    match serde_json::to_value(c) {
        Ok(Value::Object(map)) => map.into_iter().filter(|(_, v)| !v.is_null()).collect(),
        _ => Vec::new(),
    }
}

fn type_histogram(v: &FileView) -> BTreeMap<String, (usize, u64)> {
    let mut h = BTreeMap::new();
    for t in &v.tensors {
        let e = h.entry(t.ty.clone()).or_insert((0, 0));
        e.0 += 1;
        e.1 += t.size;
    }
    h
}

fn token_text(t: &TokenizerSpec, id: Option<u32>) -> String {
    match id.and_then(|i| t.token(i as usize).map(|b| (i, b))) {
        Some((i, b)) => format!("{i} {:?}", String::from_utf8_lossy(b)),
        None => "-".into(),
    }
}

/// What chat needs from a tokenizer: where the template comes from, and which tokens
/// end a turn.
struct ChatInfo {
    /// "file", "stand-in" (none in the file; chosen by the vocabulary's turn markers),
    /// or `None` when there is no usable template.
    template_source: Option<&'static str>,
    template_error: Option<String>,
    /// (id, text) of every end-of-generation token; `None` if the tokenizer cannot load.
    end_of_turn: Option<Vec<(u32, String)>>,
}

fn chat_info(t: &TokenizerSpec) -> ChatInfo {
    let in_file = t.chat_template.as_deref().is_some_and(|s| !s.is_empty());
    let tokenizer = Tokenizer::from_spec(t);
    let (template_source, template_error) = match &tokenizer {
        Ok(tok) => match ChatTemplate::for_model(t.chat_template.as_deref(), tok) {
            Ok(_) if in_file => (Some("file"), None),
            Ok(_) => (Some("stand-in"), None),
            Err(e) => (None, Some(e.to_string())),
        },
        Err(e) => (None, Some(e.to_string())),
    };
    let end_of_turn = tokenizer.ok().map(|tok| {
        tok.end_of_generation_ids()
            .iter()
            .map(|&id| {
                let text = tok.token_text(id).unwrap_or_default();
                (id, String::from_utf8_lossy(text).into_owned())
            })
            .collect()
    });
    ChatInfo {
        template_source,
        template_error,
        end_of_turn,
    }
}

fn tokenizer_json(t: &TokenizerSpec) -> Value {
    let chat = chat_info(t);
    json!({
        "model": t.model,
        "pre": t.pre,
        "tokens": t.n_tokens(),
        "merges": t.n_merges(),
        "bos_id": t.bos_id,
        "eos_id": t.eos_id,
        "eot_id": t.eot_id,
        "unknown_id": t.unknown_id,
        "padding_id": t.padding_id,
        "add_bos": t.add_bos,
        "add_eos": t.add_eos,
        "add_space_prefix": t.add_space_prefix,
        "chat_template": t.chat_template,
        "chat_template_source": chat.template_source,
        "chat_template_error": chat.template_error,
        "end_of_turn": chat.end_of_turn.map(|ids| ids
            .into_iter()
            .map(|(id, text)| json!({ "id": id, "text": text }))
            .collect::<Vec<_>>()),
    })
}

fn to_json(v: &FileView) -> Value {
    let hist: serde_json::Map<String, Value> = type_histogram(v)
        .into_iter()
        .map(|(k, (n, b))| (k, json!({ "count": n, "bytes": b })))
        .collect();
    json!({
        "format": v.format,
        "file_size": v.file_size,
        "source": v.source,
        "config": v.config,
        "tokenizer": v.tokenizer.as_ref().map(tokenizer_json),
        "metadata_keys": v.metadata.entries.iter().map(|e| &e.key).collect::<Vec<_>>(),
        "tensor_bytes": v.tensors.iter().map(|t| t.size).sum::<u64>(),
        "type_histogram": hist,
        "tensors": v.tensors.iter().map(|t| json!({
            "name": t.name, "type": t.ty, "shape": t.shape, "offset": t.offset, "size": t.size,
        })).collect::<Vec<_>>(),
    })
}

/// Lines of the chat template shown by default, and characters per line.
const TEMPLATE_LINES: usize = 4;
const TEMPLATE_LINE_CHARS: usize = 100;

fn print_chat(t: &TokenizerSpec) {
    let chat = chat_info(t);
    match (&t.chat_template, chat.template_source) {
        (Some(c), _) if !c.is_empty() => {
            let lines = c.lines().count();
            println!(
                "  chat template: {} chars, {lines} lines (inspect --json shows it all)",
                c.chars().count()
            );
            for line in c.lines().take(TEMPLATE_LINES) {
                let shown: String = line.chars().take(TEMPLATE_LINE_CHARS).collect();
                let more = if shown.len() < line.len() { " …" } else { "" };
                println!("    | {shown}{more}");
            }
            if lines > TEMPLATE_LINES {
                println!("    | … {} more lines", lines - TEMPLATE_LINES);
            }
        }
        (_, Some(_)) => println!(
            "  chat template: none in the file; chat uses a stand-in matching the vocabulary's turn markers"
        ),
        _ => println!("  chat template: none"),
    }
    if let Some(e) = &chat.template_error {
        if t.chat_template.as_deref().is_some_and(|s| !s.is_empty()) {
            println!("    unusable: {e}");
        }
    }
    match &chat.end_of_turn {
        Some(ids) if !ids.is_empty() => {
            let shown: Vec<String> = ids.iter().map(|(id, s)| format!("{id} {s:?}")).collect();
            println!("  end of turn:   {}", shown.join(", "));
        }
        Some(_) => println!("  end of turn:   none"),
        None => {}
    }
}

fn print_human(v: &FileView, all_tensors: bool) {
    println!("format:        {} ({:.1} MB)", v.format, mb(v.file_size));
    if let Some(s) = &v.source {
        println!(
            "source:        {} ({:.1} MB, GGUF v{}, blake3 {})",
            s["file_name"].as_str().unwrap_or("?"),
            mb(s["file_size"].as_u64().unwrap_or(0)),
            s["gguf_version"],
            s["blake3"].as_str().unwrap_or("?")
        );
    }
    println!("architecture:  {}", v.config.architecture);
    for (k, val) in config_fields(&v.config) {
        if k != "architecture" {
            println!("  {k:<38} {val}");
        }
    }
    match &v.tokenizer {
        None => println!("tokenizer:     none"),
        Some(t) => {
            println!(
                "tokenizer:     {} (pre: {}), {} tokens, {} merges",
                t.model,
                t.pre.as_deref().unwrap_or("default"),
                t.n_tokens(),
                t.n_merges()
            );
            println!(
                "  bos {}  eos {}  eot {}  add_bos {:?}  add_eos {:?}",
                token_text(t, t.bos_id),
                token_text(t, t.eos_id),
                token_text(t, t.eot_id),
                t.add_bos,
                t.add_eos
            );
            print_chat(t);
        }
    }
    println!("metadata:      {} keys", v.metadata.entries.len());
    let total: u64 = v.tensors.iter().map(|t| t.size).sum();
    println!("tensors:       {} ({:.1} MB)", v.tensors.len(), mb(total));
    for (ty, (n, bytes)) in type_histogram(v) {
        println!("  {ty:<8} {n:>5} tensors {:>10.1} MB", mb(bytes));
    }
    println!(
        "  {:<40} {:<8} {:<22} {:>12} {:>12}",
        "name", "type", "shape", "offset", "bytes"
    );
    let shown = if all_tensors { v.tensors.len() } else { 24 };
    for t in v.tensors.iter().take(shown) {
        let shape = format!("{:?}", t.shape);
        println!(
            "  {:<40} {:<8} {:<22} {:>12} {:>12}",
            t.name, t.ty, shape, t.offset, t.size
        );
    }
    if v.tensors.len() > shown {
        println!(
            "  ... {} more (--all-tensors lists them)",
            v.tensors.len() - shown
        );
    }
}
