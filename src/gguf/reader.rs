//! Parsing and validating a GGUF file. Every count, length and offset is checked against the
//! bytes that remain before anything is allocated from it: a GGUF file is untrusted input.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::error::GgufError;
use super::value::{MetaValue, ValueType};
use crate::quant::GgmlType;

const MAGIC: [u8; 4] = *b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;
/// Nested metadata arrays occur in practice one level deep; beyond this we refuse rather than
/// recurse without bound.
const MAX_ARRAY_DEPTH: usize = 8;

/// Where a tensor's blocks live and what they are.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` (ne0) is the contiguous row length in elements.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Offset of the first block from the start of the data section, in bytes.
    pub offset_bytes: u64,
    pub n_bytes: u64,
    pub n_elems: u64,
}

impl TensorInfo {
    /// numpy order (dims reversed): `[ne1, ne0]` for a matrix.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Elements per row (ne0).
    pub fn row_elems(&self) -> usize {
        self.dims.first().copied().unwrap_or(1) as usize
    }

    /// Rows: the product of every dimension but the first.
    pub fn n_rows(&self) -> usize {
        self.dims.iter().skip(1).product::<u64>() as usize
    }
}

enum Storage {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// An open GGUF file: parsed metadata and tensor infos over a memory map of the whole file.
pub struct GgufFile {
    path: Option<PathBuf>,
    storage: Storage,
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, MetaValue)>,
    metadata_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("n_metadata", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Memory-maps and parses `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        let path = path.as_ref().to_path_buf();
        let io = |source| GgufError::Io { path: path.clone(), source };
        // Only a regular file can be mapped: a directory would fail at the map with "No such
        // device", and opening a FIFO would block.
        let kind = std::fs::metadata(&path).map_err(io)?.file_type();
        if !kind.is_file() {
            let what = if kind.is_dir() { "is a directory" } else { "is not a regular file" };
            return Err(io(std::io::Error::other(format!("{what}, not a GGUF file"))));
        }
        let file = File::open(&path).map_err(io)?;
        // SAFETY: the map is read-only; a file truncated by another process while mapped can
        // still fault, the same contract every mmap-based loader (llama.cpp, safetensors) has.
        let mmap = unsafe { Mmap::map(&file) }.map_err(io)?;
        let mut parsed = GgufFile::parse(Storage::Mapped(mmap))
            .map_err(|e| GgufError::InFile { path: path.clone(), source: Box::new(e) })?;
        parsed.path = Some(path);
        Ok(parsed)
    }

    /// Parses a GGUF image held in memory (tests, fuzzing, files built on the fly).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
        GgufFile::parse(Storage::Owned(bytes))
    }

    fn parse(storage: Storage) -> Result<GgufFile, GgufError> {
        let parsed = Parser::new(storage.bytes()).parse()?;
        Ok(GgufFile {
            path: None,
            storage,
            version: parsed.version,
            alignment: parsed.alignment,
            data_offset: parsed.data_offset,
            metadata_index: parsed.metadata.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)).collect(),
            metadata: parsed.metadata,
            tensor_index: parsed.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect(),
            tensors: parsed.tensors,
        })
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
    pub fn version(&self) -> u32 {
        self.version
    }
    pub fn alignment(&self) -> u64 {
        self.alignment
    }
    /// File offset of the tensor data section, in bytes.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }
    pub fn file_len(&self) -> u64 {
        self.storage.bytes().len() as u64
    }
    /// The whole file image.
    pub fn bytes(&self) -> &[u8] {
        self.storage.bytes()
    }

    /// Metadata in file order.
    pub fn metadata(&self) -> &[(String, MetaValue)] {
        &self.metadata
    }
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata_index.get(key).map(|&i| &self.metadata[i].1)
    }

    pub fn require(&self, key: &str) -> Result<&MetaValue, GgufError> {
        self.get(key).ok_or_else(|| GgufError::NoSuchKey(key.to_string()))
    }
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>, GgufError> {
        self.typed(key, "unsigned integer", MetaValue::as_u64)
    }
    pub fn get_f64(&self, key: &str) -> Result<Option<f64>, GgufError> {
        self.typed(key, "number", MetaValue::as_f64)
    }
    pub fn get_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        self.typed(key, "string", MetaValue::as_str)
    }
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        self.typed(key, "bool", MetaValue::as_bool)
    }
    pub fn get_array(&self, key: &str) -> Result<Option<&[MetaValue]>, GgufError> {
        self.typed(key, "array", MetaValue::as_array)
    }

    /// `None` when the key is absent; an error when it is present with the wrong type.
    fn typed<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        convert: impl Fn(&'a MetaValue) -> Option<T>,
    ) -> Result<Option<T>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => convert(v).map(Some).ok_or_else(|| GgufError::WrongValueType {
                key: key.to_string(),
                expected,
                found: v.value_type().name(),
            }),
        }
    }

    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }
    pub fn tensor_info(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.tensor_index
            .get(name)
            .map(|&i| &self.tensors[i])
            .ok_or_else(|| GgufError::NoSuchTensor(name.to_string()))
    }

    /// The block bytes of `info`, borrowed from the map (bounds were checked at open).
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        let start = (self.data_offset + info.offset_bytes) as usize;
        &self.storage.bytes()[start..start + info.n_bytes as usize]
    }
}

struct Parsed {
    version: u32,
    alignment: u64,
    data_offset: u64,
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<TensorInfo>,
}

/// A cursor over the file image; every read is bounds-checked.
struct Parser<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Parser { buf, pos: 0 }
    }

    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                offset: self.pos as u64,
                what: what(),
                needed: n,
                available: self.remaining(),
            });
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.buf[start..self.pos])
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], GgufError> {
        let bytes = self.take(N as u64, what)?;
        Ok(bytes.try_into().expect("take returned N bytes"))
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Rejects a count whose elements, at `min_bytes` each, cannot fit in what remains.
    fn check_count(&self, count: u64, min_bytes: u64, what: &dyn Fn() -> String) -> Result<(), GgufError> {
        match count.checked_mul(min_bytes) {
            Some(total) if total <= self.remaining() => Ok(()),
            _ => Err(GgufError::CountTooLarge {
                offset: self.pos as u64,
                what: what(),
                count,
                remaining: self.remaining(),
            }),
        }
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, GgufError> {
        let len = self.u64(&|| format!("length of {}", what()))?;
        let start = self.pos as u64;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| GgufError::InvalidUtf8 { offset: start, what: what() })
    }

    fn parse(mut self) -> Result<Parsed, GgufError> {
        let magic: [u8; 4] = self.array(&|| "magic".into())?;
        if magic != MAGIC {
            return Err(GgufError::BadMagic { found: magic });
        }
        let version = self.u32(&|| "version".into())?;
        match version {
            2 | 3 => {}
            1 => return Err(GgufError::UnsupportedVersion { version, hint: " (version 1, from 2023, used 32-bit counts; convert the file again)" }),
            v if v.swap_bytes() <= 3 => {
                return Err(GgufError::UnsupportedVersion { version, hint: " (this looks like a big-endian GGUF; ferrite reads little-endian files)" })
            }
            _ => return Err(GgufError::UnsupportedVersion { version, hint: "" }),
        }
        let n_tensors = self.u64(&|| "tensor count".into())?;
        let n_kv = self.u64(&|| "metadata count".into())?;
        // Smallest metadata entry: key length (8) + value type (4) + a one-byte value.
        self.check_count(n_kv, 8 + 4 + 1, &|| "metadata entry".into())?;

        let mut metadata: Vec<(String, MetaValue)> = Vec::with_capacity(n_kv as usize);
        let mut seen_keys: HashMap<String, ()> = HashMap::with_capacity(n_kv as usize);
        for i in 0..n_kv {
            let key_offset = self.pos as u64;
            let key = self.string(&|| format!("key of metadata entry {i}"))?;
            if seen_keys.insert(key.clone(), ()).is_some() {
                return Err(GgufError::DuplicateKey { offset: key_offset, key });
            }
            let type_offset = self.pos as u64;
            let type_id = self.u32(&|| format!("value type of {key:?}"))?;
            let ty = ValueType::from_id(type_id)
                .ok_or_else(|| GgufError::UnknownValueType { offset: type_offset, key: key.clone(), type_id })?;
            let value = self.value(ty, &key, 0)?;
            metadata.push((key, value));
        }

        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, v)) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => return Err(GgufError::BadAlignment { value: v.as_u64().unwrap_or(0) }),
            },
        };

        // Smallest tensor info: name length (8) + n_dims (4) + type (4) + offset (8).
        self.check_count(n_tensors, 8 + 4 + 4 + 8, &|| "tensor info".into())?;
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        let mut seen_tensors: HashMap<String, ()> = HashMap::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let info = self.tensor_info(i, alignment)?;
            if seen_tensors.insert(info.name.clone(), ()).is_some() {
                return Err(GgufError::DuplicateTensor { tensor: info.name });
            }
            tensors.push(info);
        }

        let data_offset = (self.pos as u64).div_ceil(alignment) * alignment;
        let file_len = self.buf.len() as u64;
        for t in &tensors {
            let start = data_offset.checked_add(t.offset_bytes);
            let end = start.and_then(|s| s.checked_add(t.n_bytes));
            match (start, end) {
                (Some(_), Some(end)) if end <= file_len => {}
                _ => {
                    return Err(GgufError::TensorOutOfBounds {
                        tensor: t.name.clone(),
                        start: start.unwrap_or(u64::MAX),
                        end: end.unwrap_or(u64::MAX),
                        file_len,
                    })
                }
            }
        }
        Ok(Parsed { version, alignment, data_offset, metadata, tensors })
    }

    fn value(&mut self, ty: ValueType, key: &str, depth: usize) -> Result<MetaValue, GgufError> {
        let what = || format!("value of {key:?}");
        Ok(match ty {
            ValueType::U8 => MetaValue::U8(self.array::<1>(&what)?[0]),
            ValueType::I8 => MetaValue::I8(self.array::<1>(&what)?[0] as i8),
            ValueType::U16 => MetaValue::U16(u16::from_le_bytes(self.array(&what)?)),
            ValueType::I16 => MetaValue::I16(i16::from_le_bytes(self.array(&what)?)),
            ValueType::U32 => MetaValue::U32(self.u32(&what)?),
            ValueType::I32 => MetaValue::I32(i32::from_le_bytes(self.array(&what)?)),
            ValueType::F32 => MetaValue::F32(f32::from_le_bytes(self.array(&what)?)),
            ValueType::U64 => MetaValue::U64(self.u64(&what)?),
            ValueType::I64 => MetaValue::I64(i64::from_le_bytes(self.array(&what)?)),
            ValueType::F64 => MetaValue::F64(f64::from_le_bytes(self.array(&what)?)),
            ValueType::Bool => {
                let offset = self.pos as u64;
                match self.array::<1>(&what)?[0] {
                    0 => MetaValue::Bool(false),
                    1 => MetaValue::Bool(true),
                    b => {
                        return Err(GgufError::BadValue {
                            offset,
                            key: key.to_string(),
                            problem: format!("bool byte is {b}, not 0 or 1"),
                        })
                    }
                }
            }
            ValueType::String => MetaValue::String(self.string(&what)?),
            ValueType::Array => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::NestingTooDeep { offset: self.pos as u64, key: key.to_string(), max_depth: MAX_ARRAY_DEPTH });
                }
                let type_offset = self.pos as u64;
                let elem_id = self.u32(&|| format!("element type of {key:?}"))?;
                let elem = ValueType::from_id(elem_id).ok_or_else(|| GgufError::UnknownValueType {
                    offset: type_offset,
                    key: key.to_string(),
                    type_id: elem_id,
                })?;
                let count = self.u64(&|| format!("element count of {key:?}"))?;
                self.check_count(count, elem.min_bytes(), &|| format!("array {key:?} element"))?;
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                MetaValue::Array(elem, items)
            }
        })
    }

    fn tensor_info(&mut self, index: u64, alignment: u64) -> Result<TensorInfo, GgufError> {
        let name = self.string(&|| format!("name of tensor {index}"))?;
        let bad = |problem: String| GgufError::BadTensor { tensor: name.clone(), problem };
        let n_dims = self.u32(&|| format!("dimension count of tensor {name:?}"))?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(bad(format!("{n_dims} dimensions (ggml allows 1 to {MAX_DIMS})")));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(self.u64(&|| format!("dimensions of tensor {name:?}"))?);
        }
        if let Some(d) = dims.iter().find(|&&d| d == 0 || d > i64::MAX as u64) {
            return Err(bad(format!("dimension {d} in {dims:?} is out of range")));
        }
        let n_elems = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d).filter(|&n| n <= i64::MAX as u64))
            .ok_or_else(|| bad(format!("dimensions {dims:?} overflow a 64-bit element count")))?;
        let type_id = self.u32(&|| format!("type of tensor {name:?}"))?;
        let ggml_type = GgmlType::from_id(type_id)
            .ok_or_else(|| GgufError::UnknownTensorType { tensor: name.clone(), type_id })?;
        if dims[0] % ggml_type.block_elems() as u64 != 0 {
            return Err(bad(format!(
                "row length {} is not a multiple of the {}-element blocks of {}",
                dims[0],
                ggml_type.block_elems(),
                ggml_type
            )));
        }
        let n_bytes = ggml_type
            .bytes_for(n_elems)
            .ok_or_else(|| bad(format!("{n_elems} elements of {ggml_type} overflow a 64-bit byte size")))?;
        let offset_bytes = self.u64(&|| format!("data offset of tensor {name:?}"))?;
        if offset_bytes % alignment != 0 {
            return Err(bad(format!("data offset {offset_bytes} is not a multiple of the alignment {alignment}")));
        }
        Ok(TensorInfo { name, dims, ggml_type, offset_bytes, n_bytes, n_elems })
    }
}
