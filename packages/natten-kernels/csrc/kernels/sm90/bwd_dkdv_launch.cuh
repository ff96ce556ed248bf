// Definition of the per-(dtype, head dim) launcher of the SM90 backward dK / dV kernel (included by
// the instantiation units bwd_dkdv_{fp16,bf16}_hdim{64,128}.cu).
#pragma once

#include <cuda_runtime.h>

#include "sm90/bwd_dkdv_kernel.cuh"
#include "sm90/bwd_dq.hpp"
#include "sm90/fna_forward_launch.cuh"  // DtypeElement, persistent_grid

namespace natten {
namespace sm90 {

template <int kDtype, int kHeadDim>
cudaError_t launch_bwd_dkdv(const DkdvParams& params, cudaStream_t stream, bool dependent) {
  using Traits = DkdvTraits<typename DtypeElement<kDtype>::type, kHeadDim>;
  return launch_persistent<fna_sm90_bwd_dkdv_kernel<Traits>, Traits::kSmemBytes, Traits::kThreads>(
      params, params.kvg.num_work, stream, dependent);
}

}  // namespace sm90
}  // namespace natten
