// Host dispatch of the SM80 fused neighborhood-attention backward: geometry (rank < 3 -> padded
// axes, slabs of a larger grid, tile choice: all shared with the forward through
// fna_forward_geometry), alignment check, workspace layout and the (dtype, padded head dim) dispatch.
#include "fna_backward.hpp"

#include <climits>
#include <cstdint>
#include <cstring>

#include "bwd_params.cuh"
#include "fna_backward_launch.hpp"
#include "fna_forward.hpp"
#include "simt/fna_f32.hpp"
#include "sm90/bwd_dq.hpp"
#include "tile_scheduler.cuh"

namespace natten {
namespace sm80 {

namespace {

int bwd_padded_dim(int d) {
  if (d <= 32) return 32;
  if (d <= 64) return 64;
  if (d <= 128) return 128;
  if (d <= 256) return 256;
  return -1;
}

bool bwd_aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }
bool bwd_stride_ok(int64_t s) { return (s & 7) == 0; }

// Tokens per (batch, head) of the query slab (= the grid without slabs), or -1 on overflow / invalid extents.
int64_t tokens(const FnaForwardArgs& f) {
  if (f.rank < 1 || f.rank > kRank) return -1;
  int64_t n = 1;
  for (int a = 0; a < f.rank; ++a) {
    if (f.extent[a] < 0) return -1;
    if (__builtin_mul_overflow(n, f.extent[a], &n)) return -1;
  }
  return n;
}

}  // namespace

int fna_backward_smem_bytes(int head_dim, int head_dim_v) {
  const int dim = bwd_padded_dim(head_dim > head_dim_v ? head_dim : head_dim_v);
  return dim < 0 ? -1 : bwd_smem_bytes(dim);
}

int64_t fna_backward_workspace_bytes(const FnaBackwardArgs& args) {
  const FnaForwardArgs& f = args.fwd;
  const int64_t n = tokens(f);
  if (n < 0 || f.batch < 0 || f.heads < 0) return -1;
  int64_t rows = 0, bytes = 0;
  if (__builtin_mul_overflow(n, f.batch, &rows) || __builtin_mul_overflow(rows, f.heads, &rows)) return -1;
  if (__builtin_mul_overflow(rows, int64_t(4), &bytes) || __builtin_add_overflow(bytes, int64_t(255), &bytes))
    return -1;
  return bytes / 256 * 256;
}

cudaError_t fna_backward_kv_tiles(const FnaBackwardArgs& args, int kv_tiles[3]) {
  for (int a = 0; a < kRank; ++a) kv_tiles[a] = 1;
  Geometry g;
  bool empty = false;
  const cudaError_t ge = fna_forward_geometry(args.fwd, &g, &empty);
  if (ge != cudaSuccess) return ge;
  if (empty) return cudaSuccess;
  KvGeometry kg;
  kv_geometry_finalize(g, args.fwd.heads_kv, kg);
  for (int a = 0; a < kRank; ++a) kv_tiles[a] = kg.kv_tiles[a];
  return cudaSuccess;
}

cudaError_t fna_backward(const FnaBackwardArgs& args, int dtype, cudaStream_t stream, bool hopper) {
  const FnaForwardArgs& f = args.fwd;
  if (f.head_dim > INT_MAX || f.head_dim_v > INT_MAX) return cudaErrorNotSupported;
  const int D = int(f.head_dim), Dv = int(f.head_dim_v);
  if (!fna_forward_supports(D, Dv, dtype, nullptr)) return cudaErrorNotSupported;
  if (f.rank < 1 || f.rank > kRank) return cudaErrorInvalidValue;
  if (f.batch < 0 || f.heads < 0 || f.heads_kv < 0) return cudaErrorInvalidValue;

  // Geometry (slabs, tiles: the caller's, else the forward's automatic choice) as the forward.
  FnaBwdParams p;
  std::memset(&p, 0, sizeof(p));
  Geometry& g = p.geo;
  bool empty = false;
  const cudaError_t ge = fna_forward_geometry(f, &g, &empty);
  if (ge != cudaSuccess) return ge;
  if (empty) return cudaSuccess;
  if (f.q == nullptr || f.k == nullptr || f.v == nullptr || f.out == nullptr || f.lse == nullptr ||
      args.d_out == nullptr || args.d_q == nullptr || args.d_k == nullptr || args.d_v == nullptr)
    return cudaErrorInvalidValue;
  const int64_t ws = fna_backward_workspace_bytes(args);
  if (ws < 0 || args.workspace == nullptr || args.workspace_bytes < ws || !bwd_aligned16(args.workspace))
    return cudaErrorInvalidValue;
  int qsum = 0, ksum = 0;
  for (int a = 0; a < kRank; ++a) {
    qsum += g.q_log2[a];
    ksum += g.kv_log2[a];
  }
  if (qsum != 6 || ksum != 6) return cudaErrorInvalidValue;  // the compiled 64-token tiles
  // Key-parallel walk over the key slab's dilation groups and key tiles (shared by kv_splits CTAs).
  kv_geometry_finalize(g, f.heads_kv, p.kvg, args.kv_splits);

  p.q = f.q;
  p.k = f.k;
  p.v = f.v;
  p.o = f.out;
  p.d_o = args.d_out;
  p.lse = f.lse;
  p.d_lse = args.d_lse;
  p.dq = args.d_q;
  p.dk = args.d_k;
  p.dv = args.d_v;
  p.delta = static_cast<float*>(args.workspace);

  auto set = [&](int64_t& b, int64_t& h, int64_t* sp, int64_t sb, int64_t sh, const int64_t* ss) {
    b = sb;
    h = sh;
    for (int a = 0; a < kRank; ++a) sp[a] = a < f.rank ? ss[a] : 0;
  };
  set(p.q_batch, p.q_head, p.q_spatial, f.q_stride_batch, f.q_stride_head, f.q_stride_spatial);
  set(p.k_batch, p.k_head, p.k_spatial, f.k_stride_batch, f.k_stride_head, f.k_stride_spatial);
  set(p.v_batch, p.v_head, p.v_spatial, f.v_stride_batch, f.v_stride_head, f.v_stride_spatial);
  set(p.o_batch, p.o_head, p.o_spatial, f.o_stride_batch, f.o_stride_head, f.o_stride_spatial);
  set(p.lse_batch, p.lse_head, p.lse_spatial, f.lse_stride_batch, f.lse_stride_head, f.lse_stride_spatial);
  set(p.do_batch, p.do_head, p.do_spatial, args.do_stride_batch, args.do_stride_head, args.do_stride_spatial);
  set(p.dq_batch, p.dq_head, p.dq_spatial, args.dq_stride_batch, args.dq_stride_head, args.dq_stride_spatial);
  set(p.dk_batch, p.dk_head, p.dk_spatial, args.dk_stride_batch, args.dk_stride_head, args.dk_stride_spatial);
  set(p.dv_batch, p.dv_head, p.dv_spatial, args.dv_stride_batch, args.dv_stride_head, args.dv_stride_spatial);
  if (args.d_lse != nullptr)
    set(p.dlse_batch, p.dlse_head, p.dlse_spatial, args.dlse_stride_batch, args.dlse_stride_head,
        args.dlse_stride_spatial);
  p.num_rows = bwd_delta_strides(g, f.batch, f.heads, p.delta_batch, p.delta_head, p.delta_spatial);
  p.heads_per_kv = f.heads / f.heads_kv;
  p.head_dim = D;
  p.head_dim_v = Dv;
  p.scale = f.scale;
  p.scale_log2 = float(double(f.scale) * 1.4426950408889634074);

  bool aligned = bwd_aligned16(p.q) && bwd_aligned16(p.k) && bwd_aligned16(p.v) && bwd_aligned16(p.d_o) &&
                 bwd_aligned16(p.dq) && bwd_aligned16(p.dk) && bwd_aligned16(p.dv);
  const int64_t strides[] = {p.q_batch,  p.q_head,  p.k_batch,  p.k_head,  p.v_batch,  p.v_head,  p.do_batch,
                             p.do_head,  p.dq_batch, p.dq_head, p.dk_batch, p.dk_head, p.dv_batch, p.dv_head};
  for (int64_t s : strides) aligned = aligned && bwd_stride_ok(s);
  for (int a = 0; a < kRank; ++a)
    aligned = aligned && bwd_stride_ok(p.q_spatial[a]) && bwd_stride_ok(p.k_spatial[a]) &&
              bwd_stride_ok(p.v_spatial[a]) && bwd_stride_ok(p.do_spatial[a]) && bwd_stride_ok(p.dq_spatial[a]) &&
              bwd_stride_ok(p.dk_spatial[a]) && bwd_stride_ok(p.dv_spatial[a]);
  p.aligned = aligned ? 1 : 0;
  bool vec_rows = bwd_aligned16(p.o) && bwd_aligned16(p.d_o) && bwd_stride_ok(p.o_batch) && bwd_stride_ok(p.o_head) &&
                  bwd_stride_ok(p.do_batch) && bwd_stride_ok(p.do_head);
  for (int a = 0; a < kRank; ++a) vec_rows = vec_rows && bwd_stride_ok(p.o_spatial[a]) && bwd_stride_ok(p.do_spatial[a]);
  p.vec_rows = vec_rows ? 1 : 0;  // head_dim_v is a multiple of 8 (checked by fna_forward_supports)

  if (dtype == 3) return simt::fna_backward_f32(p, stream);  // CUDA cores, same tiles and workspace
  // dQ and dK / dV on the SM90 kernels (Hopper) where each can run: this launcher still runs the
  // preprocess (delta, which the SM90 kernels read) and whatever they do not; the SM90 launches
  // follow on the same stream.
  const bool hopper_dq = hopper && sm90::bwd_dq_can_run(args, dtype);
  const int64_t ws90 = hopper ? sm90::bwd_dkdv_workspace_bytes(args, dtype) : 0;
  const bool hopper_dkdv = hopper && sm90::bwd_dkdv_can_run(args, dtype) && ws90 > 0 &&
                           args.workspace_bytes - ws >= ws90;  // room for its visit tables after delta
  p.skip_dq = hopper_dq ? 1 : 0;
  p.skip_dkdv = hopper_dkdv ? 1 : 0;
  const int dim = bwd_padded_dim(D > Dv ? D : Dv);
  cudaError_t e = cudaErrorNotSupported;
  if (dtype == 1) {
    switch (dim) {
      case 32: e = launch_fna_backward<1, 32>(p, stream); break;
      case 64: e = launch_fna_backward<1, 64>(p, stream); break;
      case 128: e = launch_fna_backward<1, 128>(p, stream); break;
      case 256: e = launch_fna_backward<1, 256>(p, stream); break;
    }
  } else {
    switch (dim) {
      case 32: e = launch_fna_backward<2, 32>(p, stream); break;
      case 64: e = launch_fna_backward<2, 64>(p, stream); break;
      case 128: e = launch_fna_backward<2, 128>(p, stream); break;
      case 256: e = launch_fna_backward<2, 256>(p, stream); break;
    }
  }
  // dK / dV first: the dQ kernel, which reads none of its outputs, then starts on the SMs its
  // last work tiles leave idle (programmatic dependent launch, sm90/pdl.cuh).
  bool dkdv_launched = false;
  if (e == cudaSuccess && hopper_dkdv) e = sm90::bwd_dkdv(args, dtype, stream, &dkdv_launched);
  if (e == cudaSuccess && hopper_dq) e = sm90::bwd_dq(args, dtype, stream, dkdv_launched);
  return e;
}

}  // namespace sm80
}  // namespace natten
