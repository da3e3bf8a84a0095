//! `smq verify`: check every hash of an SMQ file and name what is corrupt.

use serde_json::json;
use smq_format::SmqFile;

use super::{check_input, fail, print_json, CliResult};
use crate::cli::VerifyArgs;

pub fn run(args: &VerifyArgs) -> CliResult {
    check_input(&args.file)?;
    // Opening checks the header, section bounds and the manifest hash.
    let file =
        SmqFile::open(&args.file).map_err(|e| fail(format!("{}: {e}", args.file.display())))?;
    let metadata_ok = file.metadata().is_ok();
    let corrupt = file.corrupt_tensors();
    let n = file.manifest().tensors.len();
    if args.json {
        print_json(&json!({
            "file": args.file,
            "ok": metadata_ok && corrupt.is_empty(),
            "tensors": n,
            "metadata_ok": metadata_ok,
            "corrupt_tensors": corrupt,
        }));
    } else if metadata_ok && corrupt.is_empty() {
        println!(
            "{}: ok (header, manifest, metadata and {n} tensors match their blake3)",
            args.file.display()
        );
    }
    if !metadata_ok {
        return Err(fail(format!(
            "{}: metadata section is corrupt (blake3 mismatch)",
            args.file.display()
        )));
    }
    if !corrupt.is_empty() {
        return Err(fail(format!(
            "{}: {} of {n} tensors corrupt (blake3 mismatch): {}",
            args.file.display(),
            corrupt.len(),
            corrupt.join(", ")
        )));
    }
    Ok(())
}
