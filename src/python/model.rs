//! `ferrite.Model`: a loaded model with its KV cache, for logits from Python.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use numpy::{PyArray2, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::gguf::PyGgufFile;
use crate::gguf::GgufFile;
use crate::model::{load_model_with, LanguageModel, LoadOptions, LogitsFor, ModelConfig, ModelError, SeqTokens};

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyModel>()?;
    Ok(())
}

/// Room a `new_sequence()` reserves when no `max_tokens` is given (capped at the context length).
const DEFAULT_SEQUENCE_TOKENS: usize = 4096;

/// A Qwen2-family model loaded on a device, with a KV cache shared by its sequences.
///
/// Load with ``Model.load``. ``forward`` returns float32 logits ``[rows, vocab]``; without a
/// sequence it runs the tokens as a fresh sequence; with ``seq=`` (an id from ``new_sequence``)
/// it appends them to that sequence's KV cache, so the sequence can be fed incrementally.
///
/// >>> import ferrite
/// >>> m = ferrite.Model.load(ferrite.fetch_test_model())
/// >>> m.forward([9707, 11, 1879], last_only=True).shape
/// (1, 151936)
/// >>> s = m.new_sequence()
/// >>> _ = m.forward([9707, 11], seq=s); m.forward([1879], seq=s).shape
/// (1, 151936)
/// >>> m.free_sequence(s)
#[pyclass(name = "Model", module = "ferrite", frozen)]
pub struct PyModel {
    model: Mutex<Box<dyn LanguageModel>>,
    config: ModelConfig,
    device: String,
    kv_cache_tokens: usize,
}

impl PyModel {
    /// Runs `f` with exclusive access to the loaded model (for the generator bindings, which
    /// drive the same model and its KV cache). Call it inside `py.detach` for long work.
    pub(crate) fn with_model<R>(&self, f: impl FnOnce(&mut dyn LanguageModel) -> R) -> R {
        // A panic while holding the lock leaves the model as the panic found it; the KV
        // bookkeeping is only updated after a forward completes, so it stays consistent.
        let mut guard = self.model.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        f(guard.as_mut())
    }

    fn run(
        &self,
        py: Python<'_>,
        batch: Vec<(Option<usize>, Vec<u32>)>,
        logits_for: LogitsFor,
    ) -> Result<Vec<f32>, ModelError> {
        py.detach(|| {
            self.with_model(|m| {
                // Fresh sequences for the entries without one, freed whatever happens.
                let mut fresh = Vec::new();
                let mut ids = Vec::with_capacity(batch.len());
                let mut result = Ok(());
                for (seq, tokens) in &batch {
                    match seq {
                        Some(s) => ids.push(*s),
                        None => match m.new_sequence(tokens.len().max(1)) {
                            Ok(s) => {
                                fresh.push(s);
                                ids.push(s);
                            }
                            Err(e) => {
                                result = Err(e);
                                break;
                            }
                        },
                    }
                }
                let out = result.and_then(|_| {
                    let spans: Vec<SeqTokens<'_>> = ids
                        .iter()
                        .zip(&batch)
                        .map(|(&seq_id, (_, tokens))| SeqTokens { seq_id, tokens })
                        .collect();
                    m.forward(&spans, logits_for)
                });
                for s in fresh {
                    let _ = m.free_sequence(s);
                }
                out
            })
        })
    }
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
                super::errors::raise(
                    "ModelError",
                    format!("token id {id} is out of range for a vocabulary of {vocab_size}"),
                )
            })
        })
        .collect()
}

fn to_array<'py>(py: Python<'py>, logits: Vec<f32>, vocab: usize) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let rows = logits.len() / vocab.max(1);
    Ok(numpy::PyArray1::from_vec(py, logits).reshape([rows, vocab])?)
}

