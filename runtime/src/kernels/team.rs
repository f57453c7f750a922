//! A small team of spinning worker threads for decode-sized parallel loops.
//!
//! A decode step runs a couple of hundred GEMVs of tens of microseconds each, with serial
//! work (norms, RoPE, attention) between them. rayon parks an idle worker within
//! microseconds, and waking it again (a futex call and a reschedule, slower still in a VM)
//! cost about as much as the GEMV it was woken for: a third of the samples in a decode
//! profile were `sched_yield`/futex. Here the caller works on the loop too, and the workers
//! spin on an epoch counter for [`SPIN`] after each loop before they park, so back-to-back
//! loops find them awake. This is llama.cpp's threadpool idea in a hundred lines.
//!
//! One loop runs at a time: a caller that finds the team busy (another thread's loop, or a
//! loop nested in a worker) runs its loop alone, which is always correct. The caller never
//! waits for a worker that has not started: once every item is claimed it closes the loop,
//! and a worker that wakes late skips it (on a loaded machine a spinning barrier would
//! otherwise wait for a descheduled thread).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long a worker keeps spinning for the next loop before it parks.
pub const SPIN: Duration = Duration::from_micros(300);

/// The loop body, lifetime-erased while a loop runs (the caller waits for every worker to
/// finish before its borrow ends).
type Body = *const (dyn Fn(usize) + Sync);

struct Shared {
    /// Bumped (under `parked`'s lock when anyone is parked) for every new loop.
    epoch: AtomicUsize,
    body: Mutex<Option<SendBody>>,
    items: AtomicUsize,
    next: AtomicUsize,
    /// Workers inside the current loop (counted before they read the body).
    inside: AtomicUsize,
    /// The last epoch whose loop the caller has closed: a worker that arrives late (it was
    /// descheduled, perhaps through several loops) sees it and skips the loop instead of
    /// touching a stale body.
    closed: AtomicUsize,
    panicked: AtomicBool,
    parked: Mutex<usize>,
    wake: Condvar,
}

#[derive(Clone, Copy)]
struct SendBody(Body);
// SAFETY: the body is `Sync` and outlives every use (see `Team::run`).
unsafe impl Send for SendBody {}

/// The worker threads and the lock that makes them one loop at a time.
pub struct Team {
    shared: Arc<Shared>,
    workers: usize,
    busy: Mutex<()>,
}

/// The process-wide team: one worker fewer than rayon's thread count (the caller is the
/// other), so `--threads N` bounds both.
pub fn global() -> &'static Team {
    static TEAM: OnceLock<Team> = OnceLock::new();
    TEAM.get_or_init(|| Team::new(rayon::current_num_threads().saturating_sub(1)))
}

impl Team {
    /// A team of `workers` threads besides the caller.
    pub fn new(workers: usize) -> Self {
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            body: Mutex::new(None),
            items: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            inside: AtomicUsize::new(0),
            closed: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            parked: Mutex::new(0),
            wake: Condvar::new(),
        });
        for i in 0..workers {
            let s = shared.clone();
            std::thread::Builder::new()
                .name(format!("lmq-team-{i}"))
                .spawn(move || worker(&s))
                .expect("spawn a team worker");
        }
        Self {
            shared,
            workers,
            busy: Mutex::new(()),
        }
    }

    /// Threads a loop runs on, the caller included.
    pub fn threads(&self) -> usize {
        self.workers + 1
    }

    /// Calls `body(i)` for every `i` in `0..items`, spread over the team; returns when all
    /// calls have returned. A panic in a call is re-raised here.
    pub fn run(&self, items: usize, body: &(dyn Fn(usize) + Sync)) {
        let guard = match self.busy.try_lock() {
            Ok(g) if self.workers > 0 && items > 1 => g,
            _ => {
                (0..items).for_each(body);
                return;
            }
        };
        let s = &*self.shared;
        // SAFETY (lifetime erasure): the body is cleared and every worker has stopped using
        // it before this function returns.
        let erased: Body = unsafe { std::mem::transmute(body) };
        *s.body.lock().unwrap() = Some(SendBody(erased));
        s.items.store(items, Ordering::Relaxed);
        s.next.store(0, Ordering::Relaxed);
        let epoch;
        {
            let parked = s.parked.lock().unwrap();
            epoch = s.epoch.fetch_add(1, Ordering::SeqCst) + 1;
            if *parked > 0 {
                s.wake.notify_all();
            }
        }
        let caller_panic =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| claim_all(s, body)));
        // Every item is claimed; close the loop and wait only for workers still inside it.
        // (SeqCst pairs with the worker's increment-then-check: one of the two sees the other.)
        s.closed.store(epoch, Ordering::SeqCst);
        wait_until(|| s.inside.load(Ordering::SeqCst) == 0);
        *s.body.lock().unwrap() = None;
        drop(guard);
        if let Err(p) = caller_panic {
            std::panic::resume_unwind(p);
        }
        if s.panicked.swap(false, Ordering::Relaxed) {
            panic!("a team worker panicked in a parallel loop");
        }
    }
}

fn claim_all(s: &Shared, body: &(dyn Fn(usize) + Sync)) {
    let n = s.items.load(Ordering::Relaxed);
    loop {
        let i = s.next.fetch_add(1, Ordering::Relaxed);
        if i >= n {
            return;
        }
        body(i);
    }
}

