//! A fixed team of worker threads for the forward pass's parallel regions.
//!
//! Decoding one token runs a few hundred short parallel regions (each matmul, each
//! attention), most of them a few microseconds long. A general-purpose pool that puts
//! idle threads to sleep pays a wake-up (a futex, tens of microseconds on a VM) per
//! region; here idle workers spin on an epoch counter for a while before they park, so
//! a region costs about one cache-line round trip. Work inside a region is claimed in
//! chunks from an atomic counter, which keeps both cores busy when one of them is
//! briefly taken away by the host.

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it parks. Longer than the gaps between a
/// token's regions (norms, sampling: microseconds), far shorter than a pause for input.
const SPIN: Duration = Duration::from_millis(2);

/// One region's work: called once on every thread with that thread's index.
type Job<'a> = &'a (dyn Fn(usize) + Sync);

struct Shared {
    /// Bumped once per region; a worker runs the job when it sees a new value.
    epoch: AtomicU64,
    /// The current region's `Job` (a pointer to a fat reference on the caller's stack,
    /// valid until `pending` drops to zero).
    job: AtomicPtr<Job<'static>>,
    /// Workers that have not finished the current region.
    pending: AtomicUsize,
    /// A worker's job panicked (re-raised on the calling thread).
    panicked: AtomicBool,
    /// Workers parked (or about to park) on `wake`.
    sleeping: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
    shutdown: AtomicBool,
}

/// A caller thread plus `threads - 1` workers.
pub struct Team {
    shared: Arc<Shared>,
    threads: usize,
    /// One region at a time; a second concurrent caller runs its region alone.
    busy: Mutex<()>,
}

thread_local! {
    /// Set while this thread runs a region's job, so a nested region runs inline.
    static IN_REGION: Cell<bool> = const { Cell::new(false) };
}

impl Team {
    /// A team of `threads` threads (the caller counts as one).
    pub fn new(threads: usize) -> Team {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            pending: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            sleeping: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
        });
        for index in 1..threads {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("smq-worker-{index}"))
                .spawn(move || worker(&shared, index))
                .expect("spawning a worker thread");
        }
        Team {
            shared,
            threads,
            busy: Mutex::new(()),
        }
    }

    /// The process-wide team, sized by the rayon pool the first caller runs in (the
    /// command's `--threads`).
    pub fn global() -> &'static Team {
        static TEAM: OnceLock<Team> = OnceLock::new();
        TEAM.get_or_init(|| Team::new(rayon::current_num_threads()))
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `job(index)` once on each thread of the team, the caller being index 0,
    /// and returns when all have finished. A region started from inside a region, or
    /// while another thread's region is running, runs every index on the caller.
    pub fn run(&self, job: &(dyn Fn(usize) + Sync)) {
        let nested = IN_REGION.with(Cell::get);
        let guard = if nested || self.threads == 1 {
            None
        } else {
            match self.busy.try_lock() {
                Ok(g) => Some(g),
                // A region that panicked poisoned the lock; the team itself is intact.
                Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
                Err(std::sync::TryLockError::WouldBlock) => None,
            }
        };
        let Some(_guard) = guard else {
            for i in 0..self.threads {
                job(i);
            }
            return;
        };
        let s = &*self.shared;
        // SAFETY: only the lifetime is erased. Workers dereference the pointer only
        // between the epoch bump below and their `pending` decrement, and this function
        // does not return before `pending` is zero, so `job` outlives every use.
        let job_static: Job<'static> = unsafe { std::mem::transmute::<Job<'_>, Job<'static>>(job) };
        let job_ref = &job_static;
        s.job.store(
            job_ref as *const Job<'static> as *mut Job<'static>,
            Ordering::Release,
        );
        s.pending.store(self.threads - 1, Ordering::Release);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        if s.sleeping.load(Ordering::SeqCst) > 0 {
            let _l = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        IN_REGION.with(|f| f.set(true));
        let mine = catch_unwind(AssertUnwindSafe(|| job(0)));
        IN_REGION.with(|f| f.set(false));
        let mut waiting = Backoff::default();
        while s.pending.load(Ordering::Acquire) != 0 {
            waiting.pause();
        }
        if let Err(e) = mine {
            std::panic::resume_unwind(e);
        }
        if s.panicked.swap(false, Ordering::AcqRel) {
            panic!("a worker thread panicked in a parallel region");
        }
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        let s = &*self.shared;
        s.shutdown.store(true, Ordering::SeqCst);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        let _l = s.lock.lock().unwrap_or_else(|e| e.into_inner());
        s.wake.notify_all();
    }
}

