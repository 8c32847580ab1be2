//! Building GGUF images in memory: for tests, fuzz seeds and tools that write small models.

use super::value::{MetaValue, ValueType};
use crate::quant::GgmlType;

/// Collects metadata and tensors, then lays them out as a GGUF v3 image.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<(String, Vec<u64>, GgmlType, Vec<u8>)>,
    alignment: u64,
}

impl GgufWriter {
    pub fn new() -> Self {
        GgufWriter { alignment: 32, ..Default::default() }
    }

    pub fn kv(mut self, key: &str, value: MetaValue) -> Self {
        if key == "general.alignment" {
            if let Some(a) = value.as_u64() {
                self.alignment = a;
            }
        }
        self.metadata.push((key.to_string(), value));
        self
    }

    /// `dims` in ggml order (row length first); `data` must be the tensor's whole block bytes.
    pub fn tensor(mut self, name: &str, dims: &[u64], ty: GgmlType, data: Vec<u8>) -> Self {
        self.tensors.push((name.to_string(), dims.to_vec(), ty, data));
        self
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"GGUF");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            write_str(&mut out, key);
            out.extend_from_slice(&(value.value_type() as u32).to_le_bytes());
            write_value(&mut out, value);
        }
        let align = self.alignment.max(1);
        let mut offset = 0u64;
        let mut offsets = Vec::with_capacity(self.tensors.len());
        for (name, dims, ty, data) in &self.tensors {
            write_str(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&ty.id().to_le_bytes());
            out.extend_from_slice(&offset.to_le_bytes());
            offsets.push(offset);
            offset = (offset + data.len() as u64).div_ceil(align) * align;
        }
        let data_start = (out.len() as u64).div_ceil(align) * align;
        out.resize(data_start as usize, 0);
        for ((_, _, _, data), off) in self.tensors.iter().zip(offsets) {
            out.resize((data_start + off) as usize, 0);
            out.extend_from_slice(data);
        }
        out
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn write_value(out: &mut Vec<u8>, value: &MetaValue) {
    match value {
        MetaValue::U8(v) => out.push(*v),
        MetaValue::I8(v) => out.push(*v as u8),
        MetaValue::U16(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I16(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::U32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::F32(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::Bool(v) => out.push(*v as u8),
        MetaValue::String(s) => write_str(out, s),
        MetaValue::U64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::I64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::F64(v) => out.extend_from_slice(&v.to_le_bytes()),
        MetaValue::Array(elem, items) => {
            out.extend_from_slice(&(*elem as u32).to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                debug_assert_eq!(item.value_type(), *elem);
                write_value(out, item);
            }
        }
    }
}

/// Convenience for string arrays (vocabularies, merges).
pub fn string_array<S: AsRef<str>>(items: &[S]) -> MetaValue {
    MetaValue::Array(ValueType::String, items.iter().map(|s| MetaValue::String(s.as_ref().to_string())).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgufFile;

    #[test]
    fn written_image_reads_back() {
        let data: Vec<u8> = (0..8u32).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let img = GgufWriter::new()
            .kv("general.architecture", MetaValue::String("qwen2".into()))
            .kv("nested", MetaValue::Array(ValueType::Array, vec![MetaValue::Array(ValueType::U8, vec![MetaValue::U8(7)])]))
            .kv("vocab", string_array(&["a", "b"]))
            .tensor("t", &[4, 2], GgmlType::F32, data.clone())
            .tensor("u", &[2], GgmlType::F32, data[..8].to_vec())
            .to_bytes();
        let f = GgufFile::from_bytes(img).unwrap();
        assert_eq!(f.get_str("general.architecture").unwrap(), Some("qwen2"));
        assert_eq!(f.get_array("vocab").unwrap().unwrap().len(), 2);
        let t = f.tensor_info("t").unwrap();
        assert_eq!(t.shape(), vec![2, 4]);
        assert_eq!(f.tensor_bytes(t), &data[..]);
        assert_eq!(f.tensor_info("u").unwrap().offset_bytes % 32, 0);
        assert!(f.get_u64("general.architecture").is_err());
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let img = GgufWriter::new()
            .kv("k", MetaValue::String("v".into()))
            .tensor("t", &[4], GgmlType::F32, vec![0; 16])
            .to_bytes();
        for len in 0..img.len() {
            assert!(GgufFile::from_bytes(img[..len].to_vec()).is_err(), "prefix of {len} bytes parsed");
        }
    }
}
