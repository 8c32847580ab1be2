//! `ModelConfig` from GGUF metadata: `general.architecture` picks the `{arch}.*` keys.

use super::{ModelConfig, ModelError};
use crate::backend::RopeStyle;
use crate::gguf::GgufFile;

/// Architectures whose GGUF graph is the one `qwen2.rs` computes.
pub const SUPPORTED_ARCHS: [&str; 2] = ["qwen2", "llama"];

/// The RoPE pairing the architecture's GGUF weights are laid out for (see [`RopeStyle`]).
pub fn rope_style(arch: &str) -> RopeStyle {
    if arch == "llama" {
        RopeStyle::Adjacent
    } else {
        RopeStyle::Neox
    }
}

/// q/k/v projections carry biases that must be present (Qwen2 always has them).
pub fn requires_qkv_bias(arch: &str) -> bool {
    arch == "qwen2"
}

fn require_usize(file: &GgufFile, key: &str) -> Result<usize, ModelError> {
    let v = file.get_u64(key)?.ok_or_else(|| ModelError::MissingKey(key.to_string()))?;
    let v = usize::try_from(v).map_err(|_| ModelError::Invalid(format!("metadata {key:?} = {v} does not fit")))?;
    if v == 0 {
        return Err(ModelError::Invalid(format!("metadata {key:?} is 0")));
    }
    Ok(v)
}

fn require_f32(file: &GgufFile, key: &str) -> Result<f32, ModelError> {
    let v = file.get_f64(key)?.ok_or_else(|| ModelError::MissingKey(key.to_string()))?;
    if !v.is_finite() || v <= 0.0 {
        return Err(ModelError::Invalid(format!("metadata {key:?} = {v} must be a positive number")));
    }
    Ok(v as f32)
}

impl ModelConfig {
    /// Reads the hyperparameters. Errors name the missing key, the unsupported architecture or
    /// the unsupported RoPE scaling; nothing is defaulted that changes the math silently.
    pub fn from_gguf(file: &GgufFile) -> Result<ModelConfig, ModelError> {
        let arch = file
            .get_str("general.architecture")?
            .ok_or_else(|| ModelError::MissingKey("general.architecture".to_string()))?
            .to_string();
        if !SUPPORTED_ARCHS.contains(&arch.as_str()) {
            return Err(ModelError::UnknownArchitecture(arch));
        }
        let key = |suffix: &str| format!("{arch}.{suffix}");

        let n_layers = require_usize(file, &key("block_count"))?;
        let hidden_size = require_usize(file, &key("embedding_length"))?;
        let ffn_size = require_usize(file, &key("feed_forward_length"))?;
        let n_heads = require_usize(file, &key("attention.head_count"))?;
        // Absent means plain multi-head attention, as in llama.cpp.
        let n_kv_heads = match file.get_u64(&key("attention.head_count_kv"))? {
            Some(n) => usize::try_from(n).ok().filter(|&n| n > 0).ok_or_else(|| {
                ModelError::Invalid(format!("metadata {:?} = {n} is invalid", key("attention.head_count_kv")))
            })?,
            None => n_heads,
        };
        if n_heads % n_kv_heads != 0 {
            return Err(ModelError::Invalid(format!(
                "{n_heads} attention heads are not a multiple of {n_kv_heads} KV heads"
            )));
        }
        let head_dim = match file.get_u64(&key("attention.key_length"))? {
            Some(d) => d as usize,
            None => {
                if hidden_size % n_heads != 0 {
                    return Err(ModelError::Invalid(format!(
                        "embedding length {hidden_size} is not a multiple of {n_heads} heads"
                    )));
                }
                hidden_size / n_heads
            }
        };
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(ModelError::Invalid(format!("head dimension {head_dim} must be even and non-zero")));
        }
        if let Some(v_len) = file.get_u64(&key("attention.value_length"))? {
            if v_len as usize != head_dim {
                return Err(ModelError::Invalid(format!(
                    "value head length {v_len} differs from key head length {head_dim}; not supported"
                )));
            }
        }
        let context_length = require_usize(file, &key("context_length"))?;
        let rope_freq_base = match file.get_f64(&key("rope.freq_base"))? {
            Some(b) if b.is_finite() && b > 0.0 => b as f32,
            Some(b) => return Err(ModelError::Invalid(format!("rope.freq_base = {b} is invalid"))),
            // ggml's default when the key is absent.
            None => 10000.0,
        };
        let rope_scale = rope_scale(file, &arch)?;
        let rms_norm_eps = require_f32(file, &key("attention.layer_norm_rms_epsilon"))?;

        let embd = file.tensor_info("token_embd.weight").map_err(|_| ModelError::MissingTensor("token_embd.weight".into()))?;
        if embd.dims.len() != 2 || embd.row_elems() != hidden_size {
            return Err(ModelError::BadTensor {
                tensor: "token_embd.weight".into(),
                problem: format!("dims {:?}, expected [{hidden_size}, vocab]", embd.dims),
            });
        }
        let vocab_size = embd.n_rows();
        let tied_embeddings = file.tensor_info("output.weight").is_err();

        Ok(ModelConfig {
            arch,
            n_layers,
            hidden_size,
            ffn_size,
            n_heads,
            n_kv_heads,
            head_dim,
            vocab_size,
            context_length,
            rope_freq_base,
            rope_scale,
            rms_norm_eps,
            tied_embeddings,
        })
    }
}

/// Linear scaling is the only kind the forward pass implements; YaRN and others are refused
/// rather than ignored (ignoring them would silently change every logit past the base context).
fn rope_scale(file: &GgufFile, arch: &str) -> Result<f32, ModelError> {
    let ty_key = format!("{arch}.rope.scaling.type");
    let factor_key = format!("{arch}.rope.scaling.factor");
    let factor = file.get_f64(&factor_key)?;
    // Older converters wrote only `rope.scale_linear`.
    let legacy = file.get_f64(&format!("{arch}.rope.scale_linear"))?;
    match file.get_str(&ty_key)? {
        None | Some("none") => match legacy {
            Some(f) if f.is_finite() && f > 0.0 => Ok(f as f32),
            Some(f) => Err(ModelError::Invalid(format!("{arch}.rope.scale_linear = {f} is invalid"))),
            None => Ok(1.0),
        },
        Some("linear") => match factor {
            Some(f) if f.is_finite() && f > 0.0 => Ok(f as f32),
            Some(f) => Err(ModelError::Invalid(format!("{factor_key} = {f} is invalid"))),
            None => Err(ModelError::MissingKey(factor_key)),
        },
        Some(other) => Err(ModelError::Invalid(format!(
            "RoPE scaling type {other:?} ({ty_key}) is not supported; ferrite implements linear scaling only"
        ))),
    }
}
