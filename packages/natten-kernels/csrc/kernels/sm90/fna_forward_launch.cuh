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

// Launch configuration of `ctas` CTAs in clusters of 2 along x (the cluster-pair kernels). Not
// copyable: cfg points at the object's own attribute.
// dependent: also a programmatic dependent of the stream's previous kernel (pdl.cuh).
struct Cluster2Config {
  cudaLaunchAttribute attr[2];
  cudaLaunchConfig_t cfg;
  Cluster2Config(unsigned ctas, int threads, int smem, cudaStream_t stream, bool dependent = false)
      : attr{}, cfg{} {
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = 2;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    attr[1].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[1].val.programmaticStreamSerializationAllowed = 1;
    cfg.gridDim = dim3(ctas);
    cfg.blockDim = dim3(unsigned(threads));
    cfg.dynamicSmemBytes = size_t(smem);
    cfg.stream = stream;
    cfg.attrs = attr;
    cfg.numAttrs = dependent ? 2 : 1;
  }
  Cluster2Config(const Cluster2Config&) = delete;
  Cluster2Config& operator=(const Cluster2Config&) = delete;
};

// Clusters of 2 CTAs of Kernel that fit on the device at once (cudaOccupancyMaxActiveClusters), asked
// once per device; 0 when none (or the query fails).
template <auto Kernel, int kSmem, int kThreads>
int cluster_pairs_fit(int dev) {
  static std::atomic<int> fit[64];
  if (dev < 0 || dev >= 64) return 0;
  int n = fit[dev].load(std::memory_order_acquire);
  if (n > 0) return n;
  if (cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSmem) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  const Cluster2Config c(2, kThreads, kSmem, nullptr);
  if (cudaOccupancyMaxActiveClusters(&n, Kernel, &c.cfg) != cudaSuccess || n <= 0) {
    (void)cudaGetLastError();
    return 0;
  }
  fit[dev].store(n, std::memory_order_release);
  return n;
}

// Launches the cluster-pair kernel (fna_forward_kernel.cuh, kCluster) over num_work / 2 pairs in
// clusters of 2 CTAs, each walking the pairs of the rotated order: as many clusters as fit at once,
// no more than persistent_grid allows CTAs. split: the launch has a split tail planned for
// G = persistent_grid CTAs in the pairs' order (ordered_tile), so the grid must be exactly G; the host
// (fna_forward.cpp) checked that G / 2 clusters fit (fna_forward_cluster_fit), and a launch that
// cannot is an error, not a fall-back (the plain kernel would take the tail in another order).
// Without a split, cudaErrorNotSupported when no cluster fits (the caller runs the plain kernel).
template <auto Kernel, int kSmem, int kThreads, class Params>
cudaError_t launch_cluster_pairs(const Params& params, int64_t num_work, bool split, cudaStream_t stream,
                                 bool dependent = false) {
  if (num_work <= 0) return cudaSuccess;
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    (void)cudaGetLastError();
    dev = -1;
  }
  const int64_t fit = cluster_pairs_fit<Kernel, kSmem, kThreads>(dev);
  const int64_t G = persistent_grid(num_work, dev);
  int64_t clusters;
  if (split) {
    if ((G & 1) != 0 || G / 2 > fit) return cudaErrorInvalidConfiguration;
    clusters = G / 2;
  } else {
    if (fit <= 0) return cudaErrorNotSupported;
    const int64_t pairs = num_work / 2, cap = G / 2 >= 1 ? G / 2 : 1;
    clusters = pairs < fit ? pairs : fit;
    clusters = cap < clusters ? cap : clusters;
  }
  const Cluster2Config c(unsigned(2 * clusters), kThreads, kSmem, stream, dependent);
  return cudaLaunchKernelEx(&c.cfg, Kernel, params);
}

// Clusters of the head-dim-128 cluster-pair kernels that fit on device dev (they share resources:
// one query serves both schedules and both tails); 0 for other head dims.
template <int kDtype, int kHeadDim>
int fna_forward_cluster_fit(int dev) {
  if constexpr (kHeadDim == 128) {
    using Traits = FnaSm90Traits<typename DtypeElement<kDtype>::type, kHeadDim>;
    return cluster_pairs_fit<fna_sm90_forward_kernel<Traits, false, false, true, true>, Traits::kSmemBytes,
                             Traits::kThreads>(dev);
  } else {
    (void)dev;
    return 0;
  }
}

template <int kDtype, int kHeadDim, bool kPingpong>
cudaError_t launch_fna_forward_schedule(const FnaSm90Params& params, cudaStream_t stream) {
  using Traits = FnaSm90Traits<typename DtypeElement<kDtype>::type, kHeadDim>;
  const bool dep = params.pdl != 0;
  if (params.work_counter != nullptr)  // the dynamic work order (fna_forward_kernel.cuh)
    return launch_persistent<fna_sm90_forward_kernel<Traits, kPingpong, true>, Traits::kSmemBytes, Traits::kThreads>(
        params, params.geo.num_work, stream, dep);
  const bool split = params.split_chunks > 1;
  cudaError_t e = cudaErrorNotSupported;
  if constexpr (kHeadDim == 128) {
    if (params.pair_half > 0) {
      e = split ? launch_cluster_pairs<fna_sm90_forward_kernel<Traits, kPingpong, false, true, true>, Traits::kSmemBytes,
                                       Traits::kThreads>(params, params.geo.num_work, true, stream, dep)
                : launch_cluster_pairs<fna_sm90_forward_kernel<Traits, kPingpong, false, false, true>,
                                       Traits::kSmemBytes, Traits::kThreads>(params, params.geo.num_work, false, stream,
                                                                             dep);
    }
  }
  if (e == cudaErrorNotSupported) {  // no cluster pairs here (or none fit): the plain kernels
    e = split ? launch_persistent<fna_sm90_forward_kernel<Traits, kPingpong, false, true>, Traits::kSmemBytes,
                                  Traits::kThreads>(params, params.num_items, stream, dep)
              : launch_persistent<fna_sm90_forward_kernel<Traits, kPingpong, false>, Traits::kSmemBytes,
                                  Traits::kThreads>(params, params.geo.num_work, stream, dep);
  }
  if (e != cudaSuccess || !split) return e;
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
