// The SM80 backward preprocess (delta) compiled for sm_90a, for the Hopper backward. Its kernels open
// with griddepcontrol.launch_dependents so that the visit-table kernel, launched as their programmatic
// dependent (sm90/pdl.cuh, bwd_dkdv.cpp), starts at once; the copy in the SM80 units is compiled from
// compute_80 PTX in a multi-arch build (CMakeLists.txt, NATTEN_SM80_GENCODE), where that instruction
// does not exist and the trigger compiles to nothing (benchmarks/NOTES.md, twenty-fifth session).
#include <cutlass/numeric_types.h>

#include "sm80/bwd_preprocess.cuh"

namespace natten {
namespace sm90 {

// Declared and called in bwd_dq.cpp (bwd_preprocess), which is compiled with or without sm_90a code.
cudaError_t launch_bwd_preprocess_sm90(const sm80::FnaBwdParams& params, int dtype, cudaStream_t stream) {
  if (dtype == 1) return sm80::launch_bwd_preprocess<cutlass::half_t, 90>(params, stream);
  if (dtype == 2) return sm80::launch_bwd_preprocess<cutlass::bfloat16_t, 90>(params, stream);
  return cudaErrorNotSupported;
}

}  // namespace sm90
}  // namespace natten
