// Host side of the SM90 forward: support checks, tile configurations, TMA descriptors (encoded per
// call with cuTensorMapEncodeTiled, obtained through the runtime's driver entry point: the library
// never links libcuda), parameter block and (dtype, head dim) dispatch. Compiled in every build;
// the launchers exist only when NATTEN_HAS_SM90 (the sm_90a object library) is set.
#include "sm90/fna_forward.hpp"

#include <cuda.h>
#include <cuda_runtime.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "sm80/fna_forward.hpp"
#include "sm90/params.cuh"
#if defined(NATTEN_HAS_SM90)
#include "sm90/fna_forward_launch.hpp"
#endif

namespace natten {
namespace sm90 {

namespace {

int log2_exact(int x) {
  if (x <= 0 || (x & (x - 1)) != 0) return -1;
  int l = 0;
  while ((1 << l) < x) ++l;
  return l;
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// A stride is usable by TMA if it is a positive multiple of 16 bytes, or the axis has one token.
bool stride_ok(int64_t stride, int64_t extent) { return extent == 1 || (stride > 0 && (stride & 7) == 0); }

// Tile shape -> log2 per axis (axes >= rank must be 1); false if not a power-of-two box of
// 2^total tokens.
[[maybe_unused]] bool parse_tile(const int* tile, int rank, int log2s[kRank], int total_log2) {
  int total = 0;
  for (int a = 0; a < kRank; ++a) {
    if (a >= rank) {
      log2s[a] = 0;
      continue;
    }
    log2s[a] = log2_exact(tile[a]);
    if (log2s[a] < 0) return false;
    total += log2s[a];
  }
  return total == total_log2;
}

#if defined(NATTEN_HAS_SM90)
using EncodeTiledFn = CUresult (*)(CUtensorMap*, CUtensorMapDataType, cuuint32_t, void*, const cuuint64_t*,
                                   const cuuint64_t*, const cuuint32_t*, const cuuint32_t*, CUtensorMapInterleave,
                                   CUtensorMapSwizzle, CUtensorMapL2promotion, CUtensorMapFloatOOBfill);

EncodeTiledFn get_encode_fn() {
  static EncodeTiledFn fn = []() -> EncodeTiledFn {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult q = cudaDriverEntryPointSymbolNotFound;
    const cudaError_t e = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000, cudaEnableDefault, &q);
    if (e != cudaSuccess || q != cudaDriverEntryPointSuccess) {
      (void)cudaGetLastError();
      return nullptr;
    }
    return reinterpret_cast<EncodeTiledFn>(ptr);
  }();
  return fn;
}

// 5-D descriptor of a [B, X, (Y), (Z), heads, D] tensor (element strides sb, sp[3], sh) with a box
// of (64, 1, tile reversed) (see params.cuh for the coordinate mapping).
// kernel_dim: the kernel's head dim (kernel_head_dim); the box spans min(kernel_dim, 64) elements of
// the head dim, and columns past `dim` are zero-filled by TMA.
cudaError_t encode_tensor(CUtensorMap* map, int dtype, const void* ptr, int rank, int64_t batch,
                          const int64_t extent[kRank], int64_t heads, int64_t dim, int kernel_dim, int64_t sb,
                          const int64_t sp[kRank], int64_t sh, const int tile_log2[kRank], const char** detail) {
  EncodeTiledFn encode = get_encode_fn();
  if (encode == nullptr) {
    if (detail) *detail = "cuTensorMapEncodeTiled is not available from the driver (needs a CUDA 12+ driver)";
    return cudaErrorNotSupported;
  }
  const int64_t eb = 2;
  cuuint64_t dims[5];
  cuuint64_t strides[4];  // bytes, dims 1..4
  cuuint32_t box[5];
  const int chunk = kernel_dim < 64 ? kernel_dim : 64;  // head-dim elements per box (kernel_traits.cuh kChunk)
  dims[0] = cuuint64_t(dim);
  box[0] = cuuint32_t(chunk);
  dims[1] = cuuint64_t(heads);
  box[1] = 1;
  int64_t sbytes[5];
  sbytes[1] = sh * eb;
  if (rank == 1) {
    dims[2] = cuuint64_t(extent[0]); box[2] = 1u << tile_log2[0]; sbytes[2] = sp[0] * eb;
    dims[3] = cuuint64_t(batch);     box[3] = 1;                   sbytes[3] = sb * eb;
    dims[4] = 1;                     box[4] = 1;                   sbytes[4] = 0;
  } else if (rank == 2) {
    dims[2] = cuuint64_t(extent[1]); box[2] = 1u << tile_log2[1]; sbytes[2] = sp[1] * eb;
    dims[3] = cuuint64_t(extent[0]); box[3] = 1u << tile_log2[0]; sbytes[3] = sp[0] * eb;
    dims[4] = cuuint64_t(batch);     box[4] = 1;                   sbytes[4] = sb * eb;
  } else {
    dims[2] = cuuint64_t(extent[2]);         box[2] = 1u << tile_log2[2]; sbytes[2] = sp[2] * eb;
    dims[3] = cuuint64_t(extent[1]);         box[3] = 1u << tile_log2[1]; sbytes[3] = sp[1] * eb;
    dims[4] = cuuint64_t(extent[0] * batch); box[4] = 1u << tile_log2[0]; sbytes[4] = sp[0] * eb;
  }
  // Dims of one element have no meaningful stride (torch may report anything): give them the
  // packed stride of the dim below, which TMA accepts.
  int64_t packed = dim * eb;
  for (int i = 1; i < 5; ++i) {
    if (dims[i] == 1) sbytes[i] = packed;
    strides[i - 1] = cuuint64_t(sbytes[i]);
    packed = sbytes[i] * int64_t(dims[i]);
  }
  cuuint32_t elem_strides[5] = {1, 1, 1, 1, 1};
  const CUresult r = encode(map, dtype == 1 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 5,
                            const_cast<void*>(ptr), dims, strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                            chunk == 64 ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_64B,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                            CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) {
    if (detail) *detail = "cuTensorMapEncodeTiled rejected a q/k/v tensor (strides or shape outside TMA limits)";
    return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}
#endif

}  // namespace

bool fna_forward_built() {
#if defined(NATTEN_HAS_SM90)
  return true;
#else
  return false;
#endif
}

int kernel_head_dim(int head_dim, int head_dim_v) {
  const int d = head_dim > head_dim_v ? head_dim : head_dim_v;
  if (head_dim < 8 || head_dim_v < 8 || head_dim % 8 != 0 || head_dim_v % 8 != 0 || d > 256) return 0;
  return d <= 32 ? 32 : d <= 64 ? 64 : d <= 128 ? 128 : 256;
}

bool fna_forward_supports(int head_dim, int head_dim_v, int dtype, const char** reason) {
  const char* why = nullptr;
  if (dtype != 1 && dtype != 2)
    why = "the Hopper kernel supports only fp16 and bf16 (cutlass-fna runs fp32)";
  else if (kernel_head_dim(head_dim, head_dim_v) == 0)
    why = "the Hopper kernel supports head_dim and head_dim_v that are multiples of 8 in [8, 256]";
  if (reason != nullptr) *reason = why;
  return why == nullptr;
}

bool fna_forward_can_run(const FnaForwardArgs& args, int dtype, const char** reason) {
  const char* why = nullptr;
  auto fail = [&](const char* w) {
    if (why == nullptr) why = w;
  };
  if (args.head_dim > INT_MAX || args.head_dim_v > INT_MAX ||
      !fna_forward_supports(int(args.head_dim), int(args.head_dim_v), dtype, &why)) {
    if (why == nullptr) why = "the Hopper kernel supports head dims that are multiples of 8 in [8, 256]";
  }
  if (args.rank < 1 || args.rank > kRank) fail("rank must be 1, 2 or 3");
  if (args.kernel_schedule != kScheduleDefault && args.kernel_schedule != kScheduleCooperative &&
      args.kernel_schedule != kSchedulePingpong)
    fail("kernel_schedule must be 0 (default), 1 (cooperative) or 2 (pingpong)");
  for (int a = 0; a < kRank && why == nullptr; ++a) {
    if (a >= args.rank) continue;
    if (args.dilation[a] != 1)
      fail("the Hopper kernel takes dilation 1 only (natten folds dilation groups into the batch)");
    if (args.global_extent[a] > (int64_t(1) << 30)) fail("the Hopper kernel supports at most 2^30 tokens per axis");
  }
  // Slabs (global_shape / q_origin / kv_origin): the same rules as the SM80 kernel, including a key
  // slab that holds every key the query slab attends.
  if (why == nullptr && args.rank >= 1 && args.rank <= kRank && !sm80::fna_forward_axes_valid(args))
    fail("invalid problem: extents, slabs (the key slab must hold every key the query slab attends), kernel "
         "size, stride or dilation out of range");
  if (why == nullptr) {
    if (!aligned16(args.q) || !aligned16(args.k) || !aligned16(args.v) || !aligned16(args.out))
      fail("the Hopper kernel needs 16-byte aligned q, k, v and out");
    const int64_t* sps[4] = {args.q_stride_spatial, args.k_stride_spatial, args.v_stride_spatial,
                             args.o_stride_spatial};
    const int64_t sbs[4] = {args.q_stride_batch, args.k_stride_batch, args.v_stride_batch, args.o_stride_batch};
    const int64_t shs[4] = {args.q_stride_head, args.k_stride_head, args.v_stride_head, args.o_stride_head};
    const int64_t hs[4] = {args.heads, args.heads_kv, args.heads_kv, args.heads};
    for (int t = 0; t < 4; ++t) {
      const int64_t* ext = (t == 1 || t == 2) ? args.kv_extent : args.extent;  // key/value slab or query slab
      bool ok = stride_ok(sbs[t], args.batch) && stride_ok(shs[t], hs[t]);
      for (int a = 0; a < args.rank; ++a) ok = ok && stride_ok(sps[t][a], ext[a]);
      if (!ok) fail("the Hopper kernel needs batch, token and head strides that are positive multiples of 16 bytes");
      if (args.rank == 3 && args.batch > 1 && t < 3 && sbs[t] != ext[0] * sps[t][0])
        fail("rank 3 with batch > 1 needs q, k and v batch stride == X * x stride (batch is folded into X for TMA)");
    }
    if (args.rank == 3 && args.batch * (args.extent[0] > args.kv_extent[0] ? args.extent[0] : args.kv_extent[0]) + 128 >
                              INT_MAX)
      fail("the Hopper kernel needs batch * X < 2^31 for rank 3");
    if (args.batch > INT_MAX || args.heads > INT_MAX) fail("the Hopper kernel needs batch and heads < 2^31");
  }
  if (reason != nullptr) *reason = why;
  return why == nullptr;
}

int kv_tile_log2(int head_dim, int head_dim_v) {
  return kernel_head_dim(head_dim, head_dim_v) == 256 ? kTileLog2KV256 : kTileLog2;
}

int fna_forward_tile_configs(int rank, int head_dim, int head_dim_v, int* q_tiles, int* kv_tiles, int capacity) {
  if (kernel_head_dim(head_dim, head_dim_v) == 0) return 0;
  return sm80::fna_forward_tile_pairs(rank, kTileLog2, q_tiles, kv_tiles, capacity,
                                      kv_tile_log2(head_dim, head_dim_v));
}

cudaError_t fna_forward_default_tiles(const FnaForwardArgs& args, int q_tile[3], int kv_tile[3]) {
  if (args.head_dim > INT_MAX || args.head_dim_v > INT_MAX) return cudaErrorInvalidValue;
  return sm80::fna_forward_choose_tiles(args, kTileLog2, q_tile, kv_tile,
                                        kv_tile_log2(int(args.head_dim), int(args.head_dim_v)));
}

cudaError_t fna_forward(const FnaForwardArgs& args, int dtype, cudaStream_t stream, const char** detail) {
  if (detail) *detail = nullptr;
  if (!fna_forward_can_run(args, dtype, detail)) return cudaErrorNotSupported;
#if !defined(NATTEN_HAS_SM90)
  (void)stream;
  if (detail) *detail = "this build has no sm_90a kernel (NATTEN_CUDA_ARCHS lacks 90a)";
  return cudaErrorNotSupported;
#else
  for (int a = 0; a < args.rank; ++a)
    if (args.extent[a] == 0) return cudaSuccess;
  if (args.batch == 0 || args.heads == 0) return cudaSuccess;
  if (args.heads_kv <= 0 || args.heads % args.heads_kv != 0) return cudaErrorInvalidValue;

  FnaSm90Params p;
  std::memset(&p, 0, sizeof(p));
  Geometry& g = p.geo;
  int ql[kRank], kl[kRank];
  const int D = kernel_head_dim(int(args.head_dim), int(args.head_dim_v));
  if (!parse_tile(args.q_tile, args.rank, ql, kTileLog2) ||
      !parse_tile(args.kv_tile, args.rank, kl, kv_tile_log2(int(args.head_dim), int(args.head_dim_v))))
    return cudaErrorInvalidValue;
  for (int a = 0; a < kRank; ++a) {
    const bool on = a < args.rank;
    const int n = on ? int(args.global_extent[a]) : 1;  // the global grid (= extent without slabs)
    g.extent[a] = n;
    g.q_extent[a] = on ? int(args.extent[a]) : 1;
    g.kv_extent[a] = on ? int(args.kv_extent[a]) : 1;
    g.q_origin[a] = on ? int(args.q_origin[a]) : 0;
    g.kv_origin[a] = on ? int(args.kv_origin[a]) : 0;
    g.kernel[a] = on ? args.kernel_size[a] : 1;
    g.stride[a] = on ? args.stride[a] : 1;
    g.dilation[a] = 1;
    g.causal[a] = on && args.is_causal[a] ? 1 : 0;
    g.q_log2[a] = ql[a];
    g.kv_log2[a] = kl[a];
    if (g.kernel[a] < 1 || g.kernel[a] > n || g.stride[a] < 1 || g.stride[a] > g.kernel[a]) return cudaErrorInvalidValue;
  }
  g.batch = args.batch;
  g.heads = args.heads;
  sm80::geometry_finalize(g);
  if (g.num_work > INT_MAX) {
    if (detail) *detail = "more than 2^31 - 1 query tiles (batch * heads * tiles) for one launch";
    return cudaErrorNotSupported;
  }

  p.o = args.out;
  p.lse = args.lse;
  p.o_batch = args.o_stride_batch;
  p.o_head = args.o_stride_head;
  p.lse_batch = args.lse_stride_batch;
  p.lse_head = args.lse_stride_head;
  int64_t ext[kRank], kv_ext[kRank];  // query slab, key/value slab
  for (int a = 0; a < kRank; ++a) {
    const bool on = a < args.rank;
    p.o_spatial[a] = on ? args.o_stride_spatial[a] : 0;
    p.lse_spatial[a] = on ? args.lse_stride_spatial[a] : 0;
    ext[a] = on ? args.extent[a] : 1;
    kv_ext[a] = on ? args.kv_extent[a] : 1;
  }
  p.heads_per_kv = int(args.heads / args.heads_kv);
  p.rank = args.rank;
  p.fold_q = args.rank == 3 ? int(args.extent[0]) : 0;
  p.fold_kv = args.rank == 3 ? int(args.kv_extent[0]) : 0;
  p.scale_log2 = float(double(args.scale) * 1.4426950408889634074);
  p.dim_v = int(args.head_dim_v);

  cudaError_t e;
  e = encode_tensor(&p.tma_q, dtype, args.q, args.rank, args.batch, ext, args.heads, args.head_dim, D,
                    args.q_stride_batch, args.q_stride_spatial, args.q_stride_head, ql, detail);
  if (e != cudaSuccess) return e;
  e = encode_tensor(&p.tma_k, dtype, args.k, args.rank, args.batch, kv_ext, args.heads_kv, args.head_dim, D,
                    args.k_stride_batch, args.k_stride_spatial, args.k_stride_head, kl, detail);
  if (e != cudaSuccess) return e;
  e = encode_tensor(&p.tma_v, dtype, args.v, args.rank, args.batch, kv_ext, args.heads_kv, args.head_dim_v, D,
                    args.v_stride_batch, args.v_stride_spatial, args.v_stride_head, kl, detail);
  if (e != cudaSuccess) return e;

  const int sched = args.kernel_schedule == kScheduleDefault ? kDefaultSchedule : args.kernel_schedule;
  if (dtype == 1) {
    if (D == 32) return launch_fna_forward<1, 32>(p, sched, stream);
    if (D == 64) return launch_fna_forward<1, 64>(p, sched, stream);
    if (D == 128) return launch_fna_forward<1, 128>(p, sched, stream);
    if (D == 256) return launch_fna_forward<1, 256>(p, sched, stream);
  } else {
    if (D == 32) return launch_fna_forward<2, 32>(p, sched, stream);
    if (D == 64) return launch_fna_forward<2, 64>(p, sched, stream);
    if (D == 128) return launch_fna_forward<2, 128>(p, sched, stream);
    if (D == 256) return launch_fna_forward<2, 256>(p, sched, stream);
  }
  return cudaErrorNotSupported;
#endif
}

}  // namespace sm90
}  // namespace natten
