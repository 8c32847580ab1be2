//! Logits processors and samplers.
