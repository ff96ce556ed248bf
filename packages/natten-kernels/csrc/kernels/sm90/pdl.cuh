// Programmatic dependent launch (PDL) between the SM90 backward's kernels on one stream: the visit-
// table kernel is launched as a dependent of the SM80 preprocess (which triggers at its start and
// writes delta; the table kernel reads lse first and waits before it reads delta), the dK / dV
// kernel as a dependent of the visit-table kernel, and the dQ kernel as a dependent of the dK / dV
// kernel (sm80/fna_backward.cu, bwd_dkdv.cpp, NATTEN_HOPPER_PDL). A dependent's CTAs may be scheduled
// once every CTA of the kernel before it has called pdl_launch_dependents (or exited), so its
// prologue, and the dQ kernel's whole walk on SMs the dK / dV kernel's last tiles leave idle,
// overlap that kernel instead of waiting for it to drain.
//
// Rules, for every kernel that may be launched as a dependent:
// - pdl_wait before reading anything the previous kernel writes (it returns once that kernel has
//   completed and its memory operations are visible; at once when the launch was not dependent);
// - pdl_wait before exiting, so that the kernel's completion implies the previous kernel's and the
//   stream's later work sees both.
// A warp some of whose lanes reach the wait stalls its other lanes too, until the previous kernel
// completes: the dQ kernel's producer warp holds lanes 1-31 in a __syncwarp until lane 0's load loop
// is done, and only then lets them wait (bwd_dq_kernel.cuh).
#pragma once

#include <cstddef>

#include <cuda_runtime.h>

namespace natten {
namespace sm90 {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900)
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Compiles to nothing below sm_90, including every SM80-class unit of a multi-arch build (compiled
// once from compute_80 PTX): there the SM80 preprocess does not trigger the table kernel, which
// then starts as the preprocess's blocks exit. A copy of the preprocess compiled for sm_90a was tried
// and measured no faster (benchmarks/NOTES.md, twenty-fifth session, item 8).
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ >= 900)
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Launches kernel<<<grid, block, smem, stream>>>(args...); with `dependent`, as a programmatic
// dependent of the stream's previous kernel (the kernel must follow the rules above). The one
// launch path of every SM90 kernel that may be a dependent (fna_forward_launch.cuh's
// launch_persistent, and launch_bwd_dkdv_tables).
template <class... Params, class... Args>
cudaError_t launch_maybe_dependent(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                                   cudaStream_t stream, bool dependent, const Args&... args) {
  if (!dependent) {
    kernel<<<grid, block, smem, stream>>>(args...);
    return cudaGetLastError();
  }
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  return cudaLaunchKernelEx(&cfg, kernel, args...);
}

}  // namespace sm90
}  // namespace natten
