//! Shared helpers for the CLI integration tests: running the real `smq` binary against a
//! private cache, locating the real models, and building synthetic GGUF files.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use smq_converter::gguf::GgufBuilder;
use smq_format::{GgmlType, MetadataArray, MetadataValue};
use tempfile::TempDir;

/// A scratch directory plus a private conversion cache inside it, so no test ever
/// touches the user's cache (`$SMQ_CACHE_DIR` is set on every command).
pub struct Sandbox {
    pub dir: TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox {
            dir: tempfile::tempdir().expect("create temp dir"),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The cache root given to the CLI.
    pub fn cache_dir(&self) -> PathBuf {
        self.path("cache")
    }

    /// A fresh, empty subdirectory (for checking that failed commands leave nothing).
    pub fn subdir(&self, name: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::create_dir_all(&p).expect("create subdir");
        p
    }

    /// The `smq` command with this sandbox's cache.
    pub fn cmd<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = Command::new(env!("CARGO_BIN_EXE_smq"));
        c.args(args)
            .env("SMQ_CACHE_DIR", self.cache_dir())
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LOG");
        c
    }

    /// Runs `smq ARGS` to completion.
    pub fn run<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut c = self.cmd(args);
        let shown = format!("{c:?}");
        Run::from_output(shown, c.output().expect("spawn smq"))
    }

    /// Runs `smq ARGS` and fails the test unless it exits 0.
    pub fn ok<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let r = self.run(args);
        r.assert_success();
        r
    }
}

/// A finished `smq` process.
pub struct Run {
    pub command: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from_output(command: String, out: Output) -> Run {
        Run {
            command,
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn assert_success(&self) {
        assert_eq!(
            self.code,
            Some(0),
            "{} failed\nstdout: {}\nstderr: {}",
            self.command,
            self.stdout,
            self.stderr
        );
        assert_no_panic(self);
    }

    /// The last stdout line parsed as JSON (what `--json` prints).
    pub fn json(&self) -> serde_json::Value {
        let line = self.stdout.lines().last().unwrap_or_default();
        serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{}: stdout is not JSON ({e}): {}", self.command, line))
    }

    /// The contract for refused input: exit code 1, exactly one stderr line starting with
    /// `error: `, and no panic.
    pub fn assert_clean_error(&self) {
        assert_no_panic(self);
        assert_eq!(
            self.code,
            Some(1),
            "{}: expected exit code 1\nstdout: {}\nstderr: {}",
            self.command,
            self.stdout,
            self.stderr
        );
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "{}: expected exactly one stderr line, got: {:?}",
            self.command,
            self.stderr
        );
        assert!(
            lines[0].starts_with("error: "),
            "{}: stderr does not start with `error: `: {:?}",
            self.command,
            lines[0]
        );
    }

    /// The one error line (call after `assert_clean_error`).
    pub fn error_line(&self) -> &str {
        self.stderr.lines().next().unwrap_or_default()
    }
}

fn assert_no_panic(r: &Run) {
    assert!(
        !r.stderr.contains("panicked") && !r.stdout.contains("panicked"),
        "{} panicked:\n{}",
        r.command,
        r.stderr
    );
}

/// Every file name inside `dir` (not recursive), sorted.
pub fn dir_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| {
                e.expect("read dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("{}: {e}", dir.display()),
    };
    names.sort();
    names
}

/// Every file below `dir`, recursively, as paths relative to it, sorted.
pub fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd {
            let e = e.expect("read dir entry");
            let p = e.path();
            if e.file_type().expect("file type").is_dir() {
                walk(base, &p, out);
            } else {
                let rel = p.strip_prefix(base).expect("below base");
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

pub const SMOLLM: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const GEMMA: &str = "gemma-3-270m-q4_k_m.gguf";

/// The path of a real model, or `None` (after printing why) when it is absent and the
/// environment does not require it (`SMQ_REQUIRE_MODELS=1`, as in CI, fails instead).
pub fn real_model(file: &str) -> Option<PathBuf> {
    smq_converter::test_models::find(file)
}

/// Deterministic pseudo-random bytes (xorshift64*), so failures reproduce.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// Bytes for a tensor of this type and shape.
pub fn tensor_bytes(ty: GgmlType, shape: &[u64], seed: u64) -> Vec<u8> {
    let n = ty
        .tensor_bytes(shape)
        .unwrap_or_else(|| panic!("{ty:?} {shape:?} has no byte size"));
    bytes(n as usize, seed)
}

pub fn string(s: &str) -> MetadataValue {
    MetadataValue::String(s.to_string())
}

pub fn array(element_type: u32, items: Vec<MetadataValue>) -> MetadataValue {
    MetadataValue::Array(MetadataArray {
        element_type,
        items,
    })
}

/// GGUF value type ids (the array element types used below).
pub const T_U8: u32 = 0;
pub const T_U32: u32 = 4;
pub const T_F32: u32 = 6;
pub const T_STRING: u32 = 8;
pub const T_ARRAY: u32 = 9;
pub const T_I64: u32 = 11;

/// A small but complete model-like GGUF: a few key/values and four tensors of mixed
/// types, laid out with the default alignment.
pub fn small_model(seed: u64) -> GgufBuilder {
    let tensors: [(&str, GgmlType, Vec<u64>); 4] = [
        ("token_embd.weight", GgmlType::Q8_0, vec![64, 10]),
        ("blk.0.attn_q.weight", GgmlType::Q4_0, vec![64, 7]),
        ("blk.0.attn_norm.weight", GgmlType::F32, vec![64]),
        ("output.weight", GgmlType::Q4K, vec![256, 3]),
    ];
    let mut b = GgufBuilder::new(3)
        .kv("general.architecture", string("llama"))
        .kv("general.name", string("synthetic"))
        .kv("llama.block_count", MetadataValue::U32(1))
        .kv("llama.embedding_length", MetadataValue::U32(64))
        .kv(
            "tokenizer.ggml.tokens",
            array(T_STRING, ["<s>", "</s>", "a", "b"].map(string).to_vec()),
        )
        // A long key/value section, so truncation tests can cut deep inside it.
        .kv(
            "test.words",
            array(
                T_STRING,
                (0..64).map(|i| string(&format!("w{i}"))).collect(),
            ),
        )
        .kv(
            "test.ints",
            array(T_U32, (0..64).map(MetadataValue::U32).collect()),
        );
    for (i, (name, ty, shape)) in tensors.into_iter().enumerate() {
        let data = tensor_bytes(ty, &shape, seed + i as u64);
        b = b.tensor(name, ty, shape, data);
    }
    b
}

/// blake3 of a file's bytes.
pub fn blake3_of(path: &Path) -> [u8; 32] {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    *blake3::hash(&bytes).as_bytes()
}

pub fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Path as a `&str` argument.
pub fn arg(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}
