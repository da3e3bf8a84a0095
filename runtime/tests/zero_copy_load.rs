//! Loading a model copies no weights: the heap allocated while opening an SMQ file and
//! building the model and tokenizer stays far below the file size (the weights are read
//! straight from the mmap). Measured with a counting global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use smq_converter::test_models;
use smq_format::SmqFile;
use smq_runtime::model::Model;
use smq_runtime::tokenizer::Tokenizer;

/// Counts bytes currently allocated and the peak since the last reset.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Imports the model to a temp SMQ, then measures the heap used to load it.
fn check(file: &str) {
    let Some(gguf) = test_models::find(file) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let smq = dir.path().join("m.smq");
    smq_converter::import::import(&gguf, &smq, &|_, _| {}).unwrap();
    let file_size = std::fs::metadata(&smq).unwrap().len() as usize;

    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let mapped = SmqFile::open(&smq).unwrap().into_mapped();
    println!("after open: {}", LIVE.load(Ordering::Relaxed) - base);
    let model = Model::load(&mapped).unwrap();
    println!("after model: {}", LIVE.load(Ordering::Relaxed) - base);
    let tokenizer = Tokenizer::from_spec(mapped.manifest.tokenizer.as_ref().unwrap()).unwrap();
    let live = LIVE.load(Ordering::Relaxed) - base;
    let peak = PEAK.load(Ordering::Relaxed) - base;
    println!(
        "{file}: file {file_size} B, heap live after load {live} B ({:.2}%), peak {peak} B ({:.2}%)",
        100.0 * live as f64 / file_size as f64,
        100.0 * peak as f64 / file_size as f64
    );
    // Well under 5% of the file: only the manifest, tokenizer tables and small metadata.
    assert!(live * 100 < file_size * 5, "live heap {live} B after load");
    assert!(peak * 100 < file_size * 5, "peak heap {peak} B during load");
    drop((model, tokenizer));
}

#[test]
fn loading_smollm2_copies_no_weights() {
    check(test_models::SMOLLM2);
}

#[test]
fn loading_gemma3_copies_no_weights() {
    check(test_models::GEMMA3);
}