fn worker(s: &Shared) {
    let mut seen = 0usize;
    loop {
        // Wait for a new epoch: spin, then park.
        let start = Instant::now();
        let mut spins = 0u32;
        let epoch = loop {
            let e = s.epoch.load(Ordering::Acquire);
            if e != seen {
                break e;
            }
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(256) && start.elapsed() > SPIN {
                let mut parked = s.parked.lock().unwrap();
                *parked += 1;
                while s.epoch.load(Ordering::Acquire) == seen {
                    parked = s.wake.wait(parked).unwrap();
                }
                *parked -= 1;
            } else {
                std::hint::spin_loop();
            }
        };
        seen = epoch;
        s.inside.fetch_add(1, Ordering::SeqCst);
        // Epochs and closures only grow: a loop is still open iff it is not closed yet (a
        // worker that slept through whole loops sees a later closure and skips).
        // (An open loop always has its body; were it missing, skipping is still correct,
        // as the caller runs every unclaimed item itself.)
        let body = if s.closed.load(Ordering::SeqCst) < epoch {
            *s.body.lock().unwrap_or_else(|p| p.into_inner())
        } else {
            None
        };
        if let Some(body) = body {
            // SAFETY: the loop is not closed, so `run` waits for `inside` to drop back to
            // zero before its borrow of the body ends.
            let f = unsafe { &*body.0 };
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| claim_all(s, f))).is_err() {
                s.panicked.store(true, Ordering::Relaxed);
            }
        }
        s.inside.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Spins on `done`, yielding the core after a while (another process, or a descheduled
/// worker, may need it to make progress).
fn wait_until(done: impl Fn() -> bool) {
    let mut spins = 0u32;
    while !done() {
        spins = spins.saturating_add(1);
        if spins < 1 << 12 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}

/// Splits `out` (whole rows of `row_len` elements) into one contiguous band of rows per team
/// thread and calls `f(first_row, band)` for each. A decode GEMV is a short stream, and every
/// extra band would restart the hardware prefetcher.
pub fn for_each_row_band_mut<T: Send>(
    out: &mut [T],
    row_len: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    assert!(row_len > 0, "row length");
    let band = (out.len() / row_len).div_ceil(global().threads()).max(1);
    for_each_chunk_mut(out, band * row_len, |i, part| f(i * band, part));
}

/// [`for_each_row_band_mut`] with every band but the last a multiple of `align` rows: bands
/// that begin on a panel block.
pub fn for_each_row_band_mut_aligned<T: Send>(
    out: &mut [T],
    row_len: usize,
    align: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    assert!(row_len > 0 && align > 0, "row length and alignment");
    let band = (out.len() / row_len)
        .div_ceil(global().threads())
        .div_ceil(align)
        .max(1)
        * align;
    for_each_chunk_mut(out, band * row_len, |i, part| f(i * band, part));
}

/// Splits `out` into chunks of `chunk` elements and calls `f(index, chunk)` for each, on the
/// global team: the decode GEMVs' "bands of output rows".
pub fn for_each_chunk_mut<T: Send>(
    out: &mut [T],
    chunk: usize,
    f: impl Fn(usize, &mut [T]) + Sync,
) {
    assert!(chunk > 0, "chunk size");
    let len = out.len();
    let n = len.div_ceil(chunk);
    let base = SendPtr(out.as_mut_ptr());
    global().run(n, &|i| {
        let start = i * chunk;
        let end = (start + chunk).min(len);
        let p = base;
        // SAFETY: each index is claimed once, so the chunks handed out are disjoint parts
        // of `out`, which outlives the loop.
        let part = unsafe { std::slice::from_raw_parts_mut(p.0.add(start), end - start) };
        f(i, part);
    });
}

/// A pointer into an output buffer shared by a parallel loop whose iterations write
/// disjoint parts of it (the team's chunks, the GEMM's column bands, the Gram blocks).
pub(crate) struct SendPtr<T>(pub(crate) *mut T);
impl<T> Clone for SendPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for SendPtr<T> {}
// SAFETY: used only to hand out disjoint chunks (see `for_each_chunk_mut`).
unsafe impl<T: Send> Send for SendPtr<T> {}
unsafe impl<T: Send> Sync for SendPtr<T> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_runs_once_across_many_loops() {
        let team = Team::new(2);
        for items in [0usize, 1, 2, 3, 17, 1000] {
            let hits: Vec<AtomicUsize> = (0..items).map(|_| AtomicUsize::new(0)).collect();
            team.run(items, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(
                hits.iter().all(|h| h.load(Ordering::Relaxed) == 1),
                "{items} items"
            );
        }
    }

    #[test]
    fn parked_workers_wake_for_the_next_loop() {
        let team = Team::new(1);
        let sum = AtomicUsize::new(0);
        team.run(4, &|i| {
            sum.fetch_add(i, Ordering::Relaxed);
        });
        std::thread::sleep(SPIN * 4);
        team.run(4, &|i| {
            sum.fetch_add(i, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 12);
    }

    #[test]
    fn a_worker_that_sleeps_through_loops_skips_them() {
        // Many tiny loops back to back: workers regularly arrive after a loop has closed,
        // sometimes several loops late.
        let team = Team::new(3);
        for round in 0..20_000usize {
            let hits = AtomicUsize::new(0);
            team.run(2 + round % 3, &|_| {
                hits.fetch_add(1, Ordering::Relaxed);
            });
            assert_eq!(hits.load(Ordering::Relaxed), 2 + round % 3);
        }
    }

    #[test]
    fn chunks_cover_the_slice() {
        let mut v = vec![0usize; 1003];
        for_each_chunk_mut(&mut v, 10, |i, part| {
            for (j, x) in part.iter_mut().enumerate() {
                *x = i * 10 + j;
            }
        });
        assert!(v.iter().enumerate().all(|(i, &x)| i == x));
    }

    #[test]
    fn a_panic_in_the_body_reaches_the_caller_and_the_team_survives() {
        let team = Team::new(1);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            team.run(8, &|i| assert!(i != 5, "item 5"));
        }));
        assert!(r.is_err());
        let count = AtomicUsize::new(0);
        team.run(8, &|_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 8);
    }
}
