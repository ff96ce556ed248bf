// Per-(dtype, head dim) launchers of the SM90 forward (defined in fna_forward_launch.cuh,
// instantiated by fna_forward_{fp16,bf16}_hdim{32,64,128}.cu, compiled for sm_90a only).
#pragma once

#include <cuda_runtime.h>

#include "sm90/fna_forward.hpp"
#include "sm90/params.cuh"

namespace natten {
namespace sm90 {

// schedule: kScheduleCooperative or kSchedulePingpong (fna_forward.hpp); both are compiled into
// each unit.
template <int kDtype /*1 = fp16, 2 = bf16*/, int kHeadDim>
cudaError_t launch_fna_forward(const FnaSm90Params& params, int schedule, cudaStream_t stream);

// Clusters of 2 CTAs of the cluster-pair kernels (head dim 128; fna_forward_kernel.cuh, kCluster)
// that fit on device dev at once; 0 when none, or for other head dims (instantiated for 128 only).
template <int kDtype, int kHeadDim>
int fna_forward_cluster_fit(int dev);

}  // namespace sm90
}  // namespace natten
