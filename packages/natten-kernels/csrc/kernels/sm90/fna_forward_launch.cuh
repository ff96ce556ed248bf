// Definition of the per-(dtype, head dim) SM90 launcher (included by the instantiation units).
#pragma once

#include <atomic>
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

template <int kDtype, int kHeadDim, bool kPingpong>
cudaError_t launch_fna_forward_schedule(const FnaSm90Params& params, cudaStream_t stream) {
  using Traits = FnaSm90Traits<typename DtypeElement<kDtype>::type, kHeadDim>;
  auto kernel = fna_sm90_forward_kernel<Traits, kPingpong>;
  constexpr int kSmem = Traits::kSmemBytes;
  // Set the dynamic shared memory limit once per (kernel, device) instead of every call (a
  // driver round trip on the per-call path); devices past 64 always set it.
  static std::atomic<bool> done[64];
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) dev = -1;
  if (dev < 0 || dev >= 64 || !done[dev].load(std::memory_order_acquire)) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
    if (err != cudaSuccess) return err;
    if (dev >= 0 && dev < 64) done[dev].store(true, std::memory_order_release);
  }
  kernel<<<unsigned(params.geo.num_work), Traits::kThreads, kSmem, stream>>>(params);
  return cudaGetLastError();
}

template <int kDtype, int kHeadDim>
cudaError_t launch_fna_forward(const FnaSm90Params& params, int schedule, cudaStream_t stream) {
  if (params.geo.num_work <= 0) return cudaSuccess;
  if (params.geo.num_work > 2147483647) return cudaErrorInvalidValue;  // host checks this first
  if (schedule == kSchedulePingpong) return launch_fna_forward_schedule<kDtype, kHeadDim, true>(params, stream);
  if (schedule == kScheduleCooperative) return launch_fna_forward_schedule<kDtype, kHeadDim, false>(params, stream);
  return cudaErrorInvalidValue;
}

}  // namespace sm90
}  // namespace natten
