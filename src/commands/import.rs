//! `smq import`: GGUF to SMQ, into a chosen file or into the conversion cache.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use serde_json::json;
use smq_cache::Cache;
use smq_converter::import::{hash_file, import, ImportReport};

use super::{about, check_input, check_output, fail, hex, mb, print_json, CliResult};
use crate::cli::ImportArgs;
use crate::progress;

pub fn run(args: &ImportArgs) -> CliResult {
    check_input(&args.input)?;
    let (path, report) = match &args.output {
        Some(out) => {
            check_output(out, args.force)?;
            let report = import_to(&args.input, out).map_err(|e| about(&args.input, e))?;
            (out.clone(), Some(report))
        }
        None => import_to_cache(&args.input)?,
    };
    let smq_size = std::fs::metadata(&path)?.len();
    if args.json {
        let mut v = json!({
            "output": path,
            "cache_hit": report.is_none(),
            "smq_size": smq_size,
        });
        if let Some(r) = &report {
            v["source_size"] = json!(r.source_size);
            v["tensors"] = json!(r.tensor_count);
            v["source_blake3"] = json!(hex(&r.source_blake3));
            v["seconds"] = json!(r.elapsed_secs);
            v["mb_per_s"] = json!(mb(r.source_size) / r.elapsed_secs);
        }
        print_json(&v);
        return Ok(());
    }
    match report {
        None => println!("cache hit: {} (nothing rewritten)", path.display()),
        Some(r) => println!(
            "imported {} -> {}\n  {} tensors, {:.1} MB -> {:.1} MB in {:.2} s ({:.0} MB/s)",
            args.input.display(),
            path.display(),
            r.tensor_count,
            mb(r.source_size),
            mb(smq_size),
            r.elapsed_secs,
            mb(r.source_size) / r.elapsed_secs
        ),
    }
    Ok(())
}

fn import_to(input: &Path, output: &Path) -> Result<ImportReport, smq_converter::Error> {
    let bar = progress::bytes_bar("importing");
    let report = import(input, output, &progress::callback(&bar));
    bar.finish_and_clear();
    report
}

/// Imports through the cache: returns the entry and, if it had to be built, the report.
pub fn import_to_cache(input: &Path) -> Result<(PathBuf, Option<ImportReport>), super::CliError> {
    let cache = Cache::open_default()?;
    let hash = cache
        .source_hash(input, |p| hash_file(p).map_err(std::io::Error::other))
        .map_err(|e| fail(format!("{}: {e}", input.display())))?;
    let name = input
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let report = RefCell::new(None);
    let (path, hit) = cache
        .get_or_insert_named(&hash, &name, |tmp| {
            import_to(input, tmp).map(|r| *report.borrow_mut() = Some(r))
        })
        .map_err(|e| about(input, e))?;
    Ok((path, if hit { None } else { report.into_inner() }))
}
