// Building blocks of the fp32 fused neighborhood-attention kernels (CUDA cores, any SM >= 8.0).
//
// Tiles are the SM80 kernels' 64-token boxes (same Geometry, work decomposition, key-tile walk and
// window math: sm80/tile_scheduler.cuh, natten/window.cuh), so tile choice, configs and slabs are
// shared with fp16 / bf16. A CTA of 256 threads owns a 64 x 64 score tile: thread (ty, tx) =
// (tid / 16, tid % 16) holds rows 4 ty .. 4 ty + 3 and columns tx + 16 j (j < 4). Accumulators
// over a head dim are kept per 32-wide chunk: chunk ch holds columns ch * 32 + tx + 16 e (e < 2).
//
// Operands stream through shared memory in 64 x 32 chunks (row pitch 33 floats: no bank conflicts
// on the row-major reads below), so shared memory does not grow with the head dim (~38 KB for
// every head dim up to 256; no opt-in needed on any SM).
#pragma once

#include <cstdint>

#include "sm80/params.cuh"
#include "sm80/tile_scheduler.cuh"

namespace natten {
namespace simt {

using sm80::kRank;

constexpr int kTile = 64;     // tokens per query / key tile (2^6, the SM80 tile sizes)
constexpr int kThreads = 256;
constexpr int kChunk = 32;    // head-dim columns per shared-memory chunk
constexpr int kLd = kChunk + 1;
constexpr int kLdP = kTile + 1;
constexpr int kRows = 4;      // score rows per thread
constexpr int kCols = 4;      // score columns per thread (tx + 16 j)
constexpr float kLn2 = 0.6931471805599453094f;

static_assert(kThreads == (kTile / kRows) * 16, "16 threads per group of 4 rows");

// Chunks of 32 covering a padded head dim (32 / 64 / 128 / 256 -> 1 / 2 / 4 / 8).
constexpr int chunks_for(int padded_dim) { return padded_dim / kChunk; }

struct Operands {
  float a[kTile * kLd];   // chunk of the row operand (Q, dO, K or V rows)
  float b[kTile * kLd];   // chunk of the column operand / of the second GEMM's B
  float p[kTile * kLdP];  // P, dS, P^T or dS^T of the current tile
};

// Element offset of every token of a tile box in one (batch, head, dilation group) tensor, -1 for
// tokens outside [0, limit) on some axis. origin: the box's first token; log2: its shape.
__device__ __forceinline__ void tile_offsets(int64_t* off, const sm80::GroupTensor& t, const int origin[kRank],
                                             const int log2[kRank], const int limit[kRank], int tid) {
  for (int r = tid; r < kTile; r += kThreads) {
    int c[kRank];
    sm80::tile_coord(r, log2, c);
    bool ok = true;
#pragma unroll
    for (int a = 0; a < kRank; ++a) {
      c[a] += origin[a];
      ok = ok && c[a] >= 0 && c[a] < limit[a];
    }
    off[r] = ok ? t.offset(c) : int64_t(-1);
  }
}

// dst[r][c] = src[off[r] + col0 + c] for the 64 x 32 chunk, 0 for rows with off < 0 and columns
// at or past `dim`. A warp reads 32 consecutive floats of one row.
__device__ __forceinline__ void load_chunk(float* dst, const float* __restrict__ src, const int64_t* off, int col0,
                                           int dim, int tid) {
#pragma unroll
  for (int i = 0; i < kTile * kChunk / kThreads; ++i) {
    const int e = tid + i * kThreads;
    const int r = e / kChunk, c = e % kChunk;
    const int64_t o = off[r];
    const int col = col0 + c;
    dst[r * kLd + c] = (o >= 0 && col < dim) ? __ldg(src + o + col) : 0.f;
  }
}

// acc[i][j] += sum_k a[4 ty + i][k] * b[tx + 16 j][k] over one chunk (scores from row operands).
__device__ __forceinline__ void gemm_rows_chunk(float (&acc)[kRows][kCols], const float* a, const float* b, int ty,
                                                int tx) {
#pragma unroll 8
  for (int k = 0; k < kChunk; ++k) {
    float av[kRows], bv[kCols];
#pragma unroll
    for (int i = 0; i < kRows; ++i) av[i] = a[(kRows * ty + i) * kLd + k];
#pragma unroll
    for (int j = 0; j < kCols; ++j) bv[j] = b[(tx + 16 * j) * kLd + k];
#pragma unroll
    for (int i = 0; i < kRows; ++i)
#pragma unroll
      for (int j = 0; j < kCols; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
  }
}

// acc[i][e] += sum_k p[4 ty + i][k] * b[k][tx + 16 e] (output chunk of P x B, B rows = tile tokens).
__device__ __forceinline__ void gemm_p_chunk(float (&acc)[kRows][2], const float* p, const float* b, int ty, int tx) {
#pragma unroll 8
  for (int k = 0; k < kTile; ++k) {
    float pv[kRows];
#pragma unroll
    for (int i = 0; i < kRows; ++i) pv[i] = p[(kRows * ty + i) * kLdP + k];
    const float b0 = b[k * kLd + tx], b1 = b[k * kLd + tx + 16];
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      acc[i][0] = fmaf(pv[i], b0, acc[i][0]);
      acc[i][1] = fmaf(pv[i], b1, acc[i][1]);
    }
  }
}

// acc[i][j] = sum over the head dim of A[row 4 ty + i] . B[row tx + 16 j]: both operands are row
// tables (off: element offsets, -1 = zero row) of [.., dim] tensors, streamed in 64 x 32 chunks.
// Starts and ends with the CTA in step (the last barrier frees `ops` for the caller).
__device__ __forceinline__ void gemm_rows(float (&acc)[kRows][kCols], Operands& ops, const float* __restrict__ a,
                                          const int64_t* a_off, const float* __restrict__ b, const int64_t* b_off,
                                          int dim, int tid, int ty, int tx) {
#pragma unroll
  for (int i = 0; i < kRows; ++i)
#pragma unroll
    for (int j = 0; j < kCols; ++j) acc[i][j] = 0.f;
  for (int c0 = 0; c0 < dim; c0 += kChunk) {
    load_chunk(ops.a, a, a_off, c0, dim, tid);
    load_chunk(ops.b, b, b_off, c0, dim, tid);
    __syncthreads();
    gemm_rows_chunk(acc, ops.a, ops.b, ty, tx);
    __syncthreads();
  }
}

// acc[ch] += ops.p (64 x 64, the thread's rows) x B[:, chunk ch] for every chunk of the dim, B a
// row table of a [.., dim] tensor (its rows = the 64 columns of ops.p). ops.p must be published
// (barrier) before the call; ends with the CTA in step.
template <int kCh>
__device__ __forceinline__ void gemm_p(float (&acc)[kCh][kRows][2], Operands& ops, const float* __restrict__ b,
                                       const int64_t* b_off, int dim, int tid, int ty, int tx) {
#pragma unroll
  for (int ch = 0; ch < kCh; ++ch) {
    if (ch * kChunk >= dim) break;
    load_chunk(ops.b, b, b_off, ch * kChunk, dim, tid);
    __syncthreads();
    gemm_p_chunk(acc[ch], ops.p, ops.b, ty, tx);
    __syncthreads();
  }
}

// Sum / max over the 16 threads sharing a row group (one half warp).
__device__ __forceinline__ float row_sum16(float x) {
#pragma unroll
  for (int s = 8; s >= 1; s >>= 1) x += __shfl_xor_sync(0xffffffffu, x, s);
  return x;
}
__device__ __forceinline__ float row_max16(float x) {
#pragma unroll
  for (int s = 8; s >= 1; s >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, s));
  return x;
}

// Per-row (or per-column) window of a query of the tile, in key slab coordinates.
struct Windows {
  int start[kTile][kRank];
  int len[kTile][kRank];
};

// Is key `col` of the key tile at kb[] (shape kv_log2) inside window w of query `row`?
__device__ __forceinline__ bool attends(const Windows& w, int row, const int kb[kRank], const int kv_log2[kRank],
                                        int col) {
  int o[kRank];
  sm80::tile_coord(col, kv_log2, o);
#pragma unroll
  for (int a = 0; a < kRank; ++a) o[a] += kb[a];
  return sm80::row_attends(w.start[row], w.len[row], o);
}

// Stores chunk-organized accumulators acc[ch][i][e] (times `mul`) of the thread's rows to the rows
// with off >= 0, columns < dim.
template <int kCh>
__device__ __forceinline__ void store_rows(float* __restrict__ dst, const int64_t* off, const float (&acc)[kCh][kRows][2],
                                           float mul, int dim, int ty, int tx) {
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
    const int64_t o = off[kRows * ty + i];
    if (o < 0) continue;
#pragma unroll
    for (int ch = 0; ch < kCh; ++ch) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int col = ch * kChunk + tx + 16 * e;
        if (col < dim) dst[o + col] = acc[ch][i][e] * mul;
      }
    }
  }
}

}  // namespace simt
}  // namespace natten
