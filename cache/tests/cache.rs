//! Behaviour of the conversion cache: hits and misses, concurrent inserts from threads and
//! from processes, removal, clearing and leftovers of interrupted builds.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use smq_cache::{Cache, CacheError, LAYOUT_VERSION};

fn key(seed: u8) -> [u8; 32] {
    *blake3::hash(&[seed]).as_bytes()
}

/// A builder that writes `body` the way the converter does: fully, then synced.
fn write_body(path: &Path, body: &[u8]) -> io::Result<()> {
    let mut f = fs::File::create(path)?;
    f.write_all(body)?;
    f.sync_all()
}

/// Appends one byte to `marker`: counts builds across threads and processes.
fn mark(marker: &Path) -> io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(marker)?;
    f.write_all(b"b")
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map(|it| {
            it.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn miss_then_hit() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::at(dir.path());
    let h = key(1);
    assert_eq!(cache.lookup(&h), None);

    let mut calls = 0;
    let (path, hit) = cache
        .get_or_insert_with(&h, |p| {
            calls += 1;
            write_body(p, b"converted model")
        })
        .unwrap();
    assert!(!hit);
    assert_eq!(calls, 1);
    assert_eq!(fs::read(&path).unwrap(), b"converted model");
    assert_eq!(cache.lookup(&h), Some(path.clone()));
    assert!(path.starts_with(dir.path()));
    assert_eq!(
        path.parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap(),
        format!("v{}.{}", smq_format::FORMAT_MAJOR, LAYOUT_VERSION)
    );

    let (again, hit) = cache
        .get_or_insert_with(&h, |_| -> io::Result<()> { panic!("a hit must not build") })
        .unwrap();
    assert!(hit);
    assert_eq!(again, path);
    assert!(dir.path().join("CACHEDIR.TAG").is_file());
}

#[cfg(unix)]
#[test]
fn entries_are_read_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::at(dir.path());
    let (path, _) = cache
        .get_or_insert_with(&key(2), |p| write_body(p, b"x"))
        .unwrap();
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o444);
}

#[test]
fn different_source_hash_misses() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::at(dir.path());
    let a = *blake3::hash(b"model v1").as_bytes();
    let b = *blake3::hash(b"model v2").as_bytes();
    cache
        .get_or_insert_with(&a, |p| write_body(p, b"A"))
        .unwrap();
    assert_eq!(cache.lookup(&b), None);
    let (pb, hit) = cache
        .get_or_insert_with(&b, |p| write_body(p, b"B"))
        .unwrap();
    assert!(!hit);
    assert_eq!(fs::read(pb).unwrap(), b"B");
    assert_eq!(fs::read(cache.lookup(&a).unwrap()).unwrap(), b"A");
}

#[test]
fn other_layout_versions_are_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::at(dir.path());
    let h = key(3);
    let hex = smq_cache::to_hex(&h);
    let old = dir.path().join(format!(
        "v{}.{}",
        smq_format::FORMAT_MAJOR,
        LAYOUT_VERSION - 1
    ));
    fs::create_dir_all(&old).unwrap();
    fs::write(old.join(format!("{hex}.smq")), b"old layout").unwrap();
    assert_eq!(cache.lookup(&h), None);
    assert!(cache.list().unwrap().is_empty());
    // `clear` sweeps old versions too.
    let summary = cache.clear().unwrap();
    assert_eq!(summary.entries, 1);
    assert!(!old.exists());
}

#[test]
fn failed_build_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::at(dir.path());
    let h = key(4);
    let err = cache
        .get_or_insert_with(&h, |p| {
            write_body(p, b"half")?;
            Err(io::Error::other("unsupported tensor type"))
        })
        .unwrap_err();
    assert!(matches!(err, CacheError::Build { .. }));
    assert!(err.to_string().contains("unsupported tensor type"), "{err}");
    assert_eq!(cache.lookup(&h), None);
    let names = files_in(&cache.entries_dir());
    assert!(names.iter().all(|n| !n.contains(".partial")), "{names:?}");

    let err = cache
        .get_or_insert_with(&h, |_| io::Result::Ok(()))
        .unwrap_err();
    assert!(matches!(err, CacheError::BuildWroteNothing { .. }), "{err}");
    assert_eq!(cache.lookup(&h), None);
}

#[test]
fn interrupted_build_is_not_served_and_is_cleaned() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::at(dir.path());
    let h = key(5);
    let hex = smq_cache::to_hex(&h);
    let entries = cache.entries_dir();
    fs::create_dir_all(&entries).unwrap();
    // What a killed build leaves: the builder's file and an atomic writer's temp beside it.
    fs::write(entries.join(format!("{hex}.partial")), b"truncated").unwrap();
    fs::write(entries.join(format!(".{hex}.partial.tmp-999-0")), b"trunc").unwrap();

    assert_eq!(cache.lookup(&h), None);
    assert!(cache.list().unwrap().is_empty());

    let (path, hit) = cache
        .get_or_insert_with(&h, |p| {
            // The builder starts from a clean slate.
            assert!(!p.exists());
            write_body(p, b"complete")
        })
        .unwrap();
    assert!(!hit);
    assert_eq!(fs::read(&path).unwrap(), b"complete");
    let names = files_in(&entries);
    assert_eq!(names, vec![format!("{hex}.lock"), format!("{hex}.smq")]);
}

