// Host entry points of the fp32 fused neighborhood-attention kernels (CUDA cores). The SM80 host
// dispatch (sm80/fna_forward.cu, sm80/fna_backward.cu) builds the parameter blocks exactly as for
// fp16 / bf16 (same geometry and 64-token tiles) and hands dtype fp32 here.
#pragma once

#include <cuda_runtime.h>

#include "sm80/bwd_params.cuh"
#include "sm80/params.cuh"

namespace natten {
namespace simt {

// Forward: out, and lse when p.lse is set.
cudaError_t fna_forward_f32(const sm80::FnaParams& p, cudaStream_t stream);

// Backward: preprocess (delta into p.delta), dQ, dK / dV.
cudaError_t fna_backward_f32(const sm80::FnaBwdParams& p, cudaStream_t stream);

}  // namespace simt
}  // namespace natten
