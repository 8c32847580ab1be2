//! Any byte string given to the GGUF reader must parse or return an error: no panic, no abort,
//! no allocation sized by an unchecked count. Parsed files are walked completely, and every
//! tensor is dequantized, so the bounds the reader promises are exercised too.
#![no_main]

use ferrite::gguf::GgufFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes(data.to_vec()) else { return };
    for (_, value) in file.metadata() {
        let _ = value.as_array().map(|a| a.len());
    }
    for info in file.tensors() {
        let bytes = file.tensor_bytes(info);
        assert_eq!(bytes.len() as u64, info.n_bytes);
        // Bounded: the fuzzer's inputs are small, so n_elems is too (bytes were checked).
        if info.n_elems <= 1 << 16 {
            let mut out = vec![0f32; info.n_elems as usize];
            let _ = ferrite::quant::dequantize(info.ggml_type, bytes, &mut out);
        }
    }
});
