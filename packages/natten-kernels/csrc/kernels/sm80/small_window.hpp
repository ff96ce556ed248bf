// Host side of the SM80 small-window forward kernel (small_window_plan.hpp: design).
#pragma once

#include <cuda_runtime.h>

#include "natten/fna_args.hpp"
#include "params.cuh"

namespace natten {
namespace sm80 {

// Runs the forward with the small-window kernel when it applies, returning true with *result set
// (cudaSuccess or a launch error); returns false (nothing launched) when it does not apply. `base`
// is the tiled kernel's parameter block for the same problem (tensors, strides, geometry with the
// automatic tiles). It applies when the caller left the tiles to the library (args.tiles_auto),
// dtype is fp16 / bf16, the padded max(D, Dv) is 32 or 64, every row is 16-byte aligned, offsets
// inside a (batch, head) slice fit 32 bits, a 16-query patch box holds at most 128 keys, a region
// fits the shared-memory budget (small_window_plan.hpp), and its estimated (query, key) pairs are
// at most kSwMaxPairsRatio of the tiled kernel's. NATTEN_SM80_SMALL=0 turns it off, =1 drops the
// pairs test (read per call; for measurements and tests).
bool small_window_forward(const FnaForwardArgs& args, int dtype, const FnaParams& base, cudaStream_t stream,
                          cudaError_t* result);

}  // namespace sm80
}  // namespace natten
