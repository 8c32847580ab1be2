//! Draw sets of a backend that draws on the host (the CPU, or CUDA with host sampling): each
//! set's results are computed when queued and kept until taken, so that the engine drives every
//! backend through the same queue / close / take calls.

use std::collections::VecDeque;

use super::{BackendError, BatchPlan};
use crate::sampling::{Sampled, SamplingError};

/// Closed sets that may await `take` at once (the engine keeps one step in flight beside the one
/// it is queuing).
pub const MAX_CLOSED_SETS: usize = 2;

#[derive(Default)]
pub struct HostDraws {
    open: Vec<Result<Sampled, SamplingError>>,
    closed: VecDeque<Vec<Result<Sampled, SamplingError>>>,
    /// The tokens of the last closed set, which a batch may be fed ([`BatchPlan::fed`]); a
    /// broken row feeds token 0 (its sequence fails when the set is taken).
    last_tokens: Vec<u32>,
}

impl HostDraws {
    /// Appends the rows that `draw` computes as rows `first_row..` of the open set
    /// (`first_row == 0` starts a new one).
    pub fn queue(&mut self, first_row: usize, draw: impl FnOnce(&mut Vec<Result<Sampled, SamplingError>>) -> Result<(), BackendError>) -> Result<(), BackendError> {
        if first_row == 0 {
            self.open.clear();
        }
        if first_row != self.open.len() {
            return Err(BackendError::Invalid(format!("draws queued as row {first_row} of a set of {} rows", self.open.len())));
        }
        draw(&mut self.open)
    }

    pub fn close(&mut self, rows: usize) -> Result<(), BackendError> {
        if rows == 0 {
            // A step that draws nothing (a prompt chunk); rows a failed forward left are void.
            self.open.clear();
        }
        if rows != self.open.len() {
            return Err(BackendError::Invalid(format!("closing a draw set of {rows} rows with {} queued", self.open.len())));
        }
        if self.closed.len() >= MAX_CLOSED_SETS {
            return Err(BackendError::Invalid(format!("{MAX_CLOSED_SETS} draw sets already await take_draws")));
        }
        self.last_tokens = self.open.iter().map(|r| r.as_ref().map_or(0, |s| s.token)).collect();
        self.closed.push_back(std::mem::take(&mut self.open));
        Ok(())
    }

    pub fn take(&mut self, out: &mut Vec<Result<Sampled, SamplingError>>) -> Result<(), BackendError> {
        let set = self.closed.pop_front().ok_or_else(|| BackendError::Invalid("take_draws without a closed draw set".into()))?;
        out.extend(set);
        Ok(())
    }

    /// Writes the fed tokens of `plan` into `tokens` (the plan's token ids, or a copy of them).
    pub fn feed(&self, plan: &BatchPlan, tokens: &mut [u32]) -> Result<(), BackendError> {
        for &(t, row) in &plan.fed {
            let token = self.last_tokens.get(row as usize).ok_or_else(|| BackendError::Invalid(format!("token {t} fed from draw row {row} of a set of {}", self.last_tokens.len())))?;
            let n = tokens.len();
            *tokens.get_mut(t as usize).ok_or_else(|| BackendError::Invalid(format!("fed token {t} of a batch of {n}")))? = *token;
        }
        Ok(())
    }

    /// A draw outside the sets (a plain `sample`) ends what the last set may feed.
    pub fn forget_fed(&mut self) {
        self.last_tokens.clear();
    }
}
