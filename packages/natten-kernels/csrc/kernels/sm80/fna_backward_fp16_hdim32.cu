// Instantiation: backward, fp16, padded head dim 32.
#include "fna_backward_launch.cuh"

namespace natten {
namespace sm80 {
template cudaError_t launch_fna_backward<1, 32>(const FnaBwdParams&, cudaStream_t);
}  // namespace sm80
}  // namespace natten
