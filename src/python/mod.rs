//! The Python bindings: the only place pyo3 appears. Converts types and errors; releases the GIL
//! around long work.

mod cuda;
mod dlpack;
mod engine;
mod errors;
mod generator;
mod gguf;
mod model;
mod results;
mod sampling;
mod tokenizer;

use pyo3::prelude::*;

#[pymodule]
fn _ferrite(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    gguf::register(m)?;
    model::register(m)?;
    tokenizer::register(m)?;
    sampling::register(m)?;
    engine::register(m)?;
    results::register(m)?;
    generator::register(m)?;
    cuda::register(m)?;
    dlpack::register(m)?;
    Ok(())
}
