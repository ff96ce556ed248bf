// Definition of the per-(dtype, padded head dim) launcher (included by the instantiation units).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>
#include <cutlass/numeric_types.h>

#include "fna_forward_kernel.cuh"
#include "fna_forward_launch.hpp"
#include "kernel_traits.cuh"

namespace natten {
namespace sm80 {

template <int kDtype>
struct DtypeElement;
template <>
struct DtypeElement<1> {
  using type = cutlass::half_t;
};
template <>
struct DtypeElement<2> {
  using type = cutlass::bfloat16_t;
};

template <int kDtype, int kDim, int kTileQ, int kTileKV, int kWarps>
cudaError_t launch_fna_forward(const FnaParams& params, cudaStream_t stream) {
  using Traits = FnaForwardTraits<typename DtypeElement<kDtype>::type, kDim, kTileQ, kTileKV, kWarps>;
  if (params.geo.num_work <= 0) return cudaSuccess;
  auto kernel = fna_forward_kernel<Traits>;
  constexpr int kSmem = Traits::kSmemBytes;
  if (kSmem > 48 * 1024) {
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
    if (err != cudaSuccess) return err;
  }
  // One CTA per work tile; the kernel grid-strides if there are more than 2^31 - 1.
  const int64_t kMaxGrid = 2147483647;
  const unsigned grid = unsigned(params.geo.num_work < kMaxGrid ? params.geo.num_work : kMaxGrid);
  kernel<<<grid, Traits::kThreads, kSmem, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace sm80
}  // namespace natten
