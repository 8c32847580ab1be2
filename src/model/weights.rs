//! The model's tensors by GGUF name, checked against the config and uploaded to a backend.

use std::sync::Arc;

use super::config::requires_qkv_bias;
use super::{ModelConfig, ModelError};
use crate::backend::{Backend, TensorSource};
use crate::gguf::GgufFile;
use crate::quant::GgmlType;

pub struct LayerWeights<B: Backend> {
    pub attn_norm: B::Weight,
    pub wq: B::Weight,
    pub wk: B::Weight,
    pub wv: B::Weight,
    pub bq: Option<B::Weight>,
    pub bk: Option<B::Weight>,
    pub bv: Option<B::Weight>,
    pub wo: B::Weight,
    pub ffn_norm: B::Weight,
    pub ffn_gate: B::Weight,
    pub ffn_up: B::Weight,
    pub ffn_down: B::Weight,
}

pub struct Weights<B: Backend> {
    pub token_embd: B::Weight,
    pub layers: Vec<LayerWeights<B>>,
    pub output_norm: B::Weight,
    /// `None` when tied: the LM head is `token_embd`.
    pub output: Option<B::Weight>,
}

impl<B: Backend> Weights<B> {
    pub fn lm_head(&self) -> &B::Weight {
        self.output.as_ref().unwrap_or(&self.token_embd)
    }
}

struct Loader<'a, B: Backend> {
    file: &'a Arc<GgufFile>,
    backend: &'a mut B,
}

impl<B: Backend> Loader<'_, B> {
    /// Looks up `name`, checks its ggml dims (`[n_cols, n_rows]`, or `[len]` for a vector) and
    /// uploads it.
    fn load(&mut self, name: &str, dims: &[usize]) -> Result<B::Weight, ModelError> {
        self.load_as(name, dims, None)
    }

    /// The type the backend wants a group of projections (`names`, taking the same input
    /// together) uploaded as ([`Backend::group_type`]); `None` when it keeps each one's own, or
    /// a tensor is missing (its load then says so).
    fn group_type(&self, names: &[&str]) -> Option<GgmlType> {
        let types: Option<Vec<GgmlType>> = names.iter().map(|n| self.file.tensor_info(n).ok().map(|i| i.ggml_type)).collect();
        self.backend.group_type(&types?)
    }

    /// [`load`](Self::load), converted to `ty` when given (the backend's `load_weight_as` takes
    /// the tensor's own type as it is).
    fn load_as(&mut self, name: &str, dims: &[usize], ty: Option<GgmlType>) -> Result<B::Weight, ModelError> {
        let info = self.file.tensor_info(name).map_err(|_| ModelError::MissingTensor(name.to_string()))?;
        let got: Vec<usize> = info.dims.iter().map(|&d| d as usize).collect();
        if got != dims {
            return Err(ModelError::BadTensor {
                tensor: name.to_string(),
                problem: format!("dims {got:?}, expected {dims:?}"),
            });
        }
        let src = TensorSource { file: Arc::clone(self.file), info: info.clone() };
        let loaded = match ty {
            Some(ty) => self.backend.load_weight_as(&src, ty),
            None => self.backend.load_weight(&src),
        };
        loaded.map_err(|e| match e {
            // The device's own failures are not the tensor's.
            e @ (crate::backend::BackendError::BadTensor { .. } | crate::backend::BackendError::Cuda(_)) => e.into(),
            other => ModelError::BadTensor { tensor: name.to_string(), problem: other.to_string() },
        })
    }

    fn load_optional(&mut self, name: &str, dims: &[usize]) -> Result<Option<B::Weight>, ModelError> {
        if self.file.tensor_info(name).is_err() {
            return Ok(None);
        }
        self.load(name, dims).map(Some)
    }
}

pub fn load_weights<B: Backend>(
    file: &Arc<GgufFile>,
    config: &ModelConfig,
    backend: &mut B,
) -> Result<Weights<B>, ModelError> {
    let c = config;
    let q_width = c.n_heads * c.head_dim;
    let kv_width = c.n_kv_heads * c.head_dim;
    let mut l = Loader { file, backend };
    let token_embd = l.load("token_embd.weight", &[c.hidden_size, c.vocab_size])?;
    let output_norm = l.load("output_norm.weight", &[c.hidden_size])?;
    let output = if c.tied_embeddings { None } else { Some(l.load("output.weight", &[c.hidden_size, c.vocab_size])?) };
    let bias_required = requires_qkv_bias(&c.arch);
    let mut layers = Vec::with_capacity(c.n_layers);
    for i in 0..c.n_layers {
        let n = |s: &str| format!("blk.{i}.{s}");
        let bias = |l: &mut Loader<'_, B>, name: String, len: usize| {
            if bias_required {
                l.load(&name, &[len]).map(Some)
            } else {
                l.load_optional(&name, &[len])
            }
        };
        // The projections the forward pass runs together on one input (`norm_matmuls`), in the
        // one type the backend may want them in to run them as one launch.
        let qkv_type = l.group_type(&[&n("attn_q.weight"), &n("attn_k.weight"), &n("attn_v.weight")]);
        let gate_up_type = l.group_type(&[&n("ffn_gate.weight"), &n("ffn_up.weight")]);
        layers.push(LayerWeights {
            attn_norm: l.load(&n("attn_norm.weight"), &[c.hidden_size])?,
            wq: l.load_as(&n("attn_q.weight"), &[c.hidden_size, q_width], qkv_type)?,
            wk: l.load_as(&n("attn_k.weight"), &[c.hidden_size, kv_width], qkv_type)?,
            wv: l.load_as(&n("attn_v.weight"), &[c.hidden_size, kv_width], qkv_type)?,
            bq: bias(&mut l, n("attn_q.bias"), q_width)?,
            bk: bias(&mut l, n("attn_k.bias"), kv_width)?,
            bv: bias(&mut l, n("attn_v.bias"), kv_width)?,
            wo: l.load(&n("attn_output.weight"), &[q_width, c.hidden_size])?,
            ffn_norm: l.load(&n("ffn_norm.weight"), &[c.hidden_size])?,
            ffn_gate: l.load_as(&n("ffn_gate.weight"), &[c.hidden_size, c.ffn_size], gate_up_type)?,
            ffn_up: l.load_as(&n("ffn_up.weight"), &[c.hidden_size, c.ffn_size], gate_up_type)?,
            ffn_down: l.load(&n("ffn_down.weight"), &[c.ffn_size, c.hidden_size])?,
        });
        let lw = &layers[i];
        l.backend.prepare_group(&[&lw.wq, &lw.wk, &lw.wv])?;
        l.backend.prepare_group(&[&lw.ffn_gate, &lw.ffn_up])?;
        l.backend.prepare_mlp([&lw.ffn_gate, &lw.ffn_up, &lw.ffn_down])?;
    }
    Ok(Weights { token_embd, layers, output_norm, output })
}
