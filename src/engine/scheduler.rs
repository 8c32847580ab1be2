//! Which sequences run in a step, and with how many tokens each.
//!
//! A step holds at most `max_step_tokens` tokens. Running sequences come first, in the order they
//! were admitted: one token each when decoding, or the next chunk of a prompt still being
//! computed. Then waiting sequences are admitted, oldest first, while the batch has room for
//! another sequence and the step for more tokens; an admitted sequence first takes whatever
//! leading full blocks of its tokens the prefix cache holds, then computes the rest in chunks.
//!
//! A sequence gets KV blocks only as its tokens are computed. When a running sequence needs a
//! block and none is free, the most recently admitted running sequence is preempted: its blocks
//! are released (their content stays cached) and it goes back to the front of the queue, to be
//! recomputed later from its prompt and the tokens it had generated; nothing it produced is lost.
//! New sequences are not admitted in a step that preempted. A sequence that cannot get its blocks
//! even with nothing else running fails alone (the pool is smaller than it, or blocks are held
//! outside the engine), so the engine never waits for room that cannot come.

use std::collections::{HashMap, VecDeque};

use super::kv_blocks::{BlockPool, ROOT};
use super::request::{RequestId, Sequence, Status};

/// One sequence's part of a step: the next `n_new` of its uncomputed tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Chunk {
    pub id: RequestId,
    pub n_new: usize,
}

#[derive(Debug, Default)]
pub(crate) struct StepPlan {
    pub chunks: Vec<Chunk>,
    /// Sequences that can never get their blocks, with the blocks they needed.
    pub unplaceable: Vec<(RequestId, usize)>,
    pub preempted: usize,
}

pub(crate) struct Scheduler {
    pub waiting: VecDeque<RequestId>,
    /// In admission order.
    pub running: Vec<RequestId>,
    pub max_batch: usize,
    pub max_step_tokens: usize,
}

impl Scheduler {
    pub fn new(max_batch: usize, max_step_tokens: usize) -> Scheduler {
        Scheduler { waiting: VecDeque::new(), running: Vec::new(), max_batch, max_step_tokens: max_step_tokens.max(max_batch) }
    }

    pub fn remove(&mut self, id: RequestId) {
        self.waiting.retain(|&w| w != id);
        self.running.retain(|&r| r != id);
    }

    pub fn schedule(&mut self, seqs: &mut HashMap<RequestId, Sequence>, pool: &mut BlockPool) -> StepPlan {
        let mut plan = StepPlan::default();
        let mut budget = self.max_step_tokens;
        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let id = self.running[i];
            let Some(s) = seqs.get(&id) else {
                self.running.remove(i);
                continue;
            };
            let n_new = s.uncomputed().min(budget);
            if n_new == 0 {
                i += 1;
                continue;
            }
            let need = pool.blocks_for(s.n_computed + n_new).saturating_sub(s.blocks.len());
            let mut fits = pool.available() >= need;
            if !fits && s.n_unseen > 0 {
                // Its last draw, still on the device, may end it: nothing is preempted or failed
                // for it until that draw is seen (the next step).
                i += 1;
                continue;
            }
            // Preempt from the back until the blocks fit, this sequence itself last.
            while !fits && self.running.len() > i + 1 {
                let victim = self.running.pop().expect("running has more than i + 1 entries");
                preempt(seqs, pool, victim);
                self.waiting.push_front(victim);
                plan.preempted += 1;
                fits = pool.available() >= need;
            }
            if !fits {
                self.running.remove(i);
                preempt(seqs, pool, id);
                plan.preempted += 1;
                if self.running.is_empty() && plan.chunks.is_empty() {
                    // Alone and still no room: it can never run.
                    plan.unplaceable.push((id, need));
                } else {
                    self.waiting.push_front(id);
                }
                continue;
            }
            let s = seqs.get_mut(&id).expect("checked above");
            s.blocks.extend(pool.allocate(need).expect("checked available"));
            plan.chunks.push(Chunk { id, n_new });
            budget -= n_new;
            i += 1;
        }

        while plan.preempted == 0 && budget > 0 && self.running.len() < self.max_batch {
            let Some(&id) = self.waiting.front() else { break };
            let Some(s) = seqs.get_mut(&id) else {
                self.waiting.pop_front();
                continue;
            };
            if s.n_unseen > 0 {
                // Preempted while its last draw was in flight: it is recomputed once that token
                // is known (the next step), and the queue keeps its order.
                break;
            }
            let reused = if s.n_computed == 0 { reuse_cached_prefix(s, pool) } else { 0 };
            let n_new = s.uncomputed().min(budget);
            let need = pool.blocks_for(s.n_computed + n_new).saturating_sub(s.blocks.len());
            let Some(blocks) = pool.allocate(need) else {
                // Give the revived cache blocks back: the sequence keeps waiting.
                pool.release(&s.blocks);
                s.blocks.clear();
                s.block_keys.clear();
                s.n_computed = 0;
                if self.running.is_empty() && plan.chunks.is_empty() {
                    self.waiting.pop_front();
                    plan.unplaceable.push((id, pool.blocks_for(s.tokens.len())));
                    continue;
                }
                break;
            };
            self.waiting.pop_front();
            s.blocks.extend(blocks);
            if s.admitted.is_none() {
                s.admitted = Some(std::time::Instant::now());
                s.cached_prompt_tokens = reused.min(s.n_prompt);
            }
            s.status = Status::Running;
            self.running.push(id);
            plan.chunks.push(Chunk { id, n_new });
            budget -= n_new;
        }
        plan
    }
}

/// Takes the leading full blocks of `s`'s tokens that the pool has cached (at least one token is
/// always left to compute, whose logits the next draw needs). Returns the tokens reused.
fn reuse_cached_prefix(s: &mut Sequence, pool: &mut BlockPool) -> usize {
    let bt = pool.block_tokens();
    let max_blocks = (s.tokens.len() - 1) / bt;
    let mut parent = ROOT;
    for b in 0..max_blocks {
        match pool.lookup(parent, &s.tokens[b * bt..(b + 1) * bt]) {
            Some((block, key)) => {
                s.blocks.push(block);
                s.block_keys.push(key);
                parent = key;
            }
            None => break,
        }
    }
    s.n_computed = s.blocks.len() * bt;
    s.n_computed
}

/// Releases a sequence's blocks so it can be recomputed later (its tokens stay).
fn preempt(seqs: &mut HashMap<RequestId, Sequence>, pool: &mut BlockPool, id: RequestId) {
    if let Some(s) = seqs.get_mut(&id) {
        pool.release(&s.blocks);
        s.blocks.clear();
        s.block_keys.clear();
        s.n_computed = 0;
        s.status = Status::Waiting;
    }
}
