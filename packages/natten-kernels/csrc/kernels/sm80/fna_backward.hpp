// SM80 fused neighborhood-attention backward (dQ, dK, dV, including the gradient of the logsumexp).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "natten/fna_backward_args.hpp"

namespace natten {
namespace sm80 {

// Bytes of workspace fna_backward needs for `args` (float32 delta per (batch, head, token), rounded
// up to 256 bytes); 0 for an empty problem. Returns -1 if the sizes overflow int64.
int64_t fna_backward_workspace_bytes(const natten::FnaBackwardArgs& args);

// Dynamic shared memory per block the backward kernels need for these head dims (the host checks
// it against the device's opt-in limit: head dim 256 needs ~131 KiB, more than SM 8.6 / 8.9 have).
int fna_backward_smem_bytes(int head_dim, int head_dim_v);

// Key tiles per axis of the dK / dV kernel's walk for `args` (the upper bound of kv_splits):
// ceil(tokens of the key slab's largest dilation group / key tile). Tiles as in fna_backward.
// Returns cudaErrorInvalidValue for a problem the caller should have rejected; all 1 if empty.
cudaError_t fna_backward_kv_tiles(const natten::FnaBackwardArgs& args, int kv_tiles[3]);

// Runs the backward described by `args` on `stream` (dtype: 1 = fp16, 2 = bf16). Every path is
// deterministic (no atomics): dQ by a query-parallel kernel, dK / dV by a key-parallel one.
// Tiles as in fna_forward (args.fwd.q_tile / kv_tile, entries <= 0 = choose).
// Returns cudaSuccess, cudaErrorNotSupported, cudaErrorInvalidValue (problem, tiles or workspace
// the caller should have rejected), or a launch error.
// hopper: run dQ and dK / dV on the SM90 kernels (sm90/bwd_dq.hpp) where each can run the problem
// (the caller checked the device is SM 9.0); the preprocess and the rest stay here.
cudaError_t fna_backward(const natten::FnaBackwardArgs& args, int dtype, cudaStream_t stream,
                         bool hopper = false);

}  // namespace sm80
}  // namespace natten