#[test]
fn stale_partials_of_idle_keys_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::at(dir.path());
    let hex = smq_cache::to_hex(&key(6));
    let entries = cache.entries_dir();
    fs::create_dir_all(&entries).unwrap();
    fs::write(entries.join(format!("{hex}.partial")), b"junk").unwrap();
    assert_eq!(cache.remove_stale_partials().unwrap(), 1);
    assert!(!entries.join(format!("{hex}.partial")).exists());
}

#[test]
fn concurrent_insert_from_threads() {
    let dir = tempfile::tempdir().unwrap();
    let h = key(7);
    let builds = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(2));
    let marker = dir.path().join("marker");
    let results: Vec<(PathBuf, bool)> = (0..2)
        .map(|_| {
            let cache = Cache::at(dir.path().join("cache"));
            let builds = builds.clone();
            let barrier = barrier.clone();
            let marker = marker.clone();
            std::thread::spawn(move || {
                barrier.wait();
                cache
                    .get_or_insert_with(&h, |p| {
                        builds.fetch_add(1, Ordering::SeqCst);
                        mark(&marker)?;
                        // Hold the lock long enough for the other thread to queue on it.
                        std::thread::sleep(Duration::from_millis(300));
                        write_body(p, b"one build")
                    })
                    .unwrap()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    assert_eq!(builds.load(Ordering::SeqCst), 1);
    assert_eq!(fs::read(&marker).unwrap(), b"b");
    assert_eq!(results[0].0, results[1].0);
    assert_eq!(results.iter().filter(|(_, hit)| !hit).count(), 1);
    let cache = Cache::at(dir.path().join("cache"));
    let listed = cache.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(fs::read(&listed[0].path).unwrap(), b"one build");
}

const CHILD_ENV: &str = "SMQ_CACHE_TEST_CHILD_DIR";

/// Entry point of the child processes spawned by `concurrent_insert_from_processes`; does
/// nothing unless that test set the environment.
#[test]
#[ignore = "run as a child process by concurrent_insert_from_processes"]
fn child_insert_worker() {
    let Some(work) = std::env::var_os(CHILD_ENV).map(PathBuf::from) else {
        return;
    };
    // Start together: wait for the parent's go file so both children race for the lock.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !work.join("go").exists() {
        assert!(Instant::now() < deadline, "parent never said go");
        std::thread::sleep(Duration::from_millis(5));
    }
    let cache = Cache::at(work.join("cache"));
    let (path, hit) = cache
        .get_or_insert_named(&key(8), "shared.gguf", |p| {
            mark(&work.join("marker"))?;
            std::thread::sleep(Duration::from_millis(400));
            write_body(p, b"built by one process")
        })
        .unwrap();
    println!("RESULT hit={hit} path={}", path.display());
}

#[test]
fn concurrent_insert_from_processes() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..2)
        .map(|_| {
            Command::new(&exe)
                .args(["child_insert_worker", "--exact", "--ignored", "--nocapture"])
                .env(CHILD_ENV, dir.path())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    fs::write(dir.path().join("go"), b"").unwrap();
    let outputs: Vec<String> = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                out.status.success(),
                "child failed: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            stdout
        })
        .collect();
    let hits: Vec<bool> = outputs
        .iter()
        .map(|o| {
            let line = o
                .lines()
                .find(|l| l.starts_with("RESULT "))
                .unwrap_or_else(|| panic!("no result line in {o}"));
            line.contains("hit=true")
        })
        .collect();
    assert_eq!(hits.iter().filter(|h| !**h).count(), 1, "{outputs:?}");
    assert_eq!(fs::read(dir.path().join("marker")).unwrap(), b"b");

    let cache = Cache::at(dir.path().join("cache"));
    let listed = cache.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].source_name.as_deref(), Some("shared.gguf"));
    assert_eq!(fs::read(&listed[0].path).unwrap(), b"built by one process");
}

#[test]
fn list_reports_entries() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::at(dir.path());
    assert!(cache.list().unwrap().is_empty());
    cache
        .get_or_insert_named(&key(9), "SmolLM2.gguf", |p| write_body(p, b"12345"))
        .unwrap();
    cache
        .get_or_insert_with(&key(10), |p| write_body(p, b"12"))
        .unwrap();
    let mut listed = cache.list().unwrap();
    listed.sort_by_key(|e| e.size);
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].size, 2);
    assert_eq!(listed[0].source_name, None);
    assert_eq!(listed[0].hash, key(10));
    assert_eq!(listed[1].size, 5);
    assert_eq!(listed[1].source_name.as_deref(), Some("SmolLM2.gguf"));
    assert_eq!(listed[1].hash_hex, smq_cache::to_hex(&key(9)));
}

