// SM80 (Ampere and newer: A100, H100, B200, ...) fused neighborhood-attention forward.
// mma.sync + cp.async + ldmatrix (CuTe), FlashAttention-2-style online softmax.
#pragma once

#include <cuda_runtime.h>

#include "natten/fna_args.hpp"

namespace natten {
namespace sm80 {

struct Geometry;  // tile_scheduler.cuh

// Runs the forward pass described by `args` on `stream`.
//   dtype: 1 = fp16, 2 = bf16 (q, k, v, out share it; lse is float32; accumulation is fp32).
//   args.q_tile / args.kv_tile: a pair listed by fna_forward_tile_configs for args.rank (entries of
//     axes >= rank are ignored), or any entry <= 0 on an axis < rank to let the kernel choose
//     (fna_forward_default_tiles).
// Slabs (args.global_extent / q_origin / kv_extent / kv_origin): windows on the global grid; the key
// slab must hold every key the query slab attends (checked: cudaErrorInvalidValue otherwise).
// Returns cudaSuccess, cudaErrorNotSupported (dtype / head dims, see fna_forward_supports),
// cudaErrorInvalidValue (problem or tile config the caller should have rejected), or a launch error.
cudaError_t fna_forward(const natten::FnaForwardArgs& args, int dtype /*1 = fp16, 2 = bf16*/,
                        cudaStream_t stream);

// Supported: dtype 1 or 2; head_dim and head_dim_v in [8, 256], multiples of 8 (they may differ).
// On false, *reason (if reason != nullptr) gets a static message.
bool fna_forward_supports(int head_dim, int head_dim_v, int dtype, const char** reason);

// Lists the supported (query tile, key tile) shapes for a rank: every pair of power-of-two boxes of
// 64 tokens over the first `rank` axes (axes >= rank are 1). Entry i is q_tiles[3*i .. 3*i+2] and
// kv_tiles[3*i .. 3*i+2]. Writes at most `capacity` entries; returns the total number of configs
// (1 for rank 1, 49 for rank 2, 784 for rank 3), or 0 if rank / head_dim is unsupported.
int fna_forward_tile_configs(int rank, int head_dim, int* q_tiles /*[n][3]*/, int* kv_tiles /*[n][3]*/,
                             int capacity);

// The forward's 128-token query tiles with 64-token key tiles (4 warps of 32 rows; fna_forward.cu),
// listed like fna_forward_tile_configs, for dtype 1 (fp16) / 2 (bf16) where the padded max(D, Dv) is
// 128; 0 configs otherwise (fp32, other head dims). The backward keeps 64-token tiles.
int fna_forward_q128_tile_configs(int rank, int head_dim, int head_dim_v, int dtype, int* q_tiles /*[n][3]*/,
                                  int* kv_tiles /*[n][3]*/, int capacity);

// The same list for query boxes of 2^tile_log2 tokens and key boxes of 2^kv_log2 (0..7; kv_log2 < 0:
// the same as tile_log2; the SM90 kernel lists its boxes through it): every pair of power-of-two
// boxes over the first `rank` axes, in the chooser's order. Returns 0 for an invalid rank / log2.
int fna_forward_tile_pairs(int rank, int tile_log2, int* q_tiles /*[n][3]*/, int* kv_tiles /*[n][3]*/,
                           int capacity, int kv_log2 = -1);

// The tile pair fna_forward uses when the caller leaves the choice to it: minimizes the number of
// visited (query, key) pairs (tile-visit bound of PERF-NOTES.md) for this problem's per-axis
// extents, kernel sizes, strides, dilations and causal flags (over the query slab's tokens when
// slabs are given). Returns cudaErrorInvalidValue for an invalid rank / extents.
cudaError_t fna_forward_default_tiles(const natten::FnaForwardArgs& args, int q_tile[3], int kv_tile[3]);

// True when the per-axis problem is valid: extents, origins and slabs inside the global grid, kernel
// / stride / dilation in range, and the key slab holding every key the query slab attends (the
// fused kernels never read outside it). Shared with the SM90 kernel's host checks.
bool fna_forward_axes_valid(const natten::FnaForwardArgs& args);

// The (query, key) pairs the tiled forward visits with fna_forward_default_tiles' tiles (the
// chooser's own count, from its per-thread cache); 0 for an invalid or empty problem.
double fna_forward_default_pairs(const natten::FnaForwardArgs& args);

// The visited (query, key) pairs of fna_forward_choose_tiles' tiling for query tiles of 2^tile_log2
// tokens and key tiles of 2^kv_log2 (mask weight 1), and *full of them in key tiles that need no
// mask; false for an invalid or empty problem. (The SM90 dQ kernel's key-tile choice, sm90/bwd_dq.cpp.)
bool fna_forward_tiling_pairs(const natten::FnaForwardArgs& args, int tile_log2, int kv_log2, double* all,
                              double* full);

// The same chooser for query tiles of 2^tile_log2 tokens and key tiles of 2^kv_log2 (0..7; kv_log2 <
// 0: the same; the SM90 kernel uses 7 = 128 tokens, and key tiles of 64 at head dim 256).
// mask_weight: the cost of a visited pair in a key tile that needs a mask, relative to one that needs
// none (1: the chooser minimizes visited pairs).
cudaError_t fna_forward_choose_tiles(const natten::FnaForwardArgs& args, int tile_log2, int q_tile[3],
                                     int kv_tile[3], int kv_log2 = -1, double mask_weight = 1.0);

// Tiles for the backward's key-parallel walk (dK / dV kernels: key tiles of 2^kv_log2 tokens on an
// aligned grid, each visiting the query tiles of 2^q_log2 tokens that attend it): the tiling with the
// fewest visited pairs of that walk, which differs from the query walk's count that
// fna_forward_choose_tiles minimizes (a ragged or window-straddling key tile costs whole query
// tiles). Same contract otherwise (no mask weight).
cudaError_t key_walk_choose_tiles(const natten::FnaForwardArgs& args, int q_log2, int kv_log2, int q_tile[3],
                                  int kv_tile[3]);

// The query-parallel kernel geometry of `args` (shared by the forward and the backward's dQ and
// dK / dV kernels): normalized axes (rank < 3 padded), slabs, tiles (the caller's, else
// fna_forward_default_tiles'), work count. *empty: nothing to compute (zero batch, heads or query
// extent; *geo untouched). cudaErrorInvalidValue for an invalid problem or tile shape, or a key
// slab that does not hold every key the query slab attends.
// The forward's tiles when the caller gives none: fna_forward_default_tiles, or at head dim 128
// (fp16 / bf16) 128-token query tiles with 64-token key tiles where they visit at most 1.25x the
// pairs (fna_forward.cu, use_q128). dtype: 1 fp16, 2 bf16, 3 fp32.
cudaError_t fna_forward_auto_tiles(const natten::FnaForwardArgs& args, int dtype, int q_tile[3], int kv_tile[3]);
cudaError_t fna_forward_geometry(const natten::FnaForwardArgs& args, Geometry* geo, bool* empty, int q_log2_total = 6);

}  // namespace sm80
}  // namespace natten
