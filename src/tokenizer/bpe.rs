//! Byte-level BPE over one pre-token ("word"): start from one symbol per byte, repeatedly merge
//! the adjacent pair with the lowest merge rank (leftmost first on ties), memoized per word.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Mutex;

use rustc_hash::FxHashMap;

/// Words longer than this skip the cache: they are rare (long runs of one symbol) and would
/// crowd out the common ones.
const CACHE_MAX_WORD_BYTES: usize = 64;
/// Per shard; a full shard is cleared rather than grown, bounding memory on adversarial input.
const CACHE_MAX_ENTRIES_PER_SHARD: usize = 16_384;
const CACHE_SHARDS: usize = 32;
/// Below this many symbols a rescan per merge beats maintaining a heap.
const HEAP_MIN_SYMBOLS: usize = 24;

pub struct Bpe {
    /// The vocabulary id of the single-byte token for each byte.
    byte_ids: [u32; 256],
    /// (left id, right id) -> (rank, merged id).
    merges: FxHashMap<(u32, u32), (u32, u32)>,
    /// Llama 3 style: a word that is itself a vocabulary entry becomes that one token without
    /// merging (its merges need not reach it).
    whole_words: Option<FxHashMap<Vec<u8>, u32>>,
    cache: Vec<Mutex<FxHashMap<Vec<u8>, Box<[u32]>>>>,
}

#[derive(Clone, Copy)]
struct Symbol {
    id: u32,
    prev: u32,
    next: u32,
    alive: bool,
}

const NONE: u32 = u32::MAX;

impl Bpe {
    pub fn new(
        byte_ids: [u32; 256],
        merges: FxHashMap<(u32, u32), (u32, u32)>,
        whole_words: Option<FxHashMap<Vec<u8>, u32>>,
    ) -> Bpe {
        let cache = (0..CACHE_SHARDS).map(|_| Mutex::new(FxHashMap::default())).collect();
        Bpe { byte_ids, merges, whole_words, cache }
    }

    /// Appends the ids of `word` to `out`.
    pub fn encode_word(&self, word: &[u8], out: &mut Vec<u32>) {
        match word.len() {
            0 => return,
            1 => {
                out.push(self.byte_ids[word[0] as usize]);
                return;
            }
            _ => {}
        }
        if let Some(whole) = &self.whole_words {
            if let Some(&id) = whole.get(word) {
                out.push(id);
                return;
            }
        }
        if word.len() > CACHE_MAX_WORD_BYTES {
            self.merge_word(word, out);
            return;
        }
        let shard = &self.cache[shard_of(word)];
        if let Ok(cache) = shard.lock() {
            if let Some(ids) = cache.get(word) {
                out.extend_from_slice(ids);
                return;
            }
        }
        let start = out.len();
        self.merge_word(word, out);
        if let Ok(mut cache) = shard.lock() {
            if cache.len() >= CACHE_MAX_ENTRIES_PER_SHARD {
                cache.clear();
            }
            cache.insert(word.to_vec(), out[start..].into());
        }
    }

    fn merge_word(&self, word: &[u8], out: &mut Vec<u32>) {
        if word.len() < HEAP_MIN_SYMBOLS {
            self.merge_by_scan(word, out)
        } else {
            self.merge_by_heap(word, out)
        }
    }

    /// For short words: the pair ranks sit in an array; each merge rescans it for the minimum
    /// (cheap for n < 24) and looks up only the two pairs the merge created.
    fn merge_by_scan(&self, word: &[u8], out: &mut Vec<u32>) {
        const NO_MERGE: (u32, u32) = (u32::MAX, 0);
        let mut ids: Vec<u32> = word.iter().map(|&b| self.byte_ids[b as usize]).collect();
        let pair = |l: u32, r: u32| self.merges.get(&(l, r)).copied().unwrap_or(NO_MERGE);
        // ranks[i]: (rank, merged id) of the pair (ids[i], ids[i + 1]).
        let mut ranks: Vec<(u32, u32)> = ids.windows(2).map(|w| pair(w[0], w[1])).collect();
        loop {
            let mut best = 0usize;
            for i in 1..ranks.len() {
                // Strictly less: the leftmost of equal ranks wins.
                if ranks[i].0 < ranks[best].0 {
                    best = i;
                }
            }
            let Some(&(rank, merged)) = ranks.get(best) else { break };
            if rank == u32::MAX {
                break;
            }
            ids[best] = merged;
            ids.remove(best + 1);
            ranks.remove(best);
            if best > 0 {
                ranks[best - 1] = pair(ids[best - 1], merged);
            }
            if best < ranks.len() {
                ranks[best] = pair(merged, ids[best + 1]);
            }
        }
        out.extend_from_slice(&ids);
    }

