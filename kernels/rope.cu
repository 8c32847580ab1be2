// Rotary position embedding, in place, one block per token: pair (a, b) of every head is rotated
// by theta_i = pos / scale * freq_base^(-2i / head_dim). neox != 0 pairs (i, i + head_dim/2)
// (qwen2), else (2i, 2i + 1) (llama's GGUF layout); see RopeStyle in src/backend/mod.rs.
//
// The angle and its sine and cosine are computed in float64 and rounded once, as on the CPU, so
// long positions keep their precision; the rotation itself uses the CPU's float32 operations.
#include "common.cuh"

// x holds x_heads heads a token, y y_heads (0: none): q and k of one layer rotate in one launch.
extern "C" __global__ void rope(float* __restrict__ x, u32 x_heads, float* __restrict__ y, u32 y_heads,
                                const u32* __restrict__ positions, u32 head_dim, float freq_base, float scale, u32 neox) {
    const u32 t = blockIdx.x;
    const u32 half = head_dim / 2;
    const double pos = (double)positions[t] / (double)scale;
    for (u32 idx = threadIdx.x; idx < (x_heads + y_heads) * half; idx += blockDim.x) {
        const u32 h = idx / half, i = idx % half;
        const double inv_freq = pow((double)freq_base, -2.0 * (double)i / (double)head_dim);
        double s, c;
        sincos(pos * inv_freq, &s, &c);
        const float sf = (float)s, cf = (float)c;
        const u32 a = neox ? i : 2 * i;
        const u32 b = neox ? i + half : 2 * i + 1;
        float* hp = h < x_heads ? x + ((u64)t * x_heads + h) * head_dim : y + ((u64)t * y_heads + (h - x_heads)) * head_dim;
        const float x0 = hp[a], x1 = hp[b];
        hp[a] = __fsub_rn(__fmul_rn(x0, cf), __fmul_rn(x1, sf));
        hp[b] = __fadd_rn(__fmul_rn(x0, sf), __fmul_rn(x1, cf));
    }
}
