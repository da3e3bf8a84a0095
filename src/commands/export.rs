//! `smq export`: rebuild the source GGUF from an SMQ file.

use serde_json::json;
use smq_converter::export::export;

use super::{about, check_input, check_output, hex, mb, print_json, CliResult};
use crate::cli::ExportArgs;

pub fn run(args: &ExportArgs) -> CliResult {
    check_input(&args.input)?;
    check_output(&args.output, args.force)?;
    let r = export(&args.input, &args.output).map_err(|e| about(&args.input, e))?;
    if args.json {
        print_json(&json!({
            "output": args.output,
            "bytes": r.bytes_written,
            "tensors": r.tensor_count,
            "blake3": hex(&r.blake3),
            "byte_identical": r.byte_identical,
            "exact_possible": r.exact_possible,
            "seconds": r.elapsed_secs,
        }));
        return Ok(());
    }
    println!(
        "exported {} -> {}\n  {} tensors, {:.1} MB in {:.2} s, blake3 {}",
        args.input.display(),
        args.output.display(),
        r.tensor_count,
        mb(r.bytes_written),
        r.elapsed_secs,
        hex(&r.blake3)
    );
    match r.note() {
        None => println!("  byte-identical to the source GGUF"),
        Some(note) => eprintln!("warning: {note}"),
    }
    Ok(())
}
