// SM90 (sm_90a) backward dQ kernel: host API. The SM80 backward (sm80/fna_backward.cu) runs its
// preprocess (delta) and dK / dV kernel and hands dQ to this kernel when the caller asks for it
// (natten_kernels.cpp: NATTEN_BACKEND_AUTO on SM 9.0) and bwd_dq_can_run holds.
#pragma once

#include <cuda_runtime.h>

#include "natten/fna_backward_args.hpp"

namespace natten {
namespace sm90 {

struct DqParams;

// Was the sm_90a dQ kernel compiled into this build?
bool bwd_dq_built();

// True when the dQ kernel can run this backward (no device query): fp16 / bf16, max(D, Dv) in
// (32, 128] (the 64 and 128 kernels; smaller and larger head dims stay on the SM80 dQ kernel),
// dilation 1, the forward kernel's TMA rules for q, k, v (fna_forward_can_run) and the same for
// d_out, d_q 16-byte aligned with strides that are multiples of 8 elements. *reason (optional)
// gets a static message when false.
bool bwd_dq_can_run(const FnaBackwardArgs& args, int dtype, const char** reason = nullptr);

// Launches dQ (overwrites d_q) on `stream`; delta must already be in args.workspace (the SM80
// preprocess, compact [B, H, X, Y, Z] floats over the query slab). Returns cudaErrorNotSupported
// when bwd_dq_can_run is false or the build has no sm_90a kernel.
cudaError_t bwd_dq(const FnaBackwardArgs& args, int dtype, cudaStream_t stream);

#if defined(NATTEN_HAS_SM90)
template <int kDtype, int kHeadDim>
cudaError_t launch_bwd_dq(const DqParams& params, cudaStream_t stream);
#endif

}  // namespace sm90
}  // namespace natten
