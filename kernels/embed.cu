// Token embedding: out[t] = dequantize(table row tokens[t]), bit-identical to the CPU path.
// Compiled once per table type (-DQTYPE/-DQ_BLOCK_ELEMS/-DQ_BLOCK_BYTES, see common.cuh).
#include "quant_blocks.cuh"

#ifndef QTYPE
#error "embed.cu is compiled with -DQTYPE=<type> -DQ_BLOCK_ELEMS=<block elements> -DQ_BLOCK_BYTES=<block bytes>"
#endif
#define DEQ FERRITE_CAT(deq_, QTYPE)

// Grid-stride over the n_tokens x width outputs. The host checks every id against the table
// before the batch is uploaded; an id past the table writes NaN rather than reading past it.
extern "C" __global__ void embed_rows(const u8* __restrict__ table, u64 row_bytes, u32 n_table_rows,
                                      const u32* __restrict__ tokens, u32 n_tokens, u32 width,
                                      float* __restrict__ out) {
    dependent_wait();
    const u64 n = (u64)n_tokens * width;
    const u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 e = (u64)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += stride) {
        const u32 t = (u32)(e / width), c = (u32)(e % width);
        const u32 row = tokens[t];
        if (row >= n_table_rows) {
            out[e] = __uint_as_float(0x7fc00000u);
            continue;
        }
        const u8* r = table + (u64)row * row_bytes;
        out[e] = DEQ(r + (u64)(c / Q_BLOCK_ELEMS) * Q_BLOCK_BYTES, (int)(c % Q_BLOCK_ELEMS));
    }
}
