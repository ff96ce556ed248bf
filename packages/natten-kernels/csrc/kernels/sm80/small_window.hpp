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
// automatic tiles). Opt-in: it applies only with NATTEN_SM80_SMALL=1 in the environment (read per
// call), when the caller left the tiles to the library (args.tiles_auto), dtype is fp16 / bf16, the
// padded max(D, Dv) is 32 or 64, every row is 16-byte aligned, a 16-query patch box holds at most
// 128 keys and a region fits the shared-memory budget (small_window_plan.hpp). Not the default yet:
// on the H100 it measured faster than the tiled kernel on some small-window problems and slower on
// others (benchmarks/NOTES.md, 2026-11-27).
bool small_window_forward(const FnaForwardArgs& args, int dtype, const FnaParams& base, cudaStream_t stream,
                          cudaError_t* result);

}  // namespace sm80
}  // namespace natten
