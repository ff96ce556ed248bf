// SM90 (sm_90a) backward kernels, dQ and dK / dV: host API. The SM80 backward
// (sm80/fna_backward.cu) runs its preprocess (delta) and hands dQ and dK / dV to these kernels when
// the caller asks for it (natten_kernels.cpp: NATTEN_BACKEND_AUTO on SM 9.0) and the can_run checks
// hold (each kernel separately; the other stays on SM80).
#pragma once

#include <cuda_runtime.h>

#include "natten/fna_backward_args.hpp"

namespace natten {
namespace sm90 {

struct DqParams;
struct DkdvParams;

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
// when bwd_dq_can_run is false or the build has no sm_90a kernel. after_dkdv: the stream's previous
// launch is bwd_dkdv's kernel (its *launched), whose outputs dQ does not read; dQ is then launched as
// its programmatic dependent (pdl.cuh) unless NATTEN_HOPPER_PDL=0.
cudaError_t bwd_dq(const FnaBackwardArgs& args, int dtype, cudaStream_t stream, bool after_dkdv = false);

// NATTEN_HOPPER_PDL (read per call): "0" launches the SM90 backward's kernels without programmatic
// dependence (pdl.cuh), each waiting for the previous one to finish.
bool pdl_enabled();

// The dK / dV kernel: bwd_dq_can_run's conditions, d_k / d_v 16-byte aligned with strides that are
// multiples of 8 elements, and the default key parallelism (kv_splits unset: one CTA per key tile).
bool bwd_dkdv_can_run(const FnaBackwardArgs& args, int dtype, const char** reason = nullptr);

// Workspace bytes the dK / dV kernel uses after the SM80 backward's (sm80::fna_backward_workspace_bytes:
// delta): its visit tables, 2 x 4 bytes per (batch, head, query token of its 64-token query tiles,
// padding included) and its work counter (256). 0 when bwd_dkdv_can_run is false or the build has
// no sm_90a kernel; -1 on overflow. natten_fna_backward_workspace_size adds it (no device query: it
// may go unused). The work order travels in the kernel's parameter block (bwd_dkdv_order.hpp).
int64_t bwd_dkdv_workspace_bytes(const FnaBackwardArgs& args, int dtype);

// Launches dK / dV (overwrites d_k, d_v; keys no query attends get 0) on `stream`: first the visit
// tables (from lse and delta, which must already be in args.workspace), then the kernel (a
// programmatic dependent of the tables kernel unless NATTEN_HOPPER_PDL=0). *launched (optional):
// whether the kernel was launched (false for empty problems and on errors).
// cudaErrorInvalidValue when args.workspace_bytes is below the sum of both workspace sizes.
cudaError_t bwd_dkdv(const FnaBackwardArgs& args, int dtype, cudaStream_t stream, bool* launched = nullptr);

#if defined(NATTEN_HAS_SM90)
template <int kDtype, int kHeadDim, int kTileKV>  // kTileKV 128: head dim 128 only
cudaError_t launch_bwd_dq(const DqParams& params, cudaStream_t stream, bool dependent);
template <int kDtype, int kHeadDim>
cudaError_t launch_bwd_dkdv(const DkdvParams& params, cudaStream_t stream, bool dependent);
cudaError_t launch_bwd_dkdv_tables(const DkdvParams& params, cudaStream_t stream, bool dependent);
#endif

}  // namespace sm90
}  // namespace natten
