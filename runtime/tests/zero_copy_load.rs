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

/// The counter is process-wide: tests measuring it must not overlap.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Imports the model to a temp SMQ, then measures the heap used to load it the way the
/// command line does (the tokenizer takes over the manifest's token table).
fn check(file: &str) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(gguf) = test_models::find(file) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let smq = dir.path().join("m.smq");
    smq_converter::import::import(&gguf, &smq, &|_, _| {}).unwrap();
    let file_size = std::fs::metadata(&smq).unwrap().len() as usize;

    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let mut mapped = SmqFile::open(&smq).unwrap().into_mapped();
    let tokenizer = Tokenizer::from_owned(mapped.manifest.tokenizer.take().unwrap()).unwrap();
    let model = Model::load(&mapped).unwrap();
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
