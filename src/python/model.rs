//! `ferrite.Model`: a loaded model with its engine, for logits from Python.

use std::path::PathBuf;
use std::sync::Arc;

use numpy::{PyArray2, PyArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::dlpack::PyDeviceTensor;
use super::gguf::PyGgufFile;
use crate::backend::{KvDtype, OwnedRows};
use crate::engine::shared::SharedEngine;
use crate::engine::{Engine, EngineConfig};
use crate::gguf::GgufFile;
use crate::model::{load_model_with, LoadOptions, LogitsFor, ModelConfig};

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyModel>()?;
    Ok(())
}

/// Room a `new_sequence()` allows when no `max_tokens` is given (capped at the context length).
const DEFAULT_SEQUENCE_TOKENS: usize = 4096;

/// A Qwen2-family model loaded on a device, with its KV cache and generation engine.
///
/// Load with ``Model.load``. ``forward`` returns float32 logits ``[rows, vocab]``; without a
/// sequence it runs the tokens as a fresh sequence; with ``seq=`` (an id from ``new_sequence``)
/// it appends them to that sequence's KV cache, so the sequence can be fed incrementally.
///
/// >>> import ferrite
/// >>> m = ferrite.Model.load(ferrite.fetch_test_model(), device="cpu")
/// >>> m.forward([9707, 11, 1879], last_only=True).shape
/// (1, 151936)
/// >>> s = m.new_sequence()
/// >>> _ = m.forward([9707, 11], seq=s); m.forward([1879], seq=s).shape
/// (1, 151936)
/// >>> m.free_sequence(s)
#[pyclass(name = "Model", module = "ferrite", frozen)]
pub struct PyModel {
    shared: Arc<SharedEngine>,
    config: ModelConfig,
    device: String,
    kv_cache_tokens: usize,
    pub(crate) kv_cache_dtype: KvDtype,
    max_batch: usize,
}

/// A GGUF file from a path or an open `GgufFile`.
pub(crate) fn open_file(py: Python<'_>, path_or_file: &Bound<'_, PyAny>) -> PyResult<Arc<GgufFile>> {
    if let Ok(f) = path_or_file.cast::<PyGgufFile>() {
        return f.get().file();
    }
    let path: PathBuf = path_or_file
        .extract()
        .map_err(|_| PyTypeError::new_err("path_or_file must be a path (str or os.PathLike) or a ferrite.GgufFile"))?;
    Ok(Arc::new(py.detach(|| GgufFile::open(&path))?))
}

/// The KV cache's element type from its Python name.
fn kv_dtype(name: &str) -> PyResult<KvDtype> {
    KvDtype::from_name(name).ok_or_else(|| {
        let names: Vec<String> = KvDtype::ALL.iter().map(|d| format!("{:?}", d.name())).collect();
        PyValueError::new_err(format!("kv_cache_dtype = {name:?}: expected one of {}", names.join(", ")))
    })
}

fn positive(name: &str, v: i64) -> PyResult<usize> {
    usize::try_from(v).ok().filter(|&n| n > 0).ok_or_else(|| PyValueError::new_err(format!("{name} = {v}: expected an integer >= 1")))
}

impl PyModel {
    pub(crate) fn shared(&self) -> Arc<SharedEngine> {
        self.shared.clone()
    }

