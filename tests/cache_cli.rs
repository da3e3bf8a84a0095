//! The conversion cache through the CLI: hits leave the entry untouched, changed sources
//! get their own entry, `cache list|rm|clear|path` manage entries, and concurrent imports
//! of one source build it once.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::*;
use serde_json::Value;
use smq_converter::gguf::GgufFile;
use smq_format::GgmlType;

/// A source big enough (about 8 MB) that two concurrent imports overlap.
fn write_source(path: &Path, seed: u64) {
    let shape = vec![4096, 1024];
    let big = tensor_bytes(GgmlType::F16, &shape, seed);
    let bytes = small_model(seed)
        .tensor("big.weight", GgmlType::F16, shape, big)
        .to_bytes()
        .unwrap();
    write(path, &bytes);
}

/// Every complete entry (`*.smq`) below the cache root.
fn entries(sb: &Sandbox) -> Vec<String> {
    tree(&sb.cache_dir())
        .into_iter()
        .filter(|f| f.ends_with(".smq"))
        .collect()
}

/// Files an interrupted or unfinished build would leave.
fn leftovers(sb: &Sandbox) -> Vec<String> {
    tree(&sb.cache_dir())
        .into_iter()
        .filter(|f| f.contains("partial") || f.contains(".tmp"))
        .collect()
}

fn hex(hash: [u8; 32]) -> String {
    blake3::Hash::from(hash).to_hex().to_string()
}

fn import_json(sb: &Sandbox, src: &Path) -> (PathBuf, bool) {
    let v = sb.ok(["import", arg(src), "--json"]).json();
    let path = PathBuf::from(v["output"].as_str().expect("output path"));
    (path, v["cache_hit"].as_bool().expect("cache_hit"))
}

fn list(sb: &Sandbox) -> Vec<Value> {
    let v = sb.ok(["cache", "list", "--json"]).json();
    v["entries"].as_array().expect("entries array").clone()
}

#[cfg(unix)]
fn identity(path: &Path) -> (u64, u64, std::time::SystemTime, u64) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).expect("stat entry");
    (m.dev(), m.ino(), m.modified().unwrap(), m.len())
}

#[cfg(not(unix))]
fn identity(path: &Path) -> (u64, u64, std::time::SystemTime, u64) {
    let m = std::fs::metadata(path).expect("stat entry");
    (0, 0, m.modified().unwrap(), m.len())
}

#[test]
fn second_import_is_a_hit_and_changes_nothing() {
    let sb = Sandbox::new();
    let src = sb.path("x.gguf");
    write_source(&src, 1);

    let (entry, hit) = import_json(&sb, &src);
    assert!(!hit, "first import reported a cache hit");
    assert!(
        entry.starts_with(sb.cache_dir()),
        "{} is not in the cache",
        entry.display()
    );
    assert_eq!(entries(&sb).len(), 1);
    let before = identity(&entry);

    let (again, hit) = import_json(&sb, &src);
    assert!(hit, "second import was not a cache hit");
    assert_eq!(again, entry);
    let text = sb.ok(["import", arg(&src)]);
    assert!(text.stdout.contains("cache hit"), "{}", text.stdout);
    // The same content under another name is the same key.
    let copy = sb.path("renamed.gguf");
    std::fs::copy(&src, &copy).unwrap();
    let (same, hit) = import_json(&sb, &copy);
    assert!(hit && same == entry, "renamed copy missed the cache");

    assert_eq!(identity(&entry), before, "a cache hit touched the entry");
    assert_eq!(entries(&sb).len(), 1);
    sb.ok(["verify", arg(&entry)]);

    // The entry is exactly what a direct import writes.
    let direct = sb.path("direct.smq");
    sb.ok(["import", arg(&src), "-o", arg(&direct)]);
    assert!(
        read(&direct) == read(&entry),
        "cache entry differs from import -o"
    );
}

