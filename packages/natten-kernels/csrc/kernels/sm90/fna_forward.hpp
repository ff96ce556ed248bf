// SM90 (Hopper, sm_90a) fused neighborhood-attention forward: host API.
// Warp-specialized TMA + wgmma kernel with 128-token query and key tiles (see README.md).
#pragma once

#include <cuda_runtime.h>

#include "natten/fna_args.hpp"

namespace natten {
namespace sm90 {

constexpr int kTileTokens = 128;

// Consumer schedules (FnaForwardArgs::kernel_schedule / natten_fna_forward_params.kernel_schedule;
// see mainloop_consumer.cuh). 0 = the default (kDefaultSchedule).
constexpr int kScheduleDefault = 0;
constexpr int kScheduleCooperative = 1;
constexpr int kSchedulePingpong = 2;
constexpr int kDefaultSchedule = kSchedulePingpong;
constexpr int kTileLog2 = 7;

// Was the sm_90a kernel compiled into this build (NATTEN_CUDA_ARCHS contains 90a)?
bool fna_forward_built();

// Problem-level support (no device, no pointers): dtype 1/2, head_dim == head_dim_v in {32, 64, 128}.
bool fna_forward_supports(int head_dim, int head_dim_v, int dtype, const char** reason);

// Full support check of one call: fna_forward_supports plus rank, dilation 1, no slabs, 16-byte
// aligned pointers, strides multiples of 8 elements (16 bytes) and positive on axes longer than
// 1, rank 3 with batch > 1 needs batch stride == X * x stride for q, k and v (batch folded into X
// in the TMA descriptor), coordinates within 32 bits. On false, *reason gets a static message.
bool fna_forward_can_run(const natten::FnaForwardArgs& args, int dtype, const char** reason);

// Supported (query tile, key tile) pairs for a rank: every pair of power-of-two boxes of 128
// tokens over the first `rank` axes (1 for rank 1, 64 for rank 2, 1296 for rank 3). Same output
// convention as sm80::fna_forward_tile_configs.
int fna_forward_tile_configs(int rank, int* q_tiles /*[n][3]*/, int* kv_tiles /*[n][3]*/, int capacity);

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
