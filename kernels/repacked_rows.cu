// Repacked weights (repacked.cuh) read back as float32 rows, each element computed exactly as
// the CPU decoder computes it: the embedding gather, and the dequantization of a range of rows
// for the cuBLAS path (prefill). Compiled once per type with -DQTYPE=<snake name>.
#include "repacked.cuh"

#ifndef QTYPE
#error "repacked_rows.cu is compiled with -DQTYPE=<q5_0|q8_0|q4_k|q6_k>"
#endif
typedef FERRITE_CAT(Rp_, QTYPE) Tile;

// out[t] = row tokens[t] of the table, for t < n_tokens: the argument list of embed.cu's
// embed_rows, so the backend launches either the same way. `row_bytes` is unused here (the tile
// geometry follows from `width`). An id past the table writes NaN rather than reading past it
// (the host checks ids before they reach the device).
extern "C" __global__ void embed_rows(const u8* __restrict__ tiles, u64 row_bytes, u32 n_table_rows,
                                      const u32* __restrict__ tokens, u32 n_tokens, u32 width,
                                      float* __restrict__ out) {
    (void)row_bytes;
    dependent_wait();
    const u32 k_tiles = (width + Tile::TILE_COLS - 1) / Tile::TILE_COLS;
    const u64 n = (u64)n_tokens * width;
    const u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 e = (u64)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += stride) {
        const u32 t = (u32)(e / width), c = (u32)(e % width);
        const u32 row = tokens[t];
        out[e] = row < n_table_rows ? rp_element<Tile>(tiles, k_tiles, row, c) : __uint_as_float(0x7fc00000u);
    }
}

// out[(r - row0) * n_cols + c] = W[r][c] for row0 <= r < row0 + n_rows_out.
extern "C" __global__ void dequant_rows(const u8* __restrict__ tiles, u32 k_tiles, u32 row0, u32 n_rows_out, u32 n_cols,
                                        float* __restrict__ out) {
    dependent_wait();
    const u64 n = (u64)n_rows_out * n_cols;
    const u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 e = (u64)blockIdx.x * blockDim.x + threadIdx.x; e < n; e += stride) {
        out[e] = rp_element<Tile>(tiles, k_tiles, row0 + (u32)(e / n_cols), (u32)(e % n_cols));
    }
}
