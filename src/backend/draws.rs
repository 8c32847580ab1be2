//! Draw sets of a backend that draws on the host (the CPU, or CUDA with host sampling): each
//! set's results are computed when queued and kept until taken, so that the engine drives every
//! backend through the same queue / close / take calls.

use std::collections::VecDeque;

use super::{BackendError, BatchPlan};
use crate::sampling::{Sampled, SamplingError};

/// Closed sets that may await `take` at once (the engine keeps one step in flight beside the one
/// it is queuing).
pub const MAX_CLOSED_SETS: usize = 2;

/// Rows `first_row..` of the open set come next (`first_row == 0` starts a new one): the
/// queuing rule every backend's draw sets follow. `open` holds one entry per row queued so far.
pub fn continue_open<T>(open: &mut Vec<T>, first_row: usize) -> Result<(), String> {
    if first_row == 0 {
        open.clear();
    }
    if first_row != open.len() {
        return Err(format!("draws queued as row {first_row} of a set of {} rows", open.len()));
    }
    Ok(())
}

/// Whether the open set may close with `rows` rows while `n_closed` sets await their take. A
/// step that draws nothing (a prompt chunk) closes an empty set: rows a failed forward left
/// are void.
pub fn check_close<T>(open: &mut Vec<T>, rows: usize, n_closed: usize) -> Result<(), String> {
    if rows == 0 {
        open.clear();
    }
    if rows != open.len() {
        return Err(format!("closing a draw set of {rows} rows with {} queued", open.len()));
    }
    if n_closed >= MAX_CLOSED_SETS {
        return Err(format!("{MAX_CLOSED_SETS} draw sets already await take_draws"));
    }
    Ok(())
}

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
        continue_open(&mut self.open, first_row).map_err(BackendError::Invalid)?;
        draw(&mut self.open)
    }

    pub fn close(&mut self, rows: usize) -> Result<(), BackendError> {
        check_close(&mut self.open, rows, self.closed.len()).map_err(BackendError::Invalid)?;
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
}
