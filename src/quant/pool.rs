//! `ThreadPool`: the persistent workers the CPU matmul runs on.
//!
//! A decode step issues ~170 small matmuls; waking sleeping threads for each (what a fork/join
//! pool does when called from outside it) costs tens of microseconds per call. Here the caller
//! takes part in every job and the workers spin on an epoch counter for a while after each job
//! before they sleep, so back-to-back matmuls find them awake. Work is handed out as task
//! indices from one atomic counter: a core that is preempted on a shared machine just takes
//! fewer tasks, and a worker that wakes after the tasks are gone never touches the job.

use std::cell::UnsafeCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps: longer than the gaps between the matmuls of
/// one forward pass (norms, RoPE, attention of a decode step), shorter than a user's pause.
const SPIN: Duration = Duration::from_micros(300);

type Job = *const (dyn Fn(usize) + Sync);

struct Shared {
    /// Bumped once per job; workers compare it with the last epoch they saw.
    epoch: AtomicUsize,
    job: UnsafeCell<Option<Job>>,
    n_tasks: AtomicUsize,
    next_task: AtomicUsize,
    done_tasks: AtomicUsize,
    /// Workers inside the current job; the caller returns only once this is 0 and `closed`.
    entered: AtomicUsize,
    closed: AtomicBool,
    panicked: AtomicBool,
    shutdown: AtomicBool,
    sleepers: AtomicUsize,
    sleep_lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by the dispatching thread while no worker can read it (before
// the epoch bump, or after `closed` with `entered == 0`), and the pointee is `Sync`.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// One job at a time; a second caller (another thread, or a job that calls back into the
    /// pool) runs its tasks on its own thread instead of waiting.
    dispatch: Mutex<()>,
}

impl ThreadPool {
    /// A pool of `n_threads` threads in all, the caller included (`n_threads - 1` workers).
    pub fn new(n_threads: usize) -> ThreadPool {
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            job: UnsafeCell::new(None),
            n_tasks: AtomicUsize::new(0),
            next_task: AtomicUsize::new(0),
            done_tasks: AtomicUsize::new(0),
            entered: AtomicUsize::new(0),
            closed: AtomicBool::new(true),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            sleep_lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let workers = (1..n_threads.max(1))
            .map(|i| {
                let s = shared.clone();
                std::thread::Builder::new()
                    .name(format!("ferrite-matmul-{i}"))
                    .spawn(move || worker(&s))
                    .expect("spawning a matmul worker thread")
            })
            .collect();
        ThreadPool { shared, workers, dispatch: Mutex::new(()) }
    }

