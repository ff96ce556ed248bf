// Definition of the per-(dtype, padded head dim) backward launcher (included by the instantiation
// units).
#pragma once

#include <atomic>
#include <cstdint>
#include <cstdlib>

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

// NATTEN_SM80_BWD_STAGES=1 / 2 (read per call): force the backward tile kernels' buffering; 0 when
// unset (the launcher decides).
inline int bwd_stages_override() {
  const char* e = std::getenv("NATTEN_SM80_BWD_STAGES");
  if (e == nullptr) return 0;
  return e[0] == '1' ? 1 : e[0] == '2' ? 2 : 0;
}

// Stages of a backward tile kernel on the current device: 2 (double-buffered streamed tiles) where
// that keeps at least the single-buffered plan's CTAs per SM (H100 at every head dim; A100 at 128
// would drop from two CTAs per SM to one), else 1. `cache` (one per kernel) holds the choice per
// device ordinal (0: not yet known).
template <class Kernel>
int bwd_pick_stages(Kernel kernel, int threads, int bytes1, int bytes2, std::atomic<int>* cache) {
  const int forced = bwd_stages_override();
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return 1;
  }
  int pick = dev >= 0 && dev < 64 ? cache[dev].load(std::memory_order_relaxed) : 0;
  if (pick == 0) {
    pick = 1;
    int n1 = 0, n2 = 0;
    if (bwd_set_smem(kernel, bytes2) == cudaSuccess &&
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n1, kernel, threads, bytes1) == cudaSuccess &&
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n2, kernel, threads, bytes2) == cudaSuccess && n2 > 0 &&
        n2 >= n1)
      pick = 2;
    (void)cudaGetLastError();  // a refused attribute (bytes2 over the device's limit) is not an error here
    if (dev >= 0 && dev < 64) cache[dev].store(pick, std::memory_order_relaxed);
  }
  if (forced == 2 && pick == 1) {  // forced only where it fits at all
    if (bwd_set_smem(kernel, bytes2) == cudaSuccess) return 2;
    (void)cudaGetLastError();
    return 1;
  }
  return forced != 0 ? forced : pick;
}

inline unsigned bwd_grid(int64_t work) {
  const int64_t kMaxGrid = 2147483647;
  return unsigned(work < kMaxGrid ? work : kMaxGrid);
}

template <int kDtype, int kDim>
cudaError_t launch_fna_backward(const FnaBwdParams& params_in, cudaStream_t stream) {
  using Element = typename DtypeElement<kDtype>::type;
  using Traits = FnaForwardTraits<Element, kDim>;
  using Smem = BwdSmem<Traits>;
  if (params_in.num_rows <= 0) return cudaSuccess;
  FnaBwdParams params = params_in;

  {
    cudaError_t err = launch_bwd_preprocess<Element>(params, stream);
    if (err != cudaSuccess) return err;
  }
  static std::atomic<int> stage_cache[3][64];  // dQ, dK / dV (or dV), dK: per device
  auto launch = [&](auto kernel, int which, int64_t work, int& stages) -> cudaError_t {
    stages = bwd_pick_stages(kernel, Traits::kThreads, Smem::bytes(1), Smem::bytes(2), stage_cache[which]);
    const int bytes = Smem::bytes(stages);
    cudaError_t err = bwd_set_smem(kernel, bytes);
    if (err != cudaSuccess) return err;
    kernel<<<bwd_grid(work), Traits::kThreads, bytes, stream>>>(params);
    return cudaGetLastError();
  };
  if (params.geo.num_work > 0 && !params.skip_dq) {
    // dq_stages is set inside launch() before the kernel reads params (copied at launch)
    cudaError_t err = launch(fna_bwd_dq_kernel<Traits>, 0, params.geo.num_work, params.dq_stages);
    if (err != cudaSuccess) return err;
  }
  if (params.kvg.num_work > 0 && !params.skip_dkdv) {
    if constexpr (BwdSplit<kDim>::value) {
      cudaError_t err = launch(fna_bwd_dkdv_kernel<Traits, false, true>, 1, params.kvg.num_work, params.kv_stages);
      if (err != cudaSuccess) return err;
      return launch(fna_bwd_dkdv_kernel<Traits, true, false>, 2, params.kvg.num_work, params.kv_stages);
    } else {
      return launch(fna_bwd_dkdv_kernel<Traits, true, true>, 1, params.kvg.num_work, params.kv_stages);
    }
  }
  return cudaSuccess;
}

}  // namespace sm80
}  // namespace natten
