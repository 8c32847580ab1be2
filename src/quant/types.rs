//! The ggml tensor type ids as stored in GGUF tensor infos, with their block geometry.

use std::fmt;

/// The one table of ggml types: variant (the name ggml and gguf-py use), GGUF id, the
/// snake-case name of its decoder in ggml's C code and in kernels/ (`deq_q4_k`,
/// `dequant_q4_k`), elements per block and bytes per block. Everything per-type that is only
/// geometry or naming is derived from it; the GPU kernels' list of block types
/// (`FERRITE_BLOCK_TYPES` in kernels/quant_blocks.cuh) is checked against it by a test.
macro_rules! ggml_type_table {
    ($( $variant:ident = $id:literal, $snake:literal, $elems:literal, $bytes:literal; )*) => {
        /// A ggml tensor type. The discriminant is the id stored in a GGUF file.
        #[allow(non_camel_case_types)]
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u32)]
        pub enum GgmlType {
            $( $variant = $id, )*
        }

        impl GgmlType {
            /// Every type this crate knows, in id order.
            pub const ALL: [GgmlType; [$( GgmlType::$variant ),*].len()] = [$( GgmlType::$variant ),*];

            /// The name ggml and gguf-py use (`"Q4_K"`, `"IQ2_XXS"`, `"BF16"`).
            pub fn name(self) -> &'static str {
                match self {
                    $( GgmlType::$variant => stringify!($variant), )*
                }
            }

            /// The lower-case identifier of the type in ggml's C code and in kernels/
            /// (`"q4_k"`, `"iq2_xxs"`, `"bf16"`).
            pub fn snake_name(self) -> &'static str {
                match self {
                    $( GgmlType::$variant => $snake, )*
                }
            }

            /// Elements per block.
            pub fn block_elems(self) -> usize {
                match self {
                    $( GgmlType::$variant => $elems, )*
                }
            }

            /// Bytes per block.
            pub fn block_bytes(self) -> usize {
                match self {
                    $( GgmlType::$variant => $bytes, )*
                }
            }
        }
    };
}

ggml_type_table! {
    F32 = 0, "f32", 1, 4;
    F16 = 1, "f16", 1, 2;
    Q4_0 = 2, "q4_0", 32, 18;
    Q4_1 = 3, "q4_1", 32, 20;
    Q5_0 = 6, "q5_0", 32, 22;
    Q5_1 = 7, "q5_1", 32, 24;
    Q8_0 = 8, "q8_0", 32, 34;
    Q8_1 = 9, "q8_1", 32, 36;
    Q2_K = 10, "q2_k", 256, 84;
    Q3_K = 11, "q3_k", 256, 110;
    Q4_K = 12, "q4_k", 256, 144;
    Q5_K = 13, "q5_k", 256, 176;
    Q6_K = 14, "q6_k", 256, 210;
    Q8_K = 15, "q8_k", 256, 292;
    IQ2_XXS = 16, "iq2_xxs", 256, 66;
    IQ2_XS = 17, "iq2_xs", 256, 74;
    IQ3_XXS = 18, "iq3_xxs", 256, 98;
    IQ1_S = 19, "iq1_s", 256, 50;
    IQ4_NL = 20, "iq4_nl", 32, 18;
    IQ3_S = 21, "iq3_s", 256, 110;
    IQ2_S = 22, "iq2_s", 256, 82;
    IQ4_XS = 23, "iq4_xs", 256, 136;
    I8 = 24, "i8", 1, 1;
    I16 = 25, "i16", 1, 2;
    I32 = 26, "i32", 1, 4;
    I64 = 27, "i64", 1, 8;
    F64 = 28, "f64", 1, 8;
    IQ1_M = 29, "iq1_m", 256, 56;
    BF16 = 30, "bf16", 1, 2;
    TQ1_0 = 34, "tq1_0", 256, 54;
    TQ2_0 = 35, "tq2_0", 256, 66;
    MXFP4 = 39, "mxfp4", 32, 17;
    NVFP4 = 40, "nvfp4", 64, 36;
    Q1_0 = 41, "q1_0", 128, 18;
}

impl GgmlType {
    /// The type with GGUF id `id`; `None` for ids that were never assigned or were removed
    /// from ggml (4, 5, 31..=33 and 36..=38: old Q4_2/Q4_3 and the repacked ARM layouts).
    pub fn from_id(id: u32) -> Option<GgmlType> {
        GgmlType::ALL.iter().copied().find(|t| *t as u32 == id)
    }

    pub fn id(self) -> u32 {
        self as u32
    }

    /// The type named `name` (case-insensitive), as `name()` spells it.
    pub fn from_name(name: &str) -> Option<GgmlType> {
        GgmlType::ALL.iter().copied().find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// Bytes that `n_elems` elements occupy, or `None` when `n_elems` is not a whole number of
    /// blocks or the size overflows.
    pub fn bytes_for(self, n_elems: u64) -> Option<u64> {
        let per = self.block_elems() as u64;
        if !n_elems.is_multiple_of(per) {
            return None;
        }
        (n_elems / per).checked_mul(self.block_bytes() as u64)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_removed_ids_are_unknown() {
        for t in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
            assert_eq!(GgmlType::from_name(t.name()), Some(t));
        }
        for removed in [4, 5, 31, 32, 33, 36, 37, 38, 42, 1000] {
            assert_eq!(GgmlType::from_id(removed), None);
        }
    }

    #[test]
    fn table_is_in_id_order_with_consistent_names() {
        assert_eq!(GgmlType::ALL.len(), 34);
        for w in GgmlType::ALL.windows(2) {
            assert!(w[0].id() < w[1].id(), "{} before {}", w[0], w[1]);
        }
        for t in GgmlType::ALL {
            assert_eq!(t.snake_name(), t.name().to_ascii_lowercase());
        }
        assert_eq!((GgmlType::Q4_K.block_elems(), GgmlType::Q4_K.block_bytes()), (256, 144));
        assert_eq!((GgmlType::Q5_0.block_elems(), GgmlType::Q5_0.block_bytes()), (32, 22));
    }

    #[test]
    fn bytes_for_requires_whole_blocks() {
        assert_eq!(GgmlType::Q4_K.bytes_for(512), Some(288));
        assert_eq!(GgmlType::Q4_K.bytes_for(896), None);
        assert_eq!(GgmlType::Q5_0.bytes_for(896), Some(28 * 22));
        assert_eq!(GgmlType::F32.bytes_for(u64::MAX), None);
    }
}
