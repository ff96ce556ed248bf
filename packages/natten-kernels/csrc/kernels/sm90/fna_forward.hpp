// SM90 (Hopper, sm_90a) fused neighborhood-attention forward: host API.
// Warp-specialized TMA + wgmma kernel with 128-token query tiles and 128-token key tiles (64 at
// head dim 256) (see README.md).
#pragma once

#include <cuda_runtime.h>

#include "natten/fna_args.hpp"

namespace natten {
namespace sm80 {
struct Geometry;
}
namespace sm90 {

constexpr int kTileTokens = 128;

// Consumer schedules (FnaForwardArgs::kernel_schedule / natten_fna_forward_params.kernel_schedule;
// see mainloop_consumer.cuh). 0 = the default (kDefaultSchedule).
constexpr int kScheduleDefault = 0;
constexpr int kScheduleCooperative = 1;
constexpr int kSchedulePingpong = 2;
constexpr int kDefaultSchedule = kSchedulePingpong;
constexpr int kTileLog2 = 7;       // query tiles: 128 tokens; key tiles too, except:
constexpr int kTileLog2KV256 = 6;  // key tiles of 64 tokens at kernel head dim 256
// Cost of a key step that needs a mask relative to one that needs none, for the default tiles
// (sm80::fna_forward_choose_tiles' mask_weight). Fitted on H100 from a sweep of the 14 tilings with
// the fewest visited pairs on hunyuan (fp16, head dim 128; benchmarks/NOTES.md, thirteenth session):
// time ~ unmasked + 1.35 x masked visited pairs, within 2.5% on all 7 tilings it was fitted on.
// With pairs alone the chooser took 2x8x8 / 1x4x32 there (every key tile masked), 7.8% slower than
// 2x8x8 / 2x8x8 (1.7% more pairs, a third of them unmasked).
constexpr double kMaskedStepCost = 1.35;

// Key walks of the forward and the backward dQ kernel rotated on axis 0 (sm80/tile_scheduler.cuh:
// walk_origin) for this problem: NATTEN_HOPPER_WALK, else at most kRotateMaxRounds rounds of the
// persistent grid (fna_forward.cpp).
bool rotate_walks(const natten::sm80::Geometry& g);

// A two-valued switch read from the environment variable `name` (the Hopper measurement flags,
// read per call): 0 when it equals `off`, 1 when it equals `on`, -1 (the automatic rule) otherwise.
int env_choice(const char* name, const char* off, const char* on);

// Was the sm_90a kernel compiled into this build (NATTEN_CUDA_ARCHS contains 90a)?
bool fna_forward_built();

// The kernel head dim that runs (head_dim, head_dim_v): the smallest of 32, 64, 128, 256 holding
// both (TMA zero-fills the columns past each tensor's own head dim); 0 if either is not a multiple
// of 8 in [8, 256].
int kernel_head_dim(int head_dim, int head_dim_v);

// Problem-level support (no device, no pointers): dtype 1/2, kernel_head_dim(head_dim, head_dim_v) != 0.
bool fna_forward_supports(int head_dim, int head_dim_v, int dtype, const char** reason);

// Full support check of one call: fna_forward_supports plus rank, dilation 1, no slabs, 16-byte
// aligned pointers, strides multiples of 8 elements (16 bytes) and positive on axes longer than
// 1, rank 3 with batch > 1 needs batch stride == X * x stride for q, k and v (batch folded into X
// in the TMA descriptor), coordinates within 32 bits. On false, *reason gets a static message.
bool fna_forward_can_run(const natten::FnaForwardArgs& args, int dtype, const char** reason);

// log2 of the key-tile size for these head dims (kTileLog2, or kTileLog2KV256 at kernel head dim 256).
int kv_tile_log2(int head_dim, int head_dim_v);

// Supported (query tile, key tile) pairs for a rank and head dims: every pair of a power-of-two box
// of 128 query tokens and one of 2^kv_tile_log2 key tokens over the first `rank` axes (rank 2:
// 8 x 8 or 8 x 7 pairs, rank 3: 36 x 36 or 36 x 28). 0 for unsupported head dims. Same output
// convention as sm80::fna_forward_tile_configs.
int fna_forward_tile_configs(int rank, int head_dim, int head_dim_v, int* q_tiles /*[n][3]*/,
                             int* kv_tiles /*[n][3]*/, int capacity);

// Default tiles: the SM80 chooser (fewest visited (query, key) pairs) over 128-token boxes.
cudaError_t fna_forward_default_tiles(const natten::FnaForwardArgs& args, int q_tile[3], int kv_tile[3]);

// Runs the forward (args.q_tile / kv_tile must be a listed pair, axes >= rank 1). Returns
// cudaErrorNotSupported when fna_forward_can_run is false or the build has no sm_90a kernel,
// cudaErrorInvalidValue for a bad tile pair, a driver error from building a TMA descriptor
// (cudaErrorInvalidValue / cudaErrorNotSupported; *detail names it), or a launch error.
cudaError_t fna_forward(const natten::FnaForwardArgs& args, int dtype, cudaStream_t stream,
                        const char** detail = nullptr);

}  // namespace sm90
}  // namespace natten