/// Two keys sharing their first hex digit, for prefix tests.
fn keys_sharing_first_digit() -> ([u8; 32], [u8; 32]) {
    let first = key(0);
    let other = (1..=255u8)
        .map(key)
        .find(|k| k[0] >> 4 == first[0] >> 4 && k[0] != first[0])
        .expect("some seed shares the first hex digit");
    (first, other)
}

#[test]
fn remove_by_unique_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::at(dir.path());
    let (a, b) = keys_sharing_first_digit();
    cache
        .get_or_insert_with(&a, |p| write_body(p, b"a"))
        .unwrap();
    cache
        .get_or_insert_with(&b, |p| write_body(p, b"b"))
        .unwrap();
    let ha = smq_cache::to_hex(&a);

    let err = cache.remove(&ha[..1]).unwrap_err();
    assert!(
        matches!(err, CacheError::Ambiguous { count: 2, .. }),
        "{err}"
    );
    assert!(matches!(
        cache.remove("xyz"),
        Err(CacheError::BadPrefix { .. })
    ));
    assert!(matches!(
        cache.remove(""),
        Err(CacheError::BadPrefix { .. })
    ));
    let absent = (0..16)
        .map(|d| format!("{d:x}"))
        .find(|d| !ha.starts_with(d.as_str()))
        .unwrap();
    assert!(matches!(
        cache.remove(&absent),
        Err(CacheError::NotFound { .. })
    ));

    // Two bytes always tell the keys apart; upper case is accepted.
    let removed = cache.remove(&ha[..2].to_uppercase()).unwrap();
    assert_eq!(removed.hash, a);
    assert_eq!(cache.lookup(&a), None);
    assert!(cache.lookup(&b).is_some());
    let names = files_in(&cache.entries_dir());
    assert!(names.iter().all(|n| !n.starts_with(&ha)), "{names:?}");

    // The key can be inserted again after removal.
    let (_, hit) = cache
        .get_or_insert_with(&a, |p| write_body(p, b"a2"))
        .unwrap();
    assert!(!hit);
}

#[test]
fn clear_removes_everything() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::at(dir.path());
    for seed in 20..23 {
        cache
            .get_or_insert_named(&key(seed), "m.gguf", |p| write_body(p, b"abcd"))
            .unwrap();
    }
    let src = dir.path().join("src.gguf");
    fs::write(&src, b"source").unwrap();
    cache.source_hash(&src, smq_cache::blake3_file).unwrap();
    assert!(dir.path().join("source-hashes.json").exists());

    let summary = cache.clear().unwrap();
    assert_eq!(summary.entries, 3);
    assert_eq!(summary.bytes, 12);
    assert_eq!(summary.busy, 0);
    assert!(cache.list().unwrap().is_empty());
    assert!(files_in(&cache.entries_dir()).is_empty());
    assert!(!dir.path().join("source-hashes.json").exists());
    // Usable again afterwards.
    let (_, hit) = cache
        .get_or_insert_with(&key(20), |p| write_body(p, b"again"))
        .unwrap();
    assert!(!hit);
}

#[test]
fn source_hash_matches_blake3_and_keys_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::at(dir.path().join("cache"));
    let src = dir.path().join("model.gguf");
    let body: Vec<u8> = (0..200_000u32).map(|i| (i * 31 % 251) as u8).collect();
    fs::write(&src, &body).unwrap();
    let h = cache.source_hash(&src, smq_cache::blake3_file).unwrap();
    assert_eq!(h, *blake3::hash(&body).as_bytes());
    let (_, hit) = cache
        .get_or_insert_with(&h, |p| write_body(p, b"m"))
        .unwrap();
    assert!(!hit);
    assert!(cache.lookup(&h).is_some());
}

#[test]
fn list_reads_source_name_from_the_smq_manifest() {
    use smq_format::{GgmlType, Metadata, ModelConfig, SourceInfo, TensorInput};
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::at(dir.path());
    let h = key(30);
    let weights: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    cache
        .get_or_insert_with(&h, |p| {
            smq_format::write_smq(
                p,
                SourceInfo {
                    file_name: "tiny-model.gguf".into(),
                    file_size: 1234,
                    blake3: h,
                    gguf_version: 3,
                    alignment: 32,
                    data_offset: 512,
                    zero_padding: true,
                },
                ModelConfig::default(),
                None,
                &Metadata { entries: vec![] },
                &[TensorInput {
                    name: "w".into(),
                    ggml_type: GgmlType::F32,
                    shape: vec![4],
                    source_offset: 0,
                    bytes: &weights,
                }],
                &|_, _| {},
            )
            .map(|_| ())
        })
        .unwrap();
    let listed = cache.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].source_name.as_deref(), Some("tiny-model.gguf"));
}