    /// O(n log n): a heap of candidate merges over a linked list of symbols; stale candidates
    /// (a neighbour already merged away) are skipped when popped.
    fn merge_by_heap(&self, word: &[u8], out: &mut Vec<u32>) {
        let n = word.len();
        let mut syms: Vec<Symbol> = word
            .iter()
            .enumerate()
            .map(|(i, &b)| Symbol {
                id: self.byte_ids[b as usize],
                prev: if i == 0 { NONE } else { (i - 1) as u32 },
                next: if i + 1 == n { NONE } else { (i + 1) as u32 },
                alive: true,
            })
            .collect();
        // Ordered by (rank, position of the left symbol): positions keep word order because a
        // merged symbol keeps its left part's index.
        let mut heap: BinaryHeap<Reverse<(u32, u32, u32, u32)>> = BinaryHeap::with_capacity(n);
        for i in 0..n - 1 {
            if let Some(&(rank, merged)) = self.merges.get(&(syms[i].id, syms[i + 1].id)) {
                heap.push(Reverse((rank, i as u32, syms[i + 1].id, merged)));
            }
        }
        while let Some(Reverse((rank, left, right_id, merged))) = heap.pop() {
            let l = left as usize;
            let sym = syms[l];
            if !sym.alive || sym.next == NONE {
                continue;
            }
            let r = sym.next as usize;
            // Stale if either side changed since the candidate was pushed.
            if syms[r].id != right_id || self.merges.get(&(sym.id, right_id)) != Some(&(rank, merged)) {
                continue;
            }
            syms[l].id = merged;
            syms[l].next = syms[r].next;
            syms[r].alive = false;
            if syms[r].next != NONE {
                let nn = syms[r].next as usize;
                syms[nn].prev = left;
                if let Some(&(rk, m)) = self.merges.get(&(merged, syms[nn].id)) {
                    heap.push(Reverse((rk, left, syms[nn].id, m)));
                }
            }
            if sym.prev != NONE {
                let p = sym.prev as usize;
                if let Some(&(rk, m)) = self.merges.get(&(syms[p].id, merged)) {
                    heap.push(Reverse((rk, p as u32, merged, m)));
                }
            }
        }
        let mut i = 0usize;
        while i != NONE as usize {
            out.push(syms[i].id);
            i = syms[i].next as usize;
        }
    }
}

fn shard_of(word: &[u8]) -> usize {
    use std::hash::{BuildHasher, Hasher};
    let mut h = rustc_hash::FxBuildHasher.build_hasher();
    h.write(word);
    (h.finish() >> 32) as usize % CACHE_SHARDS
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes are their own ids; merges given as (left, right, merged) in rank order.
    fn toy(merges: &[(u32, u32, u32)]) -> Bpe {
        let mut byte_ids = [0u32; 256];
        for (b, id) in byte_ids.iter_mut().enumerate() {
            *id = b as u32;
        }
        let map = merges.iter().enumerate().map(|(rank, &(l, r, m))| ((l, r), (rank as u32, m))).collect();
        Bpe::new(byte_ids, map, None)
    }

    #[test]
    fn lowest_rank_first_and_leftmost_on_ties() {
        // "aaa": (a,a)->300 applies at the leftmost pair first, leaving [300, a].
        let bpe = toy(&[(97, 97, 300)]);
        let mut out = vec![];
        bpe.encode_word(b"aaa", &mut out);
        assert_eq!(out, vec![300, 97]);
        // rank order beats position: (b,c) before (a,b).
        let bpe = toy(&[(98, 99, 301), (97, 98, 302)]);
        let mut out = vec![];
        bpe.encode_word(b"abc", &mut out);
        assert_eq!(out, vec![97, 301]);
    }

    #[test]
    fn heap_and_scan_agree() {
        let bpe = toy(&[(97, 97, 300), (300, 300, 301), (97, 98, 302), (302, 300, 303), (301, 97, 304), (98, 98, 305)]);
        let mut state = 12345u64;
        for len in 2..80 {
            for _ in 0..20 {
                let word: Vec<u8> = (0..len)
                    .map(|_| {
                        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        if (state >> 33).is_multiple_of(3) { b'b' } else { b'a' }
                    })
                    .collect();
                let (mut a, mut b) = (vec![], vec![]);
                bpe.merge_by_scan(&word, &mut a);
                bpe.merge_by_heap(&word, &mut b);
                assert_eq!(a, b, "word {:?}", String::from_utf8_lossy(&word));
            }
        }
    }
}
