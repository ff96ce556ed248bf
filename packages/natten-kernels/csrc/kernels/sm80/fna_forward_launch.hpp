// Declaration of the per-(dtype, padded head dim) launchers; each is explicitly instantiated in its
// own translation unit (fna_forward_<dtype>_hdim<D>.cu) so that the 8 kernels compile in parallel.
#pragma once

#include <cuda_runtime.h>

#include "params.cuh"

namespace natten {
namespace sm80 {

// kDtype: 1 = fp16, 2 = bf16. kDim: padded head dim (32, 64, 128, 256) >= max(D, Dv).
template <int kDtype, int kDim>
cudaError_t launch_fna_forward(const FnaParams& params, cudaStream_t stream);

}  // namespace sm80
}  // namespace natten