    pub(crate) fn device_name(&self, _py: Python<'_>) -> String {
        self.device.clone()
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn load_file(
        py: Python<'_>,
        file: Arc<GgufFile>,
        device: &str,
        max_batch: i64,
        kv_cache_tokens: Option<i64>,
        exact_matmul: bool,
        max_step_tokens: Option<i64>,
        prefix_caching: bool,
        threads: Option<i64>,
        kv_cache_dtype: &str,
    ) -> PyResult<PyModel> {
        let kv_cache_dtype = kv_dtype(kv_cache_dtype)?;
        let max_batch = positive("max_batch", max_batch)?;
        let threads = threads.map(|n| positive("threads", n)).transpose()?;
        let kv_cache_tokens = kv_cache_tokens.map(|n| positive("kv_cache_tokens", n)).transpose()?;
        let max_step_tokens = max_step_tokens.map(|n| positive("max_step_tokens", n)).transpose()?;
        let options = LoadOptions { kv_cache_tokens, max_batch, exact_matmul, threads, kv_cache_dtype };
        let path = file.path().map(|p| p.to_path_buf());
        let shared = py.detach(|| -> Result<SharedEngine, PyErr> {
            // A model the file cannot make (a missing tensor, an unknown architecture) names the file.
            let model = load_model_with(file, device, options).map_err(|e| match e {
                crate::model::ModelError::Backend(_) => PyErr::from(e),
                e => Python::attach(|py| super::gguf::naming_file(py, path.as_deref(), e.into())),
            })?;
            let mut config = EngineConfig::for_model(model.as_ref());
            if let Some(n) = max_step_tokens {
                config.max_step_tokens = n;
            }
            config.prefix_caching = prefix_caching;
            Ok(SharedEngine::new(Engine::new(model, config)?))
        })?;
        let (config, chosen, kv_cache_tokens) =
            shared.with_engine(|e| (e.model().config().clone(), e.model().device(), e.capacity_tokens()));
        if device == "auto" {
            log(py, &format!("device=\"auto\": running on {chosen}"));
        }
        Ok(PyModel { shared: Arc::new(shared), config, device: chosen, kv_cache_tokens, kv_cache_dtype, max_batch })
    }

    fn logits(&self, py: Python<'_>, entries: Vec<(Option<usize>, Vec<u32>)>, which: LogitsFor) -> PyResult<Vec<f32>> {
        let shared = &self.shared;
        Ok(py.detach(|| shared.with_engine(|e| e.forward(&entries, which)))?)
    }
}

/// One line on the `ferrite` logger (Python's logging): how a user sees what was chosen.
fn log(py: Python<'_>, msg: &str) {
    let _ = py.import("logging").and_then(|l| l.call_method1("getLogger", ("ferrite",))).and_then(|l| l.call_method1("info", (msg,)));
}

fn config_dict<'py>(py: Python<'py>, c: &ModelConfig) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("arch", &c.arch)?;
    d.set_item("n_layers", c.n_layers)?;
    d.set_item("hidden_size", c.hidden_size)?;
    d.set_item("ffn_size", c.ffn_size)?;
    d.set_item("n_heads", c.n_heads)?;
    d.set_item("n_kv_heads", c.n_kv_heads)?;
    d.set_item("head_dim", c.head_dim)?;
    d.set_item("vocab_size", c.vocab_size)?;
    d.set_item("context_length", c.context_length)?;
    d.set_item("rope_freq_base", c.rope_freq_base)?;
    d.set_item("rope_scale", c.rope_scale)?;
    d.set_item("rms_norm_eps", c.rms_norm_eps)?;
    d.set_item("tied_embeddings", c.tied_embeddings)?;
    Ok(d)
}

fn check_token_ids(ids: Vec<i64>, vocab_size: usize) -> PyResult<Vec<u32>> {
    ids.into_iter()
        .map(|id| {
            u32::try_from(id).ok().filter(|&t| (t as usize) < vocab_size).ok_or_else(|| {
                super::errors::raise("InvalidTokenError", format!("token id {id} is out of range for a vocabulary of {vocab_size}"))
            })
        })
        .collect()
}

fn to_array<'py>(py: Python<'py>, logits: Vec<f32>, vocab: usize) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let rows = logits.len() / vocab.max(1);
    numpy::PyArray1::from_vec(py, logits).reshape([rows, vocab])
}

