// Instantiation: backward dQ, bf16, head dim 128 (sm_90a only).
#include "sm90/bwd_dq_launch.cuh"

namespace natten {
namespace sm90 {
template cudaError_t launch_bwd_dq<2, 128, 64>(const DqParams&, cudaStream_t, bool);
template cudaError_t launch_bwd_dq<2, 128, 128>(const DqParams&, cudaStream_t, bool);
}  // namespace sm90
}  // namespace natten
