// Element-wise ops of the forward pass: SwiGLU, the residual add, bias add, and the gather of the
// rows whose logits are wanted. Grid-stride loops over u64 indices, so any launch covers any size.
// Float operations are the CPU's, in its order (explicit round-to-nearest intrinsics).
#include "common.cuh"

// Whether n elements of each array go as float4s: n a multiple of 4 and every array 16-byte
// aligned (the backend's buffers always are). Four elements a thread keep a batch's 1.2 M
// gate values (64 rows of a 7B's 18,944) in one wave of the GPU, with four loads in flight each.
__device__ __forceinline__ bool as_float4s(u64 n, const void* a, const void* b, const void* c) {
    return n % 4 == 0 && (((u64)a | (u64)b | (u64)c) & 15) == 0;
}

// out = silu(gate) * up = gate / (1 + exp(-gate)) * up
extern "C" __global__ void swiglu(const float* __restrict__ gate, const float* __restrict__ up, u64 n,
                                  float* __restrict__ out) {
    dependent_wait();
    if (as_float4s(n, gate, up, out)) {
        GRID_STRIDE(i, n / 4) {
            const float4 g = reinterpret_cast<const float4*>(gate)[i], u = reinterpret_cast<const float4*>(up)[i];
            reinterpret_cast<float4*>(out)[i] = make_float4(silu_times(g.x, u.x), silu_times(g.y, u.y), silu_times(g.z, u.z), silu_times(g.w, u.w));
        }
        return;
    }
    GRID_STRIDE(i, n) { out[i] = silu_times(gate[i], up[i]); }
}

// swiglu's values as the cuBLAS path takes them, f16_scaled_bits(value, scale), when only
// ffn_down's f16 GEMM reads them: one launch and a float32 buffer fewer, the same bits. out has
// n_rows rows of width; the rows of gate and up are `stride` floats apart, so that they can be
// the two halves of each row of one stacked gate/up GEMM's output (stride 2 * width: no launch
// to split it first) as well as rows of their own (stride = width).
extern "C" __global__ void swiglu_f16(const float* __restrict__ gate, const float* __restrict__ up, u32 width, u32 stride,
                                      u32 n_rows, float scale, u16* __restrict__ out) {
    dependent_wait();
    const u64 n = (u64)n_rows * width;
    if (width % 4 == 0 && stride % 4 == 0 && as_float4s(n, gate, up, out)) {
        const u32 w4 = width / 4, s4 = stride / 4;
        GRID_STRIDE(i, n / 4) {
            const u64 j = (i / w4) * s4 + i % w4;
            const float4 g = reinterpret_cast<const float4*>(gate)[j], u = reinterpret_cast<const float4*>(up)[j];
            const u32 lo = f16_scaled_bits(silu_times(g.x, u.x), scale) | (u32)f16_scaled_bits(silu_times(g.y, u.y), scale) << 16;
            const u32 hi = f16_scaled_bits(silu_times(g.z, u.z), scale) | (u32)f16_scaled_bits(silu_times(g.w, u.w), scale) << 16;
            reinterpret_cast<uint2*>(out)[i] = make_uint2(lo, hi);
        }
        return;
    }
    GRID_STRIDE(i, n) {
        const u64 j = (i / width) * stride + i % width;
        out[i] = f16_scaled_bits(silu_times(gate[j], up[j]), scale);
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

// A stacked projection's output ([n_rows][w0 + w1 + w2], matmul.rs's stacked_gemm) split into
// its three outputs y_s ([n_rows][w_s]), adding bias_s where given (b_s null: copied) as
// add_biases3 adds it, so the values are those of three GEMMs and add_biases3, but for the
// order of the GEMM's sums. A segment of width 0 is unused.
extern "C" __global__ void split_rows3(const float* __restrict__ stacked, float* __restrict__ y0, const float* __restrict__ b0,
                                       u32 w0, float* __restrict__ y1, const float* __restrict__ b1, u32 w1,
                                       float* __restrict__ y2, const float* __restrict__ b2, u32 w2, u32 n_rows) {
    dependent_wait();
    const u32 width = w0 + w1 + w2;
    GRID_STRIDE(i, (u64)n_rows * width) {
        const u32 t = (u32)(i / width), c = (u32)(i % width);
        const float v = stacked[i];
        if (c < w0) {
            y0[(u64)t * w0 + c] = b0 ? __fadd_rn(v, b0[c]) : v;
        } else if (c < w0 + w1) {
            const u32 r = c - w0;
            y1[(u64)t * w1 + r] = b1 ? __fadd_rn(v, b1[r]) : v;
        } else {
            const u32 r = c - w0 - w1;
            y2[(u64)t * w2 + r] = b2 ? __fadd_rn(v, b2[r]) : v;
        }
    }
}
