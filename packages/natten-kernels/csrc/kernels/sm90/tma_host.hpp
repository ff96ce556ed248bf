// Host helpers shared by the SM90 launchers (forward, backward dQ and dK / dV): TMA descriptor encoding
// (cuTensorMapEncodeTiled through the runtime's driver entry point: the library never links
// libcuda), tile parsing, TMA alignment rules and the dilation-1 geometry of a problem.
#pragma once

#include <cuda.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "natten/fna_args.hpp"
#include "natten/fna_backward_args.hpp"
#include "sm80/tile_scheduler.cuh"

namespace natten {
namespace sm90 {

using sm80::Geometry;
using sm80::kRank;

int log2_exact(int x);
bool aligned16(const void* p);
// A stride is usable by TMA if it is a positive multiple of 16 bytes, or the axis has one token.
bool stride_ok(int64_t stride, int64_t extent);
// Tile shape -> log2 per axis (axes >= rank must be 1); false if not a power-of-two box of
// 2^total_log2 tokens.
bool parse_tile(const int* tile, int rank, int log2s[kRank], int total_log2);

// 5-D descriptor of a [B, X, (Y), (Z), heads, dim] tensor (element strides sb, sp[3], sh; dtype 1
// fp16 / 2 bf16) with a box of (min(kernel_dim, 64), 1, tile reversed) (coordinates: params.cuh);
// head-dim columns past `dim` up to the kernel's are zero-filled by TMA.
cudaError_t encode_tensor(CUtensorMap* map, int dtype, const void* ptr, int rank, int64_t batch,
                          const int64_t extent[kRank], int64_t heads, int64_t dim, int kernel_dim, int64_t sb,
                          const int64_t sp[kRank], int64_t sh, const int tile_log2[kRank], const char** detail);

// The four descriptors of the SM90 backward kernels: q and d_out over the query slab (boxes of the
// query tile q_log2, heads H; head dims D and Dv), k and v over the key slab (boxes of kv_log2,
// heads H_kv), all with the kernel head dim's boxes.
cudaError_t encode_backward_inputs(const FnaBackwardArgs& args, int dtype, int kernel_dim, const int q_log2[kRank],
                                   const int kv_log2[kRank], CUtensorMap* q, CUtensorMap* d_o, CUtensorMap* k,
                                   CUtensorMap* v);

// The dilation-1 geometry of `args` (slabs included) with the given query / key tiles (power-of-two
// boxes of 2^q_log2_total / 2^kv_log2_total tokens), finalized (work count). cudaErrorInvalidValue
// for a bad tile or window.
cudaError_t build_geometry(const FnaForwardArgs& args, const int* q_tile, int q_log2_total, const int* kv_tile,
                           int kv_log2_total, Geometry* out);

// Grid size of the persistent SM90 kernels (forward, backward dQ and dK / dV): one CTA per SM,
// each walking its work tiles, or one CTA per work tile when NATTEN_HOPPER_PERSISTENT=0 (read once
// per process) or the SM count of device `dev` is unknown; NATTEN_HOPPER_PERSISTENT=N > 0 caps the
// grid at N CTAs instead (tests: many work tiles per CTA on small problems). Never more than
// num_work. The SM count is cached per device.
int64_t persistent_grid(int64_t num_work, int dev);
// False when NATTEN_HOPPER_PERSISTENT=0 (one CTA per work tile).
bool persistent_enabled();

}  // namespace sm90
}  // namespace natten
