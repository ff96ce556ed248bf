// Launchers of the fp32 forward (one instantiation per 32-wide chunk count of the value head dim).
#include "fna_f32.hpp"

#include <cstdint>

#include "f32_forward_kernel.cuh"

namespace natten {
namespace simt {

namespace {

template <int kCh>
cudaError_t launch_forward(const sm80::FnaParams& p, cudaStream_t stream) {
  const int64_t kMaxGrid = 2147483647;
  const unsigned grid = unsigned(p.geo.num_work < kMaxGrid ? p.geo.num_work : kMaxGrid);
  f32_forward_kernel<kCh><<<grid, kThreads, 0, stream>>>(p);
  return cudaGetLastError();
}

}  // namespace

cudaError_t fna_forward_f32(const sm80::FnaParams& p, cudaStream_t stream) {
  if (p.geo.num_work <= 0) return cudaSuccess;
  if (p.head_dim < 1 || p.head_dim > 256 || p.head_dim_v < 1 || p.head_dim_v > 256) return cudaErrorNotSupported;
  const int ch = (p.head_dim_v + kChunk - 1) / kChunk;
  if (ch <= 1) return launch_forward<1>(p, stream);
  if (ch <= 2) return launch_forward<2>(p, stream);
  if (ch <= 4) return launch_forward<4>(p, stream);
  return launch_forward<8>(p, stream);
}

}  // namespace simt
}  // namespace natten
