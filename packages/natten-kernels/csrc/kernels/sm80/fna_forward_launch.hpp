// Declaration of the per-(dtype, padded head dim) launchers; each is explicitly instantiated in its
// own translation unit (fna_forward_<dtype>_hdim<D>.cu) so that the 8 kernels compile in parallel.
#pragma once

#include <cuda_runtime.h>

#include "params.cuh"

namespace natten {
namespace sm80 {

// kDtype: 1 = fp16, 2 = bf16. kDim: padded head dim (32, 64, 128, 256) >= max(D, Dv). kTileQ /
// kTileKV: query / key tile tokens (64 / 64; at head dim 128 also 128 / 64, see fna_forward.cu).
// kWarps: warps per CTA (16 query rows each by default; 32 rows each when kWarps = kTileQ / 32).
template <int kDtype, int kDim, int kTileQ = 64, int kTileKV = 64, int kWarps = kTileQ / 16>
cudaError_t launch_fna_forward(const FnaParams& params, cudaStream_t stream);

}  // namespace sm80
}  // namespace natten