#[pymethods]
impl PyModel {
    /// Loads a model from a path or an open ``GgufFile`` onto ``device``: ``"auto"`` (the first
    /// CUDA GPU when one is usable, else the CPU; the choice is logged on the ``ferrite``
    /// logger), ``"cpu"``, or ``"cuda"``/``"cuda:N"`` (kernels are compiled by NVRTC on first use
    /// and cached under ``~/.cache/ferrite/kernels``; ``ferrite.CudaError`` says what is missing
    /// when CUDA is not usable).
    ///
    /// ``max_batch``: sequences running together at most. ``kv_cache_tokens``: token positions
    /// of the paged KV cache shared by all sequences (default: the context length; blocks are
    /// taken as sequences grow, nothing is reserved up front; on the GPU it takes
    /// ``2 * n_layers * kv_cache_tokens * n_kv_heads * head_dim * 4`` bytes).
    /// ``exact_matmul``: the float32 reference arithmetic, slower and closest to a float64
    /// forward pass (max |logit difference| ~1e-3 on the test model): on the CPU dequantized
    /// float32 weights instead of activations quantized to 8 bits as llama.cpp does (~0.45 by
    /// default); on a GPU float32 CUDA cores from 3 rows, where the default multiplies f16
    /// weights and activations on the tensor cores (more than 4 rows; ~0.04) or keeps 16 bits of
    /// each activation (3-4 rows); one or two rows are exact either way.
    /// ``max_step_tokens``: tokens one engine step computes at most (default 2048 on a GPU, 256
    /// on a CPU); ``prefix_caching``: reuse the KV of prompts that start alike. ``threads`` (CPU):
    /// threads for every op (default: the physical cores, or ``RAYON_NUM_THREADS``).
    /// ``kv_cache_dtype``: what the KV cache stores keys and values as, ``"float32"`` (the
    /// default) or ``"float16"`` (rounded to nearest, half the memory; attention still computes
    /// in float32).
    ///
    /// >>> m = ferrite.Model.load(ferrite.fetch_test_model())
    /// >>> m.config["n_layers"]
    /// 24
    #[staticmethod]
    #[pyo3(signature = (path_or_file, device = "auto", max_batch = 64, kv_cache_tokens = None, exact_matmul = false,
        max_step_tokens = None, prefix_caching = true, threads = None, kv_cache_dtype = "float32"))]
    #[allow(clippy::too_many_arguments)]
    fn load(
        py: Python<'_>,
        path_or_file: &Bound<'_, PyAny>,
        device: &str,
        max_batch: i64,
        kv_cache_tokens: Option<i64>,
        exact_matmul: bool,
        max_step_tokens: Option<i64>,
        prefix_caching: bool,
        threads: Option<i64>,
        kv_cache_dtype: &str,
    ) -> PyResult<PyModel> {
        let file = open_file(py, path_or_file)?;
        PyModel::load_file(py, file, device, max_batch, kv_cache_tokens, exact_matmul, max_step_tokens, prefix_caching, threads, kv_cache_dtype)
    }

    /// The hyperparameters as a dict: ``arch``, ``n_layers``, ``hidden_size``, ``ffn_size``,
    /// ``n_heads``, ``n_kv_heads``, ``head_dim``, ``vocab_size``, ``context_length``,
    /// ``rope_freq_base``, ``rope_scale``, ``rms_norm_eps``, ``tied_embeddings``.
    #[getter]
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        config_dict(py, &self.config)
    }

    /// The device the model runs on: ``"cpu"``, ``"cuda:0"``, ...
    #[getter]
    fn device(&self) -> String {
        self.device.clone()
    }

    /// Token positions of the KV cache shared by all sequences.
    #[getter]
    fn kv_cache_tokens(&self) -> usize {
        self.kv_cache_tokens
    }

    /// What the KV cache stores keys and values as: ``"float32"`` or ``"float16"``.
    #[getter]
    fn kv_cache_dtype(&self) -> &'static str {
        self.kv_cache_dtype.name()
    }

    /// Sequences running together at most.
    #[getter]
    fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Logits for ``token_ids``: float32 ``[len(token_ids), vocab]``, or ``[1, vocab]`` (the
    /// last token) with ``last_only=True``. Without ``seq`` the tokens are a fresh sequence
    /// (positions from 0, nothing kept); with ``seq`` they are appended to that sequence.
    /// ``on_device=True`` leaves the logits on the model's device: a ``DeviceTensor`` on a GPU
    /// (``torch.from_dlpack`` takes it without a copy), a numpy array on the CPU.
    ///
    /// >>> logits = m.forward([9707, 11, 1879])
    /// >>> logits.shape
    /// (3, 151936)
    #[pyo3(signature = (token_ids, last_only = false, seq = None, *, on_device = false))]
    fn forward<'py>(&self, py: Python<'py>, token_ids: Vec<i64>, last_only: bool, seq: Option<usize>, on_device: bool) -> PyResult<Bound<'py, PyAny>> {
        let tokens = check_token_ids(token_ids, self.config.vocab_size)?;
        if tokens.is_empty() {
            return Err(PyValueError::new_err("token_ids is empty"));
        }
        let which = if last_only { LogitsFor::LastToken } else { LogitsFor::AllTokens };
        let vocab = self.config.vocab_size;
        if on_device {
            let shared = &self.shared;
            let rows = py.detach(|| shared.with_engine(|e| e.forward_rows(&[(seq, tokens)], which)))?;
            return match rows {
                OwnedRows::Host(v) => Ok(to_array(py, v, vocab)?.into_any()),
                OwnedRows::Cuda(t) => {
                    let n_rows = t.len() / vocab.max(1);
                    Ok(Bound::new(py, PyDeviceTensor::new(t, vec![n_rows, vocab])?)?.into_any())
                }
            };
        }
        let logits = self.logits(py, vec![(seq, tokens)], which)?;
        Ok(to_array(py, logits, vocab)?.into_any())
    }

    /// Runs several sequences in one batched pass; returns one float32 array per sequence:
    /// ``[1, vocab]`` (its last token) with ``last_only=True``, else ``[len(ids), vocab]``.
    /// ``seqs``, if given, holds one sequence id (or ``None`` for a fresh one) per entry.
    ///
    /// >>> a, b = m.forward_batch([[9707, 11], [1879]])
    /// >>> a.shape, b.shape
    /// ((1, 151936), (1, 151936))
    #[pyo3(signature = (batch, last_only = true, seqs = None))]
    fn forward_batch<'py>(
        &self,
        py: Python<'py>,
        batch: Vec<Vec<i64>>,
        last_only: bool,
        seqs: Option<Vec<Option<usize>>>,
    ) -> PyResult<Vec<Bound<'py, PyArray2<f32>>>> {
        let seqs = seqs.unwrap_or_else(|| vec![None; batch.len()]);
        if seqs.len() != batch.len() {
            return Err(PyValueError::new_err(format!("seqs has {} entries for a batch of {}", seqs.len(), batch.len())));
        }
        let mut entries = Vec::with_capacity(batch.len());
        let mut rows = Vec::with_capacity(batch.len());
        for (ids, seq) in batch.into_iter().zip(seqs) {
            let tokens = check_token_ids(ids, self.config.vocab_size)?;
            if tokens.is_empty() {
                return Err(PyValueError::new_err("a sequence in the batch is empty"));
            }
            rows.push(if last_only { 1 } else { tokens.len() });
            entries.push((seq, tokens));
        }
        let which = if last_only { LogitsFor::LastToken } else { LogitsFor::AllTokens };
        let logits = self.logits(py, entries, which)?;
        let vocab = self.config.vocab_size;
        let mut out = Vec::with_capacity(rows.len());
        let mut start = 0;
        for r in rows {
            out.push(to_array(py, logits[start * vocab..(start + r) * vocab].to_vec(), vocab)?);
            start += r;
        }
        Ok(out)
    }

    /// A sequence of up to ``max_tokens`` tokens (default ``min(4096, context_length)``) for
    /// ``forward(..., seq=id)``; returns its id. Nothing is reserved: its KV blocks are taken as
    /// its tokens are computed. Raises ``ContextLengthError`` past the context length.
    ///
    /// >>> s = m.new_sequence(max_tokens=256)
    #[pyo3(signature = (max_tokens = None))]
    fn new_sequence(&self, max_tokens: Option<i64>) -> PyResult<usize> {
        let n = match max_tokens {
            Some(n) => positive("max_tokens", n)?,
            None => DEFAULT_SEQUENCE_TOKENS.min(self.config.context_length),
        };
        Ok(self.shared.with_engine(|e| e.new_sequence(n))?)
    }

    /// Releases a sequence's KV blocks.
    ///
    /// >>> m.free_sequence(s)
    fn free_sequence(&self, seq: usize) -> PyResult<()> {
        Ok(self.shared.with_engine(|e| e.free_sequence(seq))?)
    }

    /// Tokens a sequence holds in its KV cache.
    ///
    /// >>> m.sequence_len(s)
    /// 0
    fn sequence_len(&self, seq: usize) -> PyResult<usize> {
        Ok(self.shared.with_engine(|e| e.sequence_len(seq))?)
    }

    fn __repr__(&self) -> String {
        let c = &self.config;
        format!(
            "Model(arch={:?}, n_layers={}, hidden_size={}, vocab_size={}, device={:?})",
            c.arch, c.n_layers, c.hidden_size, c.vocab_size, self.device
        )
    }
}
