// Host helpers shared by the SM90 launchers (see tma_host.hpp). Host code only: compiled in every
// build (the descriptors need the driver at run time, found through the runtime).
#include "sm90/tma_host.hpp"

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace natten {
namespace sm90 {

namespace {
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

// Recently encoded descriptors of this thread. A descriptor is a function of the encode call's
// arguments alone (address, dtype, dims, strides, box, swizzle; the other arguments are constants
// here), and a training step encodes the same tensors again and again: q, k, v in the forward, and
// q, d_out, k, v once for each backward kernel (11 encodes of ~1 us each on the H200's host,
// benchmarks/NOTES.md, twenty-seventh session). A hit copies the 128-byte descriptor instead.
// Entries are replaced round-robin; a key is compared whole (zero-initialized, so padding bytes
// compare equal).
struct EncodeKey {
  const void* ptr;
  int dtype;
  int swizzle;
  cuuint64_t dims[5];
  cuuint64_t strides[4];
  cuuint32_t box[5];
};

struct EncodeCache {
  static constexpr int kEntries = 16;
  EncodeKey key[kEntries];
  CUtensorMap map[kEntries];
  bool used[kEntries] = {};
  int next = 0;
};

// NATTEN_HOPPER_TMA_CACHE (read per call, like the other NATTEN_HOPPER_* switches): "0" encodes every
// descriptor (A/B); "verify" (tests) also encodes on every hit and fails the launch with
// cudaErrorUnknown if the cached descriptor differs from the fresh one; anything else: the cache.
enum class EncodeCacheMode { kOff, kOn, kVerify };
EncodeCacheMode encode_cache_mode() {
  const char* e = std::getenv("NATTEN_HOPPER_TMA_CACHE");
  if (e == nullptr) return EncodeCacheMode::kOn;
  if (std::strcmp(e, "0") == 0) return EncodeCacheMode::kOff;
  if (std::strcmp(e, "verify") == 0) return EncodeCacheMode::kVerify;
  return EncodeCacheMode::kOn;
}

}  // namespace

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
bool parse_tile(const int* tile, int rank, int log2s[kRank], int total_log2) {
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
  const CUtensorMapSwizzle swizzle = chunk == 64 ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_64B;
  const EncodeCacheMode mode = encode_cache_mode();
  const bool cached = mode != EncodeCacheMode::kOff;
  thread_local EncodeCache cache;
  EncodeKey key;
  int hit = -1;
  if (cached) {
    std::memset(&key, 0, sizeof(key));
    key.ptr = ptr;
    key.dtype = dtype;
    key.swizzle = int(swizzle);
    std::memcpy(key.dims, dims, sizeof(dims));
    std::memcpy(key.strides, strides, sizeof(strides));
    std::memcpy(key.box, box, sizeof(box));
    for (int i = 0; i < EncodeCache::kEntries; ++i) {
      if (cache.used[i] && std::memcmp(&cache.key[i], &key, sizeof(key)) == 0) {
        hit = i;
        break;
      }
    }
    if (hit >= 0 && mode == EncodeCacheMode::kOn) {
      std::memcpy(map, &cache.map[hit], sizeof(CUtensorMap));
      return cudaSuccess;
    }
  }
  std::memset(map, 0, sizeof(CUtensorMap));  // canonical bytes wherever the driver writes none
  const CUresult r = encode(map, dtype == 1 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16 : CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 5,
                            const_cast<void*>(ptr), dims, strides, box, elem_strides, CU_TENSOR_MAP_INTERLEAVE_NONE,
                            swizzle, CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS) {
    if (detail) *detail = "cuTensorMapEncodeTiled rejected a q/k/v tensor (strides or shape outside TMA limits)";
    return cudaErrorInvalidValue;
  }
  if (hit >= 0) {  // verify mode: the cached descriptor must be the one just encoded
    if (std::memcmp(&cache.map[hit], map, sizeof(CUtensorMap)) != 0) {
      if (detail) *detail = "NATTEN_HOPPER_TMA_CACHE=verify: a cached TMA descriptor differs from a fresh encode";
      return cudaErrorUnknown;
    }
    return cudaSuccess;
  }
  if (cached) {
    const int slot = cache.next;
    cache.next = (slot + 1) % EncodeCache::kEntries;
    std::memcpy(&cache.key[slot], &key, sizeof(key));
    std::memcpy(&cache.map[slot], map, sizeof(CUtensorMap));
    cache.used[slot] = true;
  }
  return cudaSuccess;
}


cudaError_t encode_backward_inputs(const FnaBackwardArgs& args, int dtype, int kernel_dim, const int q_log2[kRank],
                                   const int kv_log2[kRank], CUtensorMap* q, CUtensorMap* d_o, CUtensorMap* k,
                                   CUtensorMap* v) {
  const FnaForwardArgs& f = args.fwd;
  int64_t ext[kRank], kv_ext[kRank];
  for (int a = 0; a < kRank; ++a) {
    ext[a] = a < f.rank ? f.extent[a] : 1;
    kv_ext[a] = a < f.rank ? f.kv_extent[a] : 1;
  }
  const char* detail = nullptr;
  cudaError_t e = encode_tensor(q, dtype, f.q, f.rank, f.batch, ext, f.heads, f.head_dim, kernel_dim,
                                f.q_stride_batch, f.q_stride_spatial, f.q_stride_head, q_log2, &detail);
  if (e == cudaSuccess)
    e = encode_tensor(d_o, dtype, args.d_out, f.rank, f.batch, ext, f.heads, f.head_dim_v, kernel_dim,
                      args.do_stride_batch, args.do_stride_spatial, args.do_stride_head, q_log2, &detail);
  if (e == cudaSuccess)
    e = encode_tensor(k, dtype, f.k, f.rank, f.batch, kv_ext, f.heads_kv, f.head_dim, kernel_dim, f.k_stride_batch,
                      f.k_stride_spatial, f.k_stride_head, kv_log2, &detail);
  if (e == cudaSuccess)
    e = encode_tensor(v, dtype, f.v, f.rank, f.batch, kv_ext, f.heads_kv, f.head_dim_v, kernel_dim, f.v_stride_batch,
                      f.v_stride_spatial, f.v_stride_head, kv_log2, &detail);
  return e;
}

cudaError_t build_geometry(const FnaForwardArgs& args, const int* q_tile, int q_log2_total, const int* kv_tile,
                           int kv_log2_total, Geometry* out) {
  Geometry& g = *out;
  std::memset(&g, 0, sizeof(g));
  int ql[kRank], kl[kRank];
  if (!parse_tile(q_tile, args.rank, ql, q_log2_total) || !parse_tile(kv_tile, args.rank, kl, kv_log2_total))
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
  return cudaSuccess;
}

namespace {
// NATTEN_HOPPER_PERSISTENT, read once per process: -1 one CTA per SM, 0 off, N > 0 at most N CTAs.
long persistent_mode() {
  static const long mode = [] {
    const char* e = std::getenv("NATTEN_HOPPER_PERSISTENT");
    if (e == nullptr || *e == '\0') return -1L;
    char* end = nullptr;
    const long v = std::strtol(e, &end, 10);
    return (end != nullptr && *end == '\0' && v >= 0) ? v : -1L;
  }();
  return mode;
}
}  // namespace

bool persistent_enabled() { return persistent_mode() != 0; }

int64_t persistent_grid(int64_t num_work, int dev) {
  const long mode = persistent_mode();
  if (mode == 0) return num_work;
  if (mode > 0) return num_work < mode ? num_work : int64_t(mode);
  static std::atomic<int> sms[64];
  if (dev < 0 || dev >= 64) return num_work;
  int n = sms[dev].load(std::memory_order_relaxed);
  if (n <= 0) {
    if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n <= 0) {
      (void)cudaGetLastError();
      return num_work;
    }
    sms[dev].store(n, std::memory_order_relaxed);
  }
  return num_work < n ? num_work : n;
}

}  // namespace sm90
}  // namespace natten
