//! Bookkeeping of the KV pool: which contiguous range of token slots each sequence owns and how
//! many of them it has filled. The K/V data itself lives in the backend's `KvCache`.
//!
//! Each sequence reserves its whole room up front (`new_sequence(max_tokens)`), so a forward can
//! never run out of cache halfway and a GPU kernel addresses a sequence as one base slot.

use std::collections::BTreeMap;

use super::ModelError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqState {
    pub kv_start: usize,
    pub capacity: usize,
    pub len: usize,
}

#[derive(Debug)]
pub struct SlotTable {
    capacity_tokens: usize,
    context_length: usize,
    /// Free ranges, start -> length, kept coalesced.
    free: BTreeMap<usize, usize>,
    seqs: BTreeMap<usize, SeqState>,
    next_id: usize,
}

impl SlotTable {
    pub fn new(capacity_tokens: usize, context_length: usize) -> SlotTable {
        let mut free = BTreeMap::new();
        if capacity_tokens > 0 {
            free.insert(0, capacity_tokens);
        }
        SlotTable { capacity_tokens, context_length, free, seqs: BTreeMap::new(), next_id: 0 }
    }

    pub fn capacity_tokens(&self) -> usize {
        self.capacity_tokens
    }

    pub fn free_tokens(&self) -> usize {
        self.free.values().sum()
    }

    pub fn n_sequences(&self) -> usize {
        self.seqs.len()
    }

    /// Reserves `max_tokens` contiguous slots (first fit).
    pub fn allocate(&mut self, max_tokens: usize) -> Result<usize, ModelError> {
        if max_tokens == 0 {
            return Err(ModelError::Invalid("a sequence needs room for at least one token".into()));
        }
        if max_tokens > self.context_length {
            return Err(ModelError::ContextLength {
                seq_id: self.next_id,
                needed: max_tokens,
                capacity: self.context_length,
                context_length: self.context_length,
            });
        }
        let found = self.free.iter().find(|(_, &len)| len >= max_tokens).map(|(&s, &l)| (s, l));
        let Some((start, len)) = found else {
            return Err(ModelError::KvCacheFull {
                requested: max_tokens,
                largest_free: self.free.values().copied().max().unwrap_or(0),
                capacity: self.capacity_tokens,
            });
        };
        self.free.remove(&start);
        if len > max_tokens {
            self.free.insert(start + max_tokens, len - max_tokens);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.seqs.insert(id, SeqState { kv_start: start, capacity: max_tokens, len: 0 });
        Ok(id)
    }

    pub fn release(&mut self, seq_id: usize) -> Result<(), ModelError> {
        let s = self.seqs.remove(&seq_id).ok_or(ModelError::NoSuchSequence(seq_id))?;
        let (mut start, mut len) = (s.kv_start, s.capacity);
        // Merge with the free range that ends where this one starts, and the one that follows.
        if let Some((&prev_start, &prev_len)) = self.free.range(..start).next_back() {
            if prev_start + prev_len == start {
                self.free.remove(&prev_start);
                start = prev_start;
                len += prev_len;
            }
        }
        if let Some(next_len) = self.free.remove(&(start + len)) {
            len += next_len;
        }
        self.free.insert(start, len);
        Ok(())
    }

    pub fn get(&self, seq_id: usize) -> Result<SeqState, ModelError> {
        self.seqs.get(&seq_id).copied().ok_or(ModelError::NoSuchSequence(seq_id))
    }

    /// Checks that `n_new` more tokens fit the sequence's room.
    pub fn check_room(&self, seq_id: usize, n_new: usize) -> Result<SeqState, ModelError> {
        let s = self.get(seq_id)?;
        if s.len + n_new > s.capacity {
            return Err(ModelError::ContextLength {
                seq_id,
                needed: s.len + n_new,
                capacity: s.capacity,
                context_length: self.context_length,
            });
        }
        Ok(s)
    }

    pub fn advance(&mut self, seq_id: usize, n_new: usize) -> Result<(), ModelError> {
        let s = self.seqs.get_mut(&seq_id).ok_or(ModelError::NoSuchSequence(seq_id))?;
        s.len += n_new;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_first_fit_and_coalesces_on_release() {
        let mut t = SlotTable::new(100, 64);
        let a = t.allocate(30).unwrap();
        let b = t.allocate(30).unwrap();
        let c = t.allocate(40).unwrap();
        assert_eq!(t.free_tokens(), 0);
        assert!(matches!(t.allocate(1), Err(ModelError::KvCacheFull { .. })));
        t.release(a).unwrap();
        t.release(c).unwrap();
        t.release(b).unwrap();
        assert_eq!(t.free_tokens(), 100);
        // One coalesced range again: a 64-token sequence (the whole context) fits.
        let d = t.allocate(64).unwrap();
        assert_eq!(t.get(d).unwrap().kv_start, 0);
    }

    #[test]
    fn refuses_past_context_and_room() {
        let mut t = SlotTable::new(100, 10);
        assert!(matches!(t.allocate(11), Err(ModelError::ContextLength { .. })));
        let s = t.allocate(5).unwrap();
        t.check_room(s, 5).unwrap();
        t.advance(s, 4).unwrap();
        assert!(matches!(t.check_room(s, 2), Err(ModelError::ContextLength { needed: 6, capacity: 5, .. })));
        assert!(matches!(t.release(s + 1), Err(ModelError::NoSuchSequence(_))));
    }
}
