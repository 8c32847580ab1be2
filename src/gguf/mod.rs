//! The GGUF container: header, metadata, tensor infos and the tensor data section.

mod error;
mod reader;
mod value;
pub mod writer;

pub use error::GgufError;
pub use reader::{GgufFile, TensorInfo};
pub use value::{MetaValue, ValueType};
