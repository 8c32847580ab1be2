"""Where the scales sit in ggml blocks, for tests that build random valid blocks (shared by
test_dequant.py, test_cuda_dequant.py and synthetic_model.py)."""

from __future__ import annotations

import numpy as np

# Byte offsets of the f16 scale fields inside one block of each supported type. A block's values
# are linear in its scales; random bits there could be inf/NaN, so tests overwrite them.
F16_SCALE_FIELDS: dict[str, tuple[int, ...]] = {
    "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,),
    "Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,),
    "IQ2_XXS": (0,), "IQ2_XS": (0,), "IQ2_S": (0,), "IQ3_XXS": (0,), "IQ3_S": (0,),
    "IQ1_S": (0,), "IQ4_NL": (0,), "IQ4_XS": (0,),
    "TQ1_0": (52,), "TQ2_0": (64,),
}


def set_iq1m_scale(raw: np.ndarray, f16_bits: np.ndarray) -> None:
    """IQ1_M spreads its f16 scale over the top nibbles of the four u16 scale words at bytes
    48..55 (nibble k in the high half of byte 49 + 2k); `raw` is [n_blocks, 56] uint8."""
    h = f16_bits.astype(np.uint32)
    for k, byte in enumerate((49, 51, 53, 55)):
        raw[:, byte] = (raw[:, byte] & 0x0F) | (((h >> (4 * k)) & 0xF) << 4).astype(np.uint8)