    pub fn n_threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Calls `task(i)` once for every `i` in `0..n_tasks`, spread over the pool's threads and the
    /// calling one; returns when all have run. A panic in a task is re-raised here.
    pub fn run(&self, n_tasks: usize, task: &(dyn Fn(usize) + Sync)) {
        if n_tasks == 0 {
            return;
        }
        let guard = match self.dispatch.try_lock() {
            Ok(g) if !self.workers.is_empty() && n_tasks > 1 => g,
            _ => {
                (0..n_tasks).for_each(task);
                return;
            }
        };
        let s = &*self.shared;
        // SAFETY: `closed` is set and `entered` is 0 (the previous job's end), so no worker reads
        // `job`. The lifetime is erased: this function does not return before every worker has
        // left the job (the wait for `entered == 0` below).
        unsafe {
            let job: Job = std::mem::transmute::<&(dyn Fn(usize) + Sync), &'static (dyn Fn(usize) + Sync)>(task);
            *s.job.get() = Some(job);
        }
        s.n_tasks.store(n_tasks, Relaxed);
        s.next_task.store(0, Relaxed);
        s.done_tasks.store(0, Relaxed);
        s.closed.store(false, SeqCst);
        s.epoch.fetch_add(1, SeqCst);
        if s.sleepers.load(SeqCst) > 0 {
            let _l = s.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        take_tasks(s, task);
        let t0 = Instant::now();
        while s.done_tasks.load(Acquire) < n_tasks {
            backoff(t0);
        }
        s.closed.store(true, SeqCst);
        while s.entered.load(SeqCst) > 0 {
            backoff(t0);
        }
        // SAFETY: closed and nobody inside: no worker reads `job` until the next epoch.
        unsafe { *s.job.get() = None };
        drop(guard);
        if s.panicked.swap(false, SeqCst) {
            panic!("a matmul task panicked on a worker thread");
        }
    }
}

fn backoff(since: Instant) {
    if since.elapsed() < Duration::from_micros(50) {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

fn take_tasks(s: &Shared, task: &(dyn Fn(usize) + Sync)) {
    let n = s.n_tasks.load(Relaxed);
    loop {
        let i = s.next_task.fetch_add(1, Relaxed);
        if i >= n {
            return;
        }
        if catch_unwind(AssertUnwindSafe(|| task(i))).is_err() {
            s.panicked.store(true, SeqCst);
        }
        s.done_tasks.fetch_add(1, Release);
    }
}

fn worker(s: &Shared) {
    let mut seen = 0usize;
    loop {
        let t0 = Instant::now();
        let mut spins = 0u32;
        loop {
            if s.shutdown.load(Acquire) {
                return;
            }
            let e = s.epoch.load(Acquire);
            if e != seen {
                seen = e;
                break;
            }
            spins += 1;
            if !spins.is_multiple_of(64) || t0.elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            let mut g = s.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
            s.sleepers.fetch_add(1, SeqCst);
            while s.epoch.load(SeqCst) == seen && !s.shutdown.load(SeqCst) {
                g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
            }
            s.sleepers.fetch_sub(1, SeqCst);
        }
        s.entered.fetch_add(1, SeqCst);
        if !s.closed.load(SeqCst) {
            // SAFETY: not closed after `entered` was raised: the dispatcher keeps `job` (and
            // what it points to) alive until `entered` drops back to 0.
            if let Some(job) = unsafe { *s.job.get() } {
                take_tasks(s, unsafe { &*job });
            }
        }
        s.entered.fetch_sub(1, SeqCst);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, SeqCst);
        {
            let _l = self.shared.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// The default thread count: `RAYON_NUM_THREADS` when set (it also sizes the pool the rest of
/// the CPU backend runs on), else the physical cores this process may use.
pub fn default_threads() -> usize {
    if let Some(n) = std::env::var("RAYON_NUM_THREADS").ok().and_then(|v| v.trim().parse::<usize>().ok()) {
        if n > 0 {
            return n;
        }
    }
    physical_cores()
}

/// Cores, not hardware threads: two threads of one core share its vector units, so a second
/// matmul thread per core only adds contention. Linux sysfs topology; elsewhere the logical
/// count.
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut cores = std::collections::HashSet::new();
    if let Ok(dir) = std::fs::read_dir("/sys/devices/system/cpu") {
        for e in dir.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if !name.starts_with("cpu") || !name[3..].chars().all(|c| c.is_ascii_digit()) || name.len() == 3 {
                continue;
            }
            let topo = e.path().join("topology");
            let read = |f: &str| std::fs::read_to_string(topo.join(f)).ok().map(|s| s.trim().to_string());
            if let (Some(pkg), Some(core)) = (read("physical_package_id"), read("core_id")) {
                cores.insert((pkg, core));
            }
        }
    }
    if cores.is_empty() {
        logical
    } else {
        cores.len().min(logical).max(1)
    }
}

/// The pool `quant::matmul` runs on when no pool is given: `default_threads()` threads, made
/// on first use.
pub fn global_pool() -> &'static ThreadPool {
    static POOL: OnceLock<ThreadPool> = OnceLock::new();
    POOL.get_or_init(|| ThreadPool::new(default_threads()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_exactly_once_for_any_pool_size() {
        for threads in [1, 2, 3, 5] {
            let pool = ThreadPool::new(threads);
            for n_tasks in [0, 1, 2, 7, 100, 1000] {
                let hits: Vec<AtomicUsize> = (0..n_tasks).map(|_| AtomicUsize::new(0)).collect();
                pool.run(n_tasks, &|i| {
                    hits[i].fetch_add(1, Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Relaxed) == 1), "{threads} threads, {n_tasks} tasks");
            }
        }
    }

    #[test]
    fn workers_that_slept_wake_for_the_next_job_and_nested_runs_complete() {
        let pool = ThreadPool::new(3);
        std::thread::sleep(SPIN * 4);
        let sum = AtomicUsize::new(0);
        pool.run(64, &|i| {
            // A task that calls back into the pool runs its inner tasks on its own thread.
            pool.run(2, &|j| {
                sum.fetch_add(i * 2 + j, Relaxed);
            });
        });
        assert_eq!(sum.load(Relaxed), (0..128usize).sum::<usize>());
    }

    #[test]
    fn a_panicking_task_is_reraised_and_the_pool_still_works() {
        let pool = ThreadPool::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| pool.run(50, &|i| assert!(i != 33, "task 33"))));
        assert!(r.is_err());
        let n = AtomicUsize::new(0);
        pool.run(10, &|_| {
            n.fetch_add(1, Relaxed);
        });
        assert_eq!(n.load(Relaxed), 10);
    }
}
