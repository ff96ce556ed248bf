// Instantiation: fp16, padded head dim 128.
#include "fna_forward_launch.cuh"

namespace natten {
namespace sm80 {
template cudaError_t launch_fna_forward<1, 128>(const FnaParams&, cudaStream_t);
template cudaError_t launch_fna_forward<1, 128, 128, 64, 4>(const FnaParams&, cudaStream_t);  // 128-token query tiles, 4 warps of 32 rows
}  // namespace sm80
}  // namespace natten
