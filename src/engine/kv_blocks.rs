//! The paged KV cache's bookkeeping: which blocks are free, who holds each, and which full blocks
//! can be reused by a prompt that starts the same way (prefix caching).
//!
//! The model's KV pool is `n_blocks` blocks of `block_tokens` positions. A sequence holds a list of
//! blocks (its block table) that grows as it does; nothing is reserved for tokens not yet
//! computed. A block is shared by several sequences (reference counts) only when it is full and
//! was found through its content key: the hash of every token up to its end, chained block to
//! block, with the tokens kept beside it so that a hash collision can never hand a sequence
//! someone else's keys and values.
//!
//! A released block stays "idle" with its content until its room is needed: allocation takes the
//! idle block released longest ago (LRU), and forgets its content then. Sequences release their
//! blocks last-first, so the shared beginnings of prompts (a system message) outlive their tails.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};

/// The content key of the empty prefix: the parent of a sequence's first block.
pub const ROOT: u64 = 0x243F_6A88_85A3_08D3;

#[derive(Debug, Clone)]
struct Content {
    key: u64,
    parent: u64,
    tokens: Box<[u32]>,
}

#[derive(Debug, Clone, Default)]
struct Block {
    refs: u32,
    /// Position in the idle order while `refs == 0`.
    idle_since: Option<u64>,
    content: Option<Content>,
}

#[derive(Debug)]
pub struct BlockPool {
    block_tokens: usize,
    blocks: Vec<Block>,
    /// Idle blocks by the tick of their release: the first is the next to be reused.
    idle: BTreeMap<u64, u32>,
    tick: u64,
    /// Content key -> the block holding that content (held or idle).
    by_content: HashMap<u64, u32>,
    prefix_caching: bool,
}