fn worker(s: &Shared, index: usize) {
    // The epoch the team started with, not the current one: a region may have been
    // published before this thread got to run.
    let mut seen = 0;
    loop {
        let spin_start = Instant::now();
        let mut waiting = Backoff::default();
        loop {
            let e = s.epoch.load(Ordering::Acquire);
            if e != seen {
                seen = e;
                break;
            }
            if waiting.spins.is_multiple_of(1024) && spin_start.elapsed() > SPIN {
                // Park until the epoch moves (re-checked under the lock, after
                // announcing ourselves, so a bump cannot slip between check and wait).
                let mut l = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                s.sleeping.fetch_add(1, Ordering::SeqCst);
                while s.epoch.load(Ordering::SeqCst) == seen {
                    l = s.wake.wait(l).unwrap_or_else(|e| e.into_inner());
                }
                s.sleeping.fetch_sub(1, Ordering::SeqCst);
                drop(l);
            } else {
                waiting.pause();
            }
        }
        if s.shutdown.load(Ordering::Acquire) {
            return;
        }
        // SAFETY: the caller published a valid job before bumping the epoch and keeps
        // it alive until `pending` reaches zero (see `Team::run`).
        let job = unsafe { *s.job.load(Ordering::Acquire) };
        IN_REGION.with(|f| f.set(true));
        if catch_unwind(AssertUnwindSafe(|| job(index))).is_err() {
            s.panicked.store(true, Ordering::Release);
        }
        IN_REGION.with(|f| f.set(false));
        s.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Busy-waiting that stays polite when the machine is oversubscribed: pure spinning
/// for a short while (the common case on an idle machine: the other thread is a few
/// microseconds away), then a `sched_yield` per check, so a thread we wait for that
/// was preempted can get the core back.
#[derive(Default)]
struct Backoff {
    spins: u32,
}

impl Backoff {
    /// Pure spins before yielding (on the order of 50 µs).
    const SPIN_ONLY: u32 = 1 << 14;

    fn pause(&mut self) {
        self.spins = self.spins.wrapping_add(1);
        if self.spins < Self::SPIN_ONLY {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

/// Hands out `0..n` in chunks of `chunk` to whichever thread asks first.
pub struct Chunks {
    next: AtomicUsize,
    n: usize,
    chunk: usize,
}

impl Chunks {
    pub fn new(n: usize, chunk: usize) -> Chunks {
        Chunks {
            next: AtomicUsize::new(0),
            n,
            chunk: chunk.max(1),
        }
    }

    /// The next unclaimed range, or `None` when all are taken.
    pub fn claim(&self) -> Option<std::ops::Range<usize>> {
        let start = self.next.fetch_add(self.chunk, Ordering::Relaxed);
        (start < self.n).then(|| start..(start + self.chunk).min(self.n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_index_runs_once_per_region() {
        let team = Team::new(3);
        for _ in 0..1000 {
            let hits: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
            team.run(&|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn chunks_cover_the_range_once_across_threads() {
        let team = Team::new(2);
        let n = 10_007;
        let seen: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
        let chunks = Chunks::new(n, 64);
        team.run(&|_| {
            while let Some(r) = chunks.claim() {
                for i in r {
                    seen[i].fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        assert!(seen.iter().all(|s| s.load(Ordering::Relaxed) == 1));
    }

    #[test]
    fn workers_wake_after_parking_and_nested_regions_run_inline() {
        let team = Team::new(2);
        std::thread::sleep(SPIN * 3);
        let count = AtomicUsize::new(0);
        team.run(&|_| {
            team.run(&|_| {
                count.fetch_add(1, Ordering::Relaxed);
            });
        });
        // Two outer indices, each running the two inner indices inline.
        assert_eq!(count.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn a_panicking_job_panics_the_caller_and_the_team_survives() {
        let team = Team::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| {
            team.run(&|i| {
                if i == 1 {
                    panic!("job failure");
                }
            })
        }));
        assert!(r.is_err());
        let count = AtomicUsize::new(0);
        team.run(&|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 2);
    }
}