#[pymethods]
impl PyModel {
    /// Loads a model from a path or an open ``GgufFile`` onto ``device``: ``"cpu"``, or
    /// ``"cuda"``/``"cuda:N"`` for an NVIDIA GPU (kernels are compiled by NVRTC on first use and
    /// cached under ``~/.cache/ferrite/kernels``; ``ferrite.CudaError`` says what is missing when
    /// CUDA is not usable).
    ///
    /// ``max_batch``: most sequences one ``forward_batch`` may hold. ``kv_cache_tokens``: token
    /// slots of the KV cache shared by all sequences (default: the context length; on the GPU
    /// it takes ``2 * n_layers * kv_cache_tokens * n_kv_heads * head_dim * 4`` bytes).
    /// ``exact_matmul`` (CPU): multiply dequantized float32 weights instead of quantizing
    /// activations to 8 bits like llama.cpp does — slower, closest to a float reference. The GPU
    /// always multiplies the dequantized float32 values, so it matches ``exact_matmul=True``.
    ///
    /// >>> m = ferrite.Model.load(ferrite.fetch_test_model(), device="cpu")
    /// >>> m.config["n_layers"]
    /// 24
    /// >>> g = ferrite.Model.load(ferrite.fetch_test_model(), device="cuda")  # doctest: +SKIP
    #[staticmethod]
    #[pyo3(signature = (path_or_file, device = "cpu", max_batch = 64, kv_cache_tokens = None, exact_matmul = false))]
    fn load(
        py: Python<'_>,
        path_or_file: &Bound<'_, PyAny>,
        device: &str,
        max_batch: usize,
        kv_cache_tokens: Option<usize>,
        exact_matmul: bool,
    ) -> PyResult<PyModel> {
        let file: Arc<GgufFile> = if let Ok(f) = path_or_file.cast::<PyGgufFile>() {
            f.get().file()?
        } else {
            let path: PathBuf = path_or_file.extract().map_err(|_| {
                pyo3::exceptions::PyTypeError::new_err("path_or_file must be a path (str or os.PathLike) or a ferrite.GgufFile")
            })?;
            Arc::new(py.detach(|| GgufFile::open(&path))?)
        };
        let device = device.to_string();
        let options = LoadOptions { kv_cache_tokens, max_batch, exact_matmul };
        let model = py.detach(|| load_model_with(file, &device, options))?;
        let config = model.config().clone();
        let device = model.device();
        Ok(PyModel {
            kv_cache_tokens: kv_cache_tokens.unwrap_or(config.context_length),
            model: Mutex::new(model),
            config,
            device,
        })
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

    /// Token slots of the KV cache shared by all sequences.
    #[getter]
    fn kv_cache_tokens(&self) -> usize {
        self.kv_cache_tokens
    }

    /// Logits for ``token_ids``: float32 ``[len(token_ids), vocab]``, or ``[1, vocab]`` (the
    /// last token) with ``last_only=True``. Without ``seq`` the tokens are a fresh sequence
    /// (positions from 0, nothing kept); with ``seq`` they are appended to that sequence.
    ///
    /// >>> logits = m.forward([9707, 11, 1879])
    /// >>> logits.shape
    /// (3, 151936)
    #[pyo3(signature = (token_ids, last_only = false, seq = None))]
    fn forward<'py>(
        &self,
        py: Python<'py>,
        token_ids: Vec<i64>,
        last_only: bool,
        seq: Option<usize>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let tokens = check_token_ids(token_ids, self.config.vocab_size)?;
        if tokens.is_empty() {
            return Err(pyo3::exceptions::PyValueError::new_err("token_ids is empty"));
        }
        let which = if last_only { LogitsFor::LastToken } else { LogitsFor::AllTokens };
        let logits = self.run(py, vec![(seq, tokens)], which)?;
        to_array(py, logits, self.config.vocab_size)
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
            return Err(pyo3::exceptions::PyValueError::new_err(format!(
                "seqs has {} entries for a batch of {}",
                seqs.len(),
                batch.len()
            )));
        }
        let mut entries = Vec::with_capacity(batch.len());
        let mut rows = Vec::with_capacity(batch.len());
        for (ids, seq) in batch.into_iter().zip(seqs) {
            let tokens = check_token_ids(ids, self.config.vocab_size)?;
            if tokens.is_empty() {
                return Err(pyo3::exceptions::PyValueError::new_err("a sequence in the batch is empty"));
            }
            rows.push(if last_only { 1 } else { tokens.len() });
            entries.push((seq, tokens));
        }
        let which = if last_only { LogitsFor::LastToken } else { LogitsFor::AllTokens };
        let logits = self.run(py, entries, which)?;
        let vocab = self.config.vocab_size;
        let mut out = Vec::with_capacity(rows.len());
        let mut start = 0;
        for r in rows {
            out.push(to_array(py, logits[start * vocab..(start + r) * vocab].to_vec(), vocab)?);
            start += r;
        }
        Ok(out)
    }

    /// Reserves KV-cache room for a sequence of up to ``max_tokens`` tokens (default
    /// ``min(4096, context_length)``) and returns its id, for ``forward(..., seq=id)``.
    /// Raises ``ContextLengthError`` past the context length or when the cache is full.
    ///
    /// >>> s = m.new_sequence(max_tokens=256)
    #[pyo3(signature = (max_tokens = None))]
    fn new_sequence(&self, max_tokens: Option<usize>) -> PyResult<usize> {
        let n = max_tokens.unwrap_or(DEFAULT_SEQUENCE_TOKENS.min(self.config.context_length));
        Ok(self.with_model(|m| m.new_sequence(n))?)
    }

    /// Releases a sequence's KV-cache room.
    ///
    /// >>> m.free_sequence(s)
    fn free_sequence(&self, seq: usize) -> PyResult<()> {
        Ok(self.with_model(|m| m.free_sequence(seq))?)
    }

    /// Tokens a sequence holds in its KV cache.
    ///
    /// >>> m.sequence_len(s)
    /// 0
    fn sequence_len(&self, seq: usize) -> PyResult<usize> {
        Ok(self.with_model(|m| m.sequence_len(seq))?)
    }

    fn __repr__(&self) -> String {
        let c = &self.config;
        format!(
            "Model(arch={:?}, n_layers={}, hidden_size={}, vocab_size={}, device={:?})",
            c.arch, c.n_layers, c.hidden_size, c.vocab_size, self.device
        )
    }
}
