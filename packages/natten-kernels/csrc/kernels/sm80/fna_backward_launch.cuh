// Definition of the per-(dtype, padded head dim) backward launcher (included by the instantiation
// units).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>
#include <cutlass/numeric_types.h>

#include "fna_backward_kernel.cuh"
#include "fna_backward_launch.hpp"
#include "fna_forward_launch.cuh"  // DtypeElement
#include "kernel_traits.cuh"

namespace natten {
namespace sm80 {

// At padded head dim 256 dK and dV are computed by two launches (register budget, see
// fna_backward_kernel.cuh); below it by one.
template <int kDim>
struct BwdSplit {
  static constexpr bool value = kDim > 128;
};

template <class Kernel>
cudaError_t bwd_set_smem(Kernel kernel, int bytes) {
  if (bytes > 48 * 1024) return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  return cudaSuccess;
}

inline unsigned bwd_grid(int64_t work) {
  const int64_t kMaxGrid = 2147483647;
  return unsigned(work < kMaxGrid ? work : kMaxGrid);
}

template <int kDtype, int kDim>
cudaError_t launch_fna_backward(const FnaBwdParams& params, cudaStream_t stream) {
  using Element = typename DtypeElement<kDtype>::type;
  using Traits = FnaForwardTraits<Element, kDim>;
  constexpr int kSmem = BwdSmem<Traits>::kBytes;
  if (params.num_rows <= 0) return cudaSuccess;

  {
    cudaError_t err = launch_bwd_preprocess<Element>(params, stream);
    if (err != cudaSuccess) return err;
  }
  if (params.geo.num_work > 0 && !params.skip_dq) {
    auto kernel = fna_bwd_dq_kernel<Traits>;
    cudaError_t err = bwd_set_smem(kernel, kSmem);
    if (err != cudaSuccess) return err;
    kernel<<<bwd_grid(params.geo.num_work), Traits::kThreads, kSmem, stream>>>(params);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  if (params.kvg.num_work > 0 && !params.skip_dkdv) {
    if constexpr (BwdSplit<kDim>::value) {
      auto kv = fna_bwd_dkdv_kernel<Traits, false, true>;
      cudaError_t err = bwd_set_smem(kv, kSmem);
      if (err != cudaSuccess) return err;
      kv<<<bwd_grid(params.kvg.num_work), Traits::kThreads, kSmem, stream>>>(params);
      err = cudaGetLastError();
      if (err != cudaSuccess) return err;
      auto kk = fna_bwd_dkdv_kernel<Traits, true, false>;
      err = bwd_set_smem(kk, kSmem);
      if (err != cudaSuccess) return err;
      kk<<<bwd_grid(params.kvg.num_work), Traits::kThreads, kSmem, stream>>>(params);
      return cudaGetLastError();
    } else {
      auto kernel = fna_bwd_dkdv_kernel<Traits, true, true>;
      cudaError_t err = bwd_set_smem(kernel, kSmem);
      if (err != cudaSuccess) return err;
      kernel<<<bwd_grid(params.kvg.num_work), Traits::kThreads, kSmem, stream>>>(params);
      return cudaGetLastError();
    }
  }
  return cudaSuccess;
}

}  // namespace sm80
}  // namespace natten
