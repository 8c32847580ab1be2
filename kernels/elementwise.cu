// Element-wise ops of the forward pass: SwiGLU, the residual add, bias add, and the gather of the
// rows whose logits are wanted. Grid-stride loops over u64 indices, so any launch covers any size.
// Float operations are the CPU's, in its order (explicit round-to-nearest intrinsics).
#include "common.cuh"

// out = silu(gate) * up = gate / (1 + exp(-gate)) * up
extern "C" __global__ void swiglu(const float* __restrict__ gate, const float* __restrict__ up, u64 n,
                                  float* __restrict__ out) {
    dependent_wait();
    GRID_STRIDE(i, n) {
        const float g = gate[i];
        out[i] = __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), up[i]);
    }
}

// swiglu's values as the cuBLAS path takes them, f16_scaled_bits(value, scale), when only
// ffn_down's f16 GEMM reads them: one launch and a float32 buffer fewer, the same bits.
extern "C" __global__ void swiglu_f16(const float* __restrict__ gate, const float* __restrict__ up, u64 n, float scale,
                                      u16* __restrict__ out) {
    dependent_wait();
    GRID_STRIDE(i, n) {
        const float g = gate[i];
        out[i] = f16_scaled_bits(__fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), up[i]), scale);
    }
}

// x += y
extern "C" __global__ void add_assign(float* __restrict__ x, const float* __restrict__ y, u64 n) {
    dependent_wait();
    GRID_STRIDE(i, n) { x[i] = __fadd_rn(x[i], y[i]); }
}

// y[t][r] += bias[r] over n_rows rows of width
extern "C" __global__ void add_bias(float* __restrict__ y, const float* __restrict__ bias, u32 width, u64 n) {
    dependent_wait();
    GRID_STRIDE(i, n) { y[i] = __fadd_rn(y[i], bias[i % width]); }
}

// add_bias for up to three outputs of one input in one launch (q, k and v on the cuBLAS path):
// y_s[t][r] += bias_s[r] over n_rows rows of width w_s; a segment of width 0 is unused.
extern "C" __global__ void add_biases3(float* __restrict__ y0, const float* __restrict__ b0, u32 w0,
                                       float* __restrict__ y1, const float* __restrict__ b1, u32 w1,
                                       float* __restrict__ y2, const float* __restrict__ b2, u32 w2, u32 n_rows) {
    dependent_wait();
    const u64 n0 = (u64)n_rows * w0, n1 = (u64)n_rows * w1, n2 = (u64)n_rows * w2;
    GRID_STRIDE(i, n0 + n1 + n2) {
        if (i < n0) {
            y0[i] = __fadd_rn(y0[i], b0[i % w0]);
        } else if (i < n0 + n1) {
            const u64 j = i - n0;
            y1[j] = __fadd_rn(y1[j], b1[j % w1]);
        } else {
            const u64 j = i - n0 - n1;
            y2[j] = __fadd_rn(y2[j], b2[j % w2]);
        }
    }
}

// out[i] = x[rows[i]] for i < count, rows of width floats
extern "C" __global__ void gather_rows(const float* __restrict__ x, const u32* __restrict__ rows, u32 count,
                                       u32 width, float* __restrict__ out) {
    dependent_wait();
    GRID_STRIDE(i, (u64)count * width) {
        const u64 r = i / width, c = i % width;
        out[i] = x[(u64)rows[r] * width + c];
    }
}
