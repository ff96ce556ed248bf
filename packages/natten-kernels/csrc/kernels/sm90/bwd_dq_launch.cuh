// Definition of the per-(dtype, head dim) launcher of the SM90 backward dQ kernel (included by the
// instantiation units bwd_dq_{fp16,bf16}_hdim{64,128}.cu).
#pragma once

#include <cuda_runtime.h>

#include "sm90/bwd_dq.hpp"
#include "sm90/bwd_dq_kernel.cuh"
#include "sm90/fna_forward_launch.cuh"  // DtypeElement, persistent_grid

namespace natten {
namespace sm90 {

template <int kDtype, int kHeadDim, int kTileKV>
cudaError_t launch_bwd_dq(const DqParams& params, cudaStream_t stream, bool dependent) {
  using Traits = DqTraits<typename DtypeElement<kDtype>::type, kHeadDim, kTileKV>;
  return launch_persistent<fna_sm90_bwd_dq_kernel<Traits>, Traits::kSmemBytes, Traits::kThreads>(
      params, params.geo.num_work, stream, dependent);
}

}  // namespace sm90
}  // namespace natten
