// Declaration of the per-(dtype, padded head dim) backward launchers; each is explicitly
// instantiated in its own translation unit (fna_backward_<dtype>_hdim<D>.cu).
#pragma once

#include <cuda_runtime.h>

#include "bwd_params.cuh"

namespace natten {
namespace sm80 {

// kDtype: 1 = fp16, 2 = bf16. kDim: padded head dim (32, 64, 128, 256) >= max(D, Dv).
// Launches preprocess (delta), dQ and dK / dV on `stream`.
template <int kDtype, int kDim>
cudaError_t launch_fna_backward(const FnaBwdParams& params, cudaStream_t stream);

}  // namespace sm80
}  // namespace natten
