// Launchers of the fp32 backward: preprocess, dQ, dK / dV (one instantiation of each tile kernel
// per 32-wide chunk count of max(D, Dv)).
#include "fna_f32.hpp"

#include <cstdint>

#include "f32_backward_kernels.cuh"
#include "sm80/bwd_preprocess.cuh"

namespace natten {
namespace simt {

namespace {

unsigned grid_of(int64_t work) {
  const int64_t kMaxGrid = 2147483647;
  return unsigned(work < kMaxGrid ? work : kMaxGrid);
}

template <int kCh>
cudaError_t launch_tiles(const sm80::FnaBwdParams& p, cudaStream_t stream) {
  if (p.geo.num_work > 0) {
    f32_dq_kernel<kCh><<<grid_of(p.geo.num_work), kThreads, 0, stream>>>(p);
    const cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess) return e;
  }
  if (p.kvg.num_work > 0) {
    f32_dkdv_kernel<kCh><<<grid_of(p.kvg.num_work), kThreads, 0, stream>>>(p);
    return cudaGetLastError();
  }
  return cudaSuccess;
}

}  // namespace

cudaError_t fna_backward_f32(const sm80::FnaBwdParams& p, cudaStream_t stream) {
  if (p.num_rows <= 0) return cudaSuccess;
  if (p.head_dim < 1 || p.head_dim > 256 || p.head_dim_v < 1 || p.head_dim_v > 256) return cudaErrorNotSupported;
  cudaError_t e = sm80::launch_bwd_preprocess<float>(p, stream);
  if (e != cudaSuccess) return e;
  const int dim = p.head_dim > p.head_dim_v ? p.head_dim : p.head_dim_v;
  const int ch = (dim + kChunk - 1) / kChunk;
  if (ch <= 1) return launch_tiles<1>(p, stream);
  if (ch <= 2) return launch_tiles<2>(p, stream);
  if (ch <= 4) return launch_tiles<4>(p, stream);
  return launch_tiles<8>(p, stream);
}

}  // namespace simt
}  // namespace natten