#[test]
fn changed_source_list_rm_clear() {
    let sb = Sandbox::new();
    let x = sb.path("x.gguf");
    write_source(&x, 2);
    // A copy with one tensor byte changed is a different source.
    let y = sb.path("y.gguf");
    let mut bytes = read(&x);
    let gguf = GgufFile::parse(&bytes).unwrap();
    let t = gguf.tensor("blk.0.attn_q.weight").unwrap();
    let at = (gguf.data_offset + t.offset + 5) as usize;
    bytes[at] ^= 0xff;
    write(&y, &bytes);

    let (ex, hit_x) = import_json(&sb, &x);
    let (ey, hit_y) = import_json(&sb, &y);
    assert!(!hit_x && !hit_y, "a changed source hit the cache");
    assert_ne!(ex, ey);
    assert_eq!(entries(&sb).len(), 2);

    let (hx, hy) = (hex(blake3_of(&x)), hex(blake3_of(&y)));
    let listed = list(&sb);
    assert_eq!(listed.len(), 2, "{listed:?}");
    for (hash, name, path) in [(&hx, "x.gguf", &ex), (&hy, "y.gguf", &ey)] {
        let e = listed
            .iter()
            .find(|e| e["hash"] == hash.as_str())
            .unwrap_or_else(|| panic!("{name} ({hash}) not listed: {listed:?}"));
        assert_eq!(e["source"], name);
        assert_eq!(e["path"], arg(path));
        assert_eq!(
            e["size"].as_u64(),
            Some(std::fs::metadata(path).unwrap().len())
        );
    }
    let plain = sb.ok(["cache", "list"]);
    assert!(plain.stdout.contains(&hx) && plain.stdout.contains(&hy));

    let root = sb.ok(["cache", "path"]);
    assert_eq!(root.stdout.trim_end(), arg(&sb.cache_dir()));

    // rm by a unique prefix removes exactly that entry.
    sb.ok(["cache", "rm", &hy[..10]]);
    assert!(!ey.exists(), "removed entry still on disk");
    assert!(ex.exists());
    let listed = list(&sb);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["hash"], hx.as_str());
    for bad in [&hy[..10], "zz", ""] {
        sb.run(["cache", "rm", bad]).assert_clean_error();
    }
    assert!(ex.exists(), "a failed rm removed something");

    // Removed entries are rebuilt on the next import.
    let (again, hit) = import_json(&sb, &y);
    assert!(!hit && again == ey);

    sb.ok(["cache", "clear"]);
    assert!(list(&sb).is_empty());
    assert!(entries(&sb).is_empty(), "{:?}", entries(&sb));
    let empty = sb.ok(["cache", "list"]);
    assert!(empty.stdout.contains("empty"), "{}", empty.stdout);
    let (_, hit) = import_json(&sb, &x);
    assert!(!hit, "import after clear hit the cache");
    assert!(leftovers(&sb).is_empty(), "{:?}", leftovers(&sb));
}

#[test]
fn concurrent_imports_build_once() {
    for round in 0..3 {
        let sb = Sandbox::new();
        let src = sb.path("x.gguf");
        write_source(&src, 10 + round);
        let children: Vec<_> = (0..2)
            .map(|_| {
                sb.cmd(["import", arg(&src), "--json"])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("spawn smq")
            })
            .collect();
        let runs: Vec<Run> = children
            .into_iter()
            .map(|c| Run::from_output("concurrent import".into(), c.wait_with_output().unwrap()))
            .collect();
        for r in &runs {
            r.assert_success();
        }
        let found = entries(&sb);
        assert_eq!(found.len(), 1, "round {round}: entries {found:?}");
        assert!(leftovers(&sb).is_empty(), "{:?}", leftovers(&sb));
        let outputs: Vec<Value> = runs.iter().map(Run::json).collect();
        assert_eq!(outputs[0]["output"], outputs[1]["output"]);
        let builds = outputs.iter().filter(|o| o["cache_hit"] == false).count();
        assert_eq!(builds, 1, "round {round}: {outputs:?}");
        let entry = sb.cache_dir().join(&found[0]);
        sb.ok(["verify", arg(&entry)]);
    }
}
