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

// Grid size: one CTA per SM, each walking its work tiles (RotatedWork, tile_scheduler.cuh)
// (persistent), or one CTA per work tile when NATTEN_HOPPER_PERSISTENT=0 (read once) or the
// SM count is unknown. The same kernel runs either way. NATTEN_HOPPER_PERSISTENT=N > 0 caps the
// grid at N CTAs instead (tests: many work tiles per CTA on small problems).
inline int64_t persistent_grid(int64_t num_work, int dev) {
  static const long mode = [] {  // -1: one CTA per SM, 0: off, N > 0: at most N CTAs
    const char* e = std::getenv("NATTEN_HOPPER_PERSISTENT");
    if (e == nullptr || *e == '\0') return -1L;
    char* end = nullptr;
    const long v = std::strtol(e, &end, 10);
    return (end != nullptr && *end == '\0' && v >= 0) ? v : -1L;
  }();
  if (mode == 0) return num_work;
  if (mode > 0) return num_work < mode ? num_work : int64_t(mode);
  static std::atomic<int> sms[64];
  if (dev < 0 || dev >= 64) return num_work;
  int n = sms[dev].load(std::memory_order_relaxed);
  if (n <= 0) {
    if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n <= 0) {
      (void)cudaGetLastError();
      return num_work;
    }
    sms[dev].store(n, std::memory_order_relaxed);
  }
  return num_work < n ? num_work : n;
}

// Launches a persistent SM90 kernel (forward, backward dQ or dK / dV) over num_work work tiles with
// kSmem bytes of dynamic shared memory. The shared memory limit is set once per (kernel, device)
// instead of every call (a driver round trip on the per-call path); devices past 64 always set it.
template <auto Kernel, int kSmem, int kThreads, class Params>
cudaError_t launch_persistent(const Params& params, int64_t num_work, cudaStream_t stream) {
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
  Kernel<<<grid, kThreads, kSmem, stream>>>(params);
  return cudaGetLastError();
}

template <int kDtype, int kHeadDim, bool kPingpong>
cudaError_t launch_fna_forward_schedule(const FnaSm90Params& params, cudaStream_t stream) {
  using Traits = FnaSm90Traits<typename DtypeElement<kDtype>::type, kHeadDim>;
  if (params.work_counter != nullptr)  // the dynamic work order (fna_forward_kernel.cuh)
    return launch_persistent<fna_sm90_forward_kernel<Traits, kPingpong, true>, Traits::kSmemBytes, Traits::kThreads>(
        params, params.geo.num_work, stream);
  return launch_persistent<fna_sm90_forward_kernel<Traits, kPingpong, false>, Traits::kSmemBytes, Traits::kThreads>(
      params, params.geo.num_work, stream);
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
