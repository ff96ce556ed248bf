// Instantiation: fp16, padded head dim 32.
#include "fna_forward_launch.cuh"

namespace natten {
namespace sm80 {
template cudaError_t launch_fna_forward<1, 32>(const FnaParams&, cudaStream_t);
}  // namespace sm80
}  // namespace natten
