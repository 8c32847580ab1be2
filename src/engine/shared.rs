//! The engine shared between threads: any thread submits and cancels at any time, and whoever is
//! waiting for output drives the engine.
//!
//! Submissions and cancellations go to a mailbox (never waiting for a step to end); the thread that
//! holds the engine applies them before and after each step, so a cancelled request's blocks are
//! freed at once, or as soon as the step in progress ends. Each step's outputs are sorted into
//! per-request outboxes. A caller waiting on its request ([`SharedEngine::next`]) runs a step
//! itself when no other thread is, and otherwise sleeps until a step ends: a program that
//! generates from one thread needs no background thread, and a server runs one pump thread that
//! calls [`SharedEngine::step`] whenever [`SharedEngine::wait_for_work`] says there is work.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, TryLockError};
use std::time::{Duration, Instant};

use super::{check_request, Engine, EngineError, EngineStats, Generation, Limits, Request, RequestId, RequestOutput};

/// A request's outputs not yet taken, and everything it produced so far.
struct Outbox {
    pending: VecDeque<RequestOutput>,
    finished: bool,
    generation: Generation,
}

#[derive(Default)]
struct Mailbox {
    submits: Vec<(RequestId, Request)>,
    cancels: Vec<RequestId>,
    outboxes: HashMap<RequestId, Outbox>,
    /// Requests submitted and not finished.
    active: usize,
    stats: EngineStats,
}

/// What [`SharedEngine::next`] found.
#[derive(Debug)]
pub enum Next {
    Output(RequestOutput),
    /// Nothing arrived before the timeout.
    Timeout,
    /// The request finished and every output was taken (or it is unknown).
    Done,
}

