// Instantiation: backward dK / dV, bf16, head dim 64 (sm_90a only).
#include "sm90/bwd_dkdv_launch.cuh"

namespace natten {
namespace sm90 {
template cudaError_t launch_bwd_dkdv<2, 64>(const DkdvParams&, cudaStream_t, bool);
}  // namespace sm90
}  // namespace natten
