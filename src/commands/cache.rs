//! `smq cache list|path|clear|rm`.

use serde_json::json;
use smq_cache::Cache;

use super::{mb, print_json, CliResult};
use crate::cli::CacheCommand;

pub fn run(cmd: &CacheCommand) -> CliResult {
    let cache = Cache::open_default()?;
    match cmd {
        CacheCommand::Path => println!("{}", cache.root().display()),
        CacheCommand::List { json } => {
            let entries = cache.list()?;
            if *json {
                let items: Vec<_> = entries
                    .iter()
                    .map(|e| {
                        json!({
                            "hash": e.hash_hex,
                            "path": e.path,
                            "size": e.size,
                            "source": e.source_name,
                        })
                    })
                    .collect();
                print_json(&json!({ "entries": items }));
            } else if entries.is_empty() {
                println!("cache is empty ({})", cache.root().display());
            } else {
                for e in &entries {
                    println!(
                        "{}  {:>9.1} MB  {}",
                        e.hash_hex,
                        mb(e.size),
                        e.source_name.as_deref().unwrap_or("-")
                    );
                }
            }
        }
        CacheCommand::Clear => {
            let s = cache.clear()?;
            println!("removed {} entries ({:.1} MB)", s.entries, mb(s.bytes));
            if s.busy > 0 {
                eprintln!("warning: {} entries are being built and were kept", s.busy);
            }
        }
        CacheCommand::Rm { hash } => {
            let e = cache.remove(hash)?;
            println!("removed {} ({:.1} MB)", e.hash_hex, mb(e.size));
        }
    }
    Ok(())
}
