//! `smq tokenize`: token ids of a text as llama.cpp gives them.

use serde_json::json;

use super::{print_json, CliResult};
use crate::cli::TokenizeArgs;
use crate::model_open;

pub fn run(args: &TokenizeArgs) -> CliResult {
    model_open::setup_threads(&args.model)?;
    let mut mapped = model_open::open(&args.model)?;
    let (_, tokenizer, _) = model_open::load(&mut mapped)?;
    let ids = tokenizer.encode(&args.text, true, true);
    if args.json {
        print_json(&json!({ "ids": ids }));
        return Ok(());
    }
    for id in ids {
        let piece = tokenizer.token_text(id).unwrap_or_default();
        println!("{id:>7} {:?}", String::from_utf8_lossy(piece));
    }
    Ok(())
}
