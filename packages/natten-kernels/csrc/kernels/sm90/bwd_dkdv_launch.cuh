// Definition of the per-(dtype, head dim) launcher of the SM90 backward dK / dV kernel (included by
// the instantiation units bwd_dkdv_{fp16,bf16}_hdim{64,128}.cu).
#pragma once

#include <atomic>

#include <cuda_runtime.h>

#include "sm90/bwd_dkdv_kernel.cuh"
#include "sm90/bwd_dq.hpp"
#include "sm90/fna_forward_launch.cuh"  // DtypeElement, persistent_grid

namespace natten {
namespace sm90 {

template <int kDtype, int kHeadDim>
cudaError_t launch_bwd_dkdv(const DkdvParams& params, cudaStream_t stream) {
  if (params.kvg.num_work <= 0) return cudaSuccess;
  if (params.kvg.num_work > 2147483647) return cudaErrorInvalidValue;
  using Traits = DkdvTraits<typename DtypeElement<kDtype>::type, kHeadDim>;
  auto kernel = fna_sm90_bwd_dkdv_kernel<Traits>;
  constexpr int kSmem = Traits::kSmemBytes;
  static std::atomic<bool> done[64];
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) dev = -1;
  if (dev < 0 || dev >= 64 || !done[dev].load(std::memory_order_acquire)) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
    if (err != cudaSuccess) return err;
    if (dev >= 0 && dev < 64) done[dev].store(true, std::memory_order_release);
  }
  const unsigned grid = unsigned(persistent_grid(params.kvg.num_work, dev));
  kernel<<<grid, Traits::kThreads, kSmem, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace sm90
}  // namespace natten