/// The content key of a full block: `parent` is the key of the block before it (or [`ROOT`]).
pub fn content_key(parent: u64, tokens: &[u32]) -> u64 {
    // SipHash with fixed keys: the same in every process, and keys are verified on use anyway.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

impl BlockPool {
    pub fn new(n_blocks: usize, block_tokens: usize, prefix_caching: bool) -> BlockPool {
        let blocks = (0..n_blocks).map(|i| Block { refs: 0, idle_since: Some(i as u64), content: None }).collect();
        let idle = (0..n_blocks as u64).map(|i| (i, i as u32)).collect();
        BlockPool { block_tokens, blocks, idle, tick: n_blocks as u64, by_content: HashMap::new(), prefix_caching }
    }

    pub fn block_tokens(&self) -> usize {
        self.block_tokens
    }

    pub fn total(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks no sequence holds (some may still hold reusable content).
    pub fn available(&self) -> usize {
        self.idle.len()
    }

    pub fn used(&self) -> usize {
        self.total() - self.available()
    }

    pub fn prefix_caching(&self) -> bool {
        self.prefix_caching
    }

    /// Blocks needed to hold `tokens` positions.
    pub fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_tokens)
    }

    /// Takes `n` idle blocks (the longest idle first), or none at all when fewer are idle.
    pub fn allocate(&mut self, n: usize) -> Option<Vec<u32>> {
        if n > self.idle.len() {
            return None;
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let (_, b) = self.idle.pop_first()?;
            let block = &mut self.blocks[b as usize];
            block.idle_since = None;
            block.refs = 1;
            if let Some(c) = block.content.take() {
                if self.by_content.get(&c.key) == Some(&b) {
                    self.by_content.remove(&c.key);
                }
            }
            out.push(b);
        }
        Some(out)
    }

    /// Drops one hold on each of `blocks`, last first (see the module doc).
    pub fn release(&mut self, blocks: &[u32]) {
        for &b in blocks.iter().rev() {
            let block = &mut self.blocks[b as usize];
            debug_assert!(block.refs > 0, "block {b} released more often than held");
            block.refs = block.refs.saturating_sub(1);
            if block.refs == 0 {
                self.tick += 1;
                block.idle_since = Some(self.tick);
                self.idle.insert(self.tick, b);
            }
        }
    }

    /// The block holding exactly `tokens` after the prefix keyed `parent`, if one is cached; the
    /// caller now holds it. Returns the block and its content key.
    pub fn lookup(&mut self, parent: u64, tokens: &[u32]) -> Option<(u32, u64)> {
        if !self.prefix_caching || tokens.len() != self.block_tokens {
            return None;
        }
        let key = content_key(parent, tokens);
        let b = *self.by_content.get(&key)?;
        let block = &mut self.blocks[b as usize];
        let c = block.content.as_ref()?;
        if c.parent != parent || &*c.tokens != tokens {
            return None; // a hash collision: not this content
        }
        if let Some(since) = block.idle_since.take() {
            self.idle.remove(&since);
        }
        block.refs += 1;
        Some((b, key))
    }

    /// Records that `block` (held by the caller) is full and holds `tokens` after the prefix
    /// keyed `parent`, so later prompts can reuse it. Returns its content key.
    pub fn register(&mut self, block: u32, parent: u64, tokens: &[u32]) -> u64 {
        let key = content_key(parent, tokens);
        if self.prefix_caching && tokens.len() == self.block_tokens {
            // The first block found with a content keeps it; a duplicate stays anonymous.
            if let std::collections::hash_map::Entry::Vacant(e) = self.by_content.entry(key) {
                e.insert(block);
                self.blocks[block as usize].content = Some(Content { key, parent, tokens: tokens.into() });
            }
        }
        key
    }

    /// Holds on `block` (test support).
    #[cfg(test)]
    fn refs(&self, block: u32) -> u32 {
        self.blocks[block as usize].refs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_all_or_nothing_and_releases() {
        let mut p = BlockPool::new(4, 16, true);
        let a = p.allocate(3).unwrap();
        assert_eq!(p.available(), 1);
        assert!(p.allocate(2).is_none(), "all or nothing");
        assert_eq!(p.available(), 1);
        p.release(&a);
        assert_eq!(p.available(), 4);
        assert!(a.iter().all(|&b| p.refs(b) == 0));
    }

    #[test]
    fn full_blocks_are_found_by_content_and_shared() {
        let mut p = BlockPool::new(8, 4, true);
        let tokens: Vec<u32> = (0..8).collect();
        let blocks = p.allocate(2).unwrap();
        let k0 = p.register(blocks[0], ROOT, &tokens[..4]);
        let k1 = p.register(blocks[1], k0, &tokens[4..]);
        // While held: found and shared.
        assert_eq!(p.lookup(ROOT, &tokens[..4]), Some((blocks[0], k0)));
        assert_eq!(p.refs(blocks[0]), 2);
        p.release(&blocks[..1]);
        p.release(&blocks);
        // Idle, content kept: revived by a lookup.
        assert_eq!(p.available(), 8);
        assert_eq!(p.lookup(ROOT, &tokens[..4]), Some((blocks[0], k0)));
        assert_eq!(p.lookup(k0, &tokens[4..]), Some((blocks[1], k1)));
        assert_eq!(p.available(), 6);
        // A different prefix or different tokens: not found.
        assert_eq!(p.lookup(ROOT, &tokens[4..]), None);
        assert_eq!(p.lookup(k1, &tokens[..4]), None);
        // Partial blocks are never shared.
        assert_eq!(p.lookup(ROOT, &tokens[..3]), None);
    }

    #[test]
    fn reuse_takes_the_longest_idle_and_forgets_its_content() {
        let mut p = BlockPool::new(3, 2, true);
        let a = p.allocate(3).unwrap();
        let ka = p.register(a[0], ROOT, &[1, 2]);
        p.register(a[1], ka, &[3, 4]);
        p.release(&a[..2]); // a[1] goes idle first (last-first), then a[0]
        p.release(&a[2..]);
        let next = p.allocate(1).unwrap();
        assert_eq!(next, vec![a[1]], "the tail block of the released sequence is reused first");
        assert_eq!(p.lookup(ka, &[3, 4]), None, "its content is forgotten");
        assert_eq!(p.lookup(ROOT, &[1, 2]).map(|x| x.0), Some(a[0]), "the head block is still cached");
    }

    #[test]
    fn off_means_no_sharing() {
        let mut p = BlockPool::new(2, 2, false);
        let a = p.allocate(1).unwrap();
        p.register(a[0], ROOT, &[1, 2]);
        p.release(&a);
        assert_eq!(p.lookup(ROOT, &[1, 2]), None);
    }
}