pub struct SharedEngine {
    core: Mutex<Engine>,
    mail: Mutex<Mailbox>,
    /// Signalled (with `mail`) when a step routed outputs, or work arrived.
    changed: Condvar,
    limits: Limits,
    next_id: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock leaves the data as the panic found it; carry on with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl SharedEngine {
    pub fn new(engine: Engine) -> SharedEngine {
        let limits = Limits::of(&engine);
        let stats = engine.stats();
        SharedEngine {
            core: Mutex::new(engine),
            mail: Mutex::new(Mailbox { stats, ..Default::default() }),
            changed: Condvar::new(),
            limits,
            next_id: AtomicU64::new(1),
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Checks and queues a request; returns its id. Never waits for a step.
    pub fn submit(&self, req: Request) -> Result<RequestId, EngineError> {
        check_request(&req, &self.limits)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let generation = Generation::new(req.prompt.clone(), req.sampling.seed, req.logprobs);
        let mut mail = lock(&self.mail);
        mail.outboxes.insert(id, Outbox { pending: VecDeque::new(), finished: false, generation });
        mail.submits.push((id, req));
        mail.active += 1;
        drop(mail);
        self.changed.notify_all();
        // Admit it now if nobody is stepping, so stats and queue lengths are current.
        if let Ok(mut core) = self.core.try_lock() {
            self.sync_mail(&mut core);
        }
        Ok(id)
    }

    /// Cancels a request: its blocks are freed now, or when the step in progress ends.
    pub fn cancel(&self, id: RequestId) {
        lock(&self.mail).cancels.push(id);
        match self.core.try_lock() {
            Ok(mut core) => {
                self.sync_mail(&mut core);
            }
            Err(TryLockError::Poisoned(p)) => {
                self.sync_mail(&mut p.into_inner());
            }
            Err(TryLockError::WouldBlock) => {}
        }
        self.changed.notify_all();
    }

    /// Forgets a request whose owner is gone, cancelling it if it still runs.
    pub fn forget(&self, id: RequestId) {
        let running = {
            let mut mail = lock(&self.mail);
            mail.outboxes.remove(&id).is_some_and(|o| !o.finished)
        };
        if running {
            self.cancel(id);
        }
    }

    /// Runs one step (waiting for a step in progress to end first) and returns the ids of the
    /// requests that got output. Idle engines return at once with nothing.
    pub fn step(&self) -> Vec<RequestId> {
        let mut core = lock(&self.core);
        self.step_locked(&mut core)
    }

    fn step_locked(&self, core: &mut Engine) -> Vec<RequestId> {
        let mut ids = self.sync_mail(core);
        if !core.has_work() {
            return ids;
        }
        let outputs = core.step();
        ids.extend(self.route(outputs, core.stats()));
        // What arrived during the step, cancellations above all, takes effect before the lock goes.
        ids.extend(self.sync_mail(core));
        ids.dedup();
        ids
    }

    /// Applies queued submissions and cancellations to the engine and routes the outputs that
    /// produces (cancellations, requests with nothing to generate).
    fn sync_mail(&self, core: &mut Engine) -> Vec<RequestId> {
        let (submits, cancels) = {
            let mut mail = lock(&self.mail);
            (std::mem::take(&mut mail.submits), std::mem::take(&mut mail.cancels))
        };
        let mut outputs = Vec::new();
        for (id, req) in submits {
            // Checked at submit against the same limits; a failure here would be a bug, reported
            // on the request rather than lost.
            if let Err(e) = core.submit(id, req) {
                let mut out = RequestOutput::new(id);
                out.finish = Some(super::FinishReason::Error);
                out.error = Some(e.to_string());
                outputs.push(out);
            }
        }
        for id in cancels {
            core.cancel(id);
        }
        outputs.extend(core.take_pending());
        self.route(outputs, core.stats())
    }

    /// Sorts outputs into their outboxes and wakes the waiters.
    fn route(&self, outputs: Vec<RequestOutput>, stats: EngineStats) -> Vec<RequestId> {
        let mut ids = Vec::with_capacity(outputs.len());
        let mut mail = lock(&self.mail);
        mail.stats = stats;
        for out in outputs {
            let id = out.id;
            let finished = out.finish.is_some();
            if finished {
                mail.active = mail.active.saturating_sub(1);
            }
            if let Some(o) = mail.outboxes.get_mut(&id) {
                o.generation.absorb(&out);
                o.finished |= finished;
                o.pending.push_back(out);
                if ids.last() != Some(&id) {
                    ids.push(id);
                }
            }
        }
        drop(mail);
        if !ids.is_empty() {
            self.changed.notify_all();
        }
        ids
    }

    /// The next output of request `id`, driving the engine while nobody else does. Waits at most
    /// `timeout` (`None`: until there is one).
    pub fn next(&self, id: RequestId, timeout: Option<Duration>) -> Next {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            {
                let mut mail = lock(&self.mail);
                match mail.outboxes.get_mut(&id) {
                    None => return Next::Done,
                    Some(o) => {
                        if let Some(out) = o.pending.pop_front() {
                            return Next::Output(out);
                        }
                        if o.finished {
                            return Next::Done;
                        }
                    }
                }
            }
            match self.core.try_lock() {
                Ok(mut core) => {
                    self.step_locked(&mut core);
                    continue;
                }
                Err(TryLockError::Poisoned(p)) => {
                    self.step_locked(&mut p.into_inner());
                    continue;
                }
                Err(TryLockError::WouldBlock) => {}
            }
            // Someone else is stepping: sleep until a step ends (checking again under the lock, so
            // a step that ended in between is not missed).
            let mail = lock(&self.mail);
            let ready = mail.outboxes.get(&id).is_none_or(|o| !o.pending.is_empty() || o.finished);
            if ready {
                continue;
            }
            let wait = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Next::Timeout;
                    }
                    (d - now).min(Duration::from_millis(100))
                }
                None => Duration::from_millis(100),
            };
            // Woken by the stepping thread; the short cap also retries driving when it stops.
            let _unused = self.changed.wait_timeout(mail, wait).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Every output of request `id` not yet taken, and whether it has finished.
    pub fn poll(&self, id: RequestId) -> (Vec<RequestOutput>, bool) {
        let mut mail = lock(&self.mail);
        match mail.outboxes.get_mut(&id) {
            Some(o) => (o.pending.drain(..).collect(), o.finished),
            None => (Vec::new(), true),
        }
    }

    /// Everything request `id` produced so far.
    pub fn generation(&self, id: RequestId) -> Option<(Generation, bool)> {
        let mail = lock(&self.mail);
        mail.outboxes.get(&id).map(|o| (o.generation.clone(), o.finished))
    }

    /// Whether a request is queued or running.
    pub fn has_work(&self) -> bool {
        let mail = lock(&self.mail);
        mail.active > 0 || !mail.submits.is_empty() || !mail.cancels.is_empty()
    }

    /// Waits until there is work or `timeout` passes; returns whether there is work.
    pub fn wait_for_work(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut mail = lock(&self.mail);
        loop {
            if mail.active > 0 || !mail.submits.is_empty() || !mail.cancels.is_empty() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            mail = self.changed.wait_timeout(mail, deadline - now).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// The engine's counters as of the last step (never waits for one).
    pub fn stats(&self) -> EngineStats {
        lock(&self.mail).stats
    }

    /// Runs `f` with the engine to itself (waits for a step in progress).
    pub fn with_engine<R>(&self, f: impl FnOnce(&mut Engine) -> R) -> R {
        let mut core = lock(&self.core);
        self.sync_mail(&mut core);
        let r = f(&mut core);
        self.sync_mail(&mut core);
        r
    }
}
