// Instantiation: bf16, head dim 128 (sm_90a only).
#include "sm90/fna_forward_launch.cuh"

namespace natten {
namespace sm90 {
template cudaError_t launch_fna_forward<2, 128>(const FnaSm90Params&, int, cudaStream_t);
template int fna_forward_cluster_fit<2, 128>(int);
}  // namespace sm90
}  // namespace natten
