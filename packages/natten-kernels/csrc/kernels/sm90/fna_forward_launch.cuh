// Definition of the per-(dtype, head dim) SM90 launcher (included by the instantiation units).
#pragma once

#include <cstdint>

#include <cuda_runtime.h>
#include <cutlass/numeric_types.h>

#include "sm90/fna_forward_kernel.cuh"
#include "sm90/fna_forward_launch.hpp"
#include "sm90/kernel_traits.cuh"

namespace natten {
namespace sm90 {

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

template <int kDtype, int kHeadDim>
cudaError_t launch_fna_forward(const FnaSm90Params& params, cudaStream_t stream) {
  using Traits = FnaSm90Traits<typename DtypeElement<kDtype>::type, kHeadDim>;
  if (params.geo.num_work <= 0) return cudaSuccess;
  if (params.geo.num_work > 2147483647) return cudaErrorInvalidValue;  // host checks this first
  auto kernel = fna_sm90_forward_kernel<Traits>;
  constexpr int kSmem = Traits::kSmemBytes;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
  if (err != cudaSuccess) return err;
  kernel<<<unsigned(params.geo.num_work), Traits::kThreads, kSmem, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace sm90
}  // namespace natten
