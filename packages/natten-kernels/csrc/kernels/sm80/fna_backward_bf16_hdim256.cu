// Instantiation: backward, bf16, padded head dim 256.
#include "fna_backward_launch.cuh"

namespace natten {
namespace sm80 {
template cudaError_t launch_fna_backward<2, 256>(const FnaBwdParams&, cudaStream_t);
}  // namespace sm80
}  // namespace natten
