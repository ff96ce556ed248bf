// Instantiation: bf16, head dim 256 (sm_90a only).
#include "sm90/fna_forward_launch.cuh"

namespace natten {
namespace sm90 {
template cudaError_t launch_fna_forward<2, 256>(const FnaSm90Params&, int, cudaStream_t);
}  // namespace sm90
}  // namespace natten
