// Definition of the per-(dtype, head dim) SM90 launcher (included by the instantiation units).
#pragma once

#include <atomic>
#include <cstdint>
#include <cstdlib>

#include <cuda_runtime.h>
#include <cutlass/numeric_types.h>

#include "sm90/fna_forward_kernel.cuh"
#include "sm90/fna_forward_launch.hpp"
#include "sm90/kernel_traits.cuh"
#include "sm90/pdl.cuh"
#include "sm90/tma_host.hpp"

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

// persistent_grid (grid size of the persistent kernels): tma_host.hpp.

// Launches a persistent SM90 kernel (forward, backward dQ or dK / dV) over num_work work tiles with
// kSmem bytes of dynamic shared memory. The shared memory limit is set once per (kernel, device)
// instead of every call (a driver round trip on the per-call path); devices past 64 always set it.
// dependent: launched as a programmatic dependent of the stream's previous kernel (PDL,
// pdl.cuh): its CTAs may start once every CTA of that kernel has called pdl_launch_dependents, so
// the kernel itself must call pdl_wait before it reads what that kernel writes, and before it exits
// (so that its completion still implies the previous kernel's).
template <auto Kernel, int kSmem, int kThreads, class Params>
cudaError_t launch_persistent(const Params& params, int64_t num_work, cudaStream_t stream, bool dependent = false) {
  if (num_work <= 0) return cudaSuccess;
  if (num_work > 2147483647) return cudaErrorInvalidValue;  // hosts check this first
  static std::atomic<bool> done[64];
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) dev = -1;
  if (dev < 0 || dev >= 64 || !done[dev].load(std::memory_order_acquire)) {
    const cudaError_t err = cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem);
    if (err != cudaSuccess) return err;
    if (dev >= 0 && dev < 64) done[dev].store(true, std::memory_order_release);
  }
  const unsigned grid = unsigned(persistent_grid(num_work, dev));
  return launch_maybe_dependent(Kernel, dim3(grid), dim3(kThreads), size_t(kSmem), stream, dependent, params);
}

template <int kDtype, int kHeadDim, bool kPingpong>
cudaError_t launch_fna_forward_schedule(const FnaSm90Params& params, cudaStream_t stream) {
  using Traits = FnaSm90Traits<typename DtypeElement<kDtype>::type, kHeadDim>;
  if (params.work_counter != nullptr)  // the dynamic work order (fna_forward_kernel.cuh)
    return launch_persistent<fna_sm90_forward_kernel<Traits, kPingpong, true>, Traits::kSmemBytes, Traits::kThreads>(
        params, params.geo.num_work, stream);
  if (params.split_chunks <= 1)
    return launch_persistent<fna_sm90_forward_kernel<Traits, kPingpong, false>, Traits::kSmemBytes, Traits::kThreads>(
        params, params.geo.num_work, stream);
  const cudaError_t e = launch_persistent<fna_sm90_forward_kernel<Traits, kPingpong, false, true>, Traits::kSmemBytes,
                                          Traits::kThreads>(params, params.num_items, stream);
  if (e != cudaSuccess) return e;
  // Split tail (split_tail.cuh): merge the chunks of the last round's tiles.
  const dim3 grid(unsigned(params.geo.num_work - params.split_base), unsigned(Traits::kTileQ / kCombineRows));
  fna_sm90_split_combine_kernel<Traits><<<grid, 32 * kCombineRows, 0, stream>>>(params);
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
