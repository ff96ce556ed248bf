// The C ABI of natten-kernels: validation, device checks, conversion to natten::FnaForwardArgs and
// the launch through the kernel dispatch. Host-only C++ (compiled by the host compiler).
//
// Rules of this file:
//   * every exported function is extern "C", noexcept, and catches everything;
//   * nothing here aborts, exits or prints; failures are a status + natten_last_error();
//   * argument checks come before support checks, which come before any CUDA call, so argument
//     errors are reported identically with or without a GPU.
#include "natten_kernels.h"

#include <cuda_runtime_api.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>
#include <vector>

#include "internal.hpp"
#include "natten/fna_args.hpp"
#include "natten_build_config.h"
#include "natten/fna_backward_args.hpp"
#include "sm80/fna_backward.hpp"
#include "sm80/fna_forward.hpp"
#include "sm90/bwd_dq.hpp"
#include "sm90/fna_forward.hpp"

static_assert(sizeof(void*) == 8, "natten-kernels supports 64-bit targets only");
static_assert(sizeof(natten_fna_forward_params) == NATTEN_FNA_FORWARD_PARAMS_SIZE_V1_1,
              "natten_fna_forward_params changed size: that is an ABI change (see docs/abi.md)");
static_assert(offsetof(natten_fna_forward_params, global_shape) == NATTEN_FNA_FORWARD_PARAMS_SIZE_V1_0,
              "ABI 1.1 fields must follow the 1.0 layout");
static_assert(sizeof(natten_fna_problem) == NATTEN_FNA_PROBLEM_SIZE_V1_0,
              "natten_fna_problem changed size: that is an ABI change (see docs/abi.md)");
static_assert(sizeof(natten_tile_config) == 40, "natten_tile_config layout is fixed");
static_assert(offsetof(natten_fna_forward_params, stream) == 440, "layout");
static_assert(offsetof(natten_fna_forward_params, q_stride) == 120, "layout");
static_assert(offsetof(natten_fna_forward_params, kernel_size) == 352, "layout");
static_assert(natten::kMaxRank == NATTEN_MAX_RANK, "internal and ABI max rank differ");
static_assert(sizeof(natten_fna_backward_params) == NATTEN_FNA_BACKWARD_PARAMS_SIZE_V1_3,
              "natten_fna_backward_params changed size: that is an ABI change (see docs/abi.md)");
static_assert(offsetof(natten_fna_backward_params, kv_splits) == NATTEN_FNA_BACKWARD_PARAMS_SIZE_V1_2,
              "ABI 1.3 fields must follow the 1.2 layout");
static_assert(offsetof(natten_fna_backward_params, global_shape) == NATTEN_FNA_BACKWARD_PARAMS_SIZE_V1_1,
              "ABI 1.2 fields must follow the 1.1 layout");
static_assert(offsetof(natten_fna_backward_params, q_stride) == 160, "layout");
static_assert(offsetof(natten_fna_backward_params, kernel_size) == 624, "layout");
static_assert(offsetof(natten_fna_backward_params, stream) == 736, "layout");

namespace natten {
namespace abi {

// ---------------------------------------------------------------------------------------------
// Last error
// ---------------------------------------------------------------------------------------------

namespace {
// Constant-initialized, so no TLS constructor/destructor is involved (safe under dlopen/dlclose).
thread_local char t_last_error[2048] = {0};
}  // namespace

int fail(int status, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(t_last_error, sizeof(t_last_error), fmt, ap);
  va_end(ap);
  return status;
}

const char* last_error() noexcept { return t_last_error; }

namespace {

const char* dtype_name(int dtype) {
  switch (dtype) {
    case NATTEN_DTYPE_FP16: return "fp16";
    case NATTEN_DTYPE_BF16: return "bf16";
    case NATTEN_DTYPE_FP32: return "fp32";
    default: return "invalid";
  }
}

int64_t dtype_bytes(int dtype) { return dtype == NATTEN_DTYPE_FP32 ? 4 : 2; }

// ---------------------------------------------------------------------------------------------
// Struct header checks (struct_size / unknown trailing fields)
// ---------------------------------------------------------------------------------------------

constexpr uint64_t kMaxStructSize = 1u << 16;

// v1_size: the smallest size accepted (ABI 1.0); known_size: sizeof the struct in this library.
int check_struct_size(const void* p, uint64_t size, uint64_t v1_size, uint64_t known_size, const char* name) {
  if (size < v1_size) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT,
                "%s.struct_size is %llu but must be at least %llu (sizeof(%s) of ABI 1.0); set it to "
                "sizeof(%s) as compiled against natten_kernels.h",
                name, (unsigned long long)size, (unsigned long long)v1_size, name, name);
  }
  if (size > kMaxStructSize) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT,
                "%s.struct_size is %llu, larger than any version of the struct (max %llu); is it "
                "initialized?",
                name, (unsigned long long)size, (unsigned long long)kMaxStructSize);
  }
  // Fields appended by a newer header must be zero (their default) for this library to ignore them.
  const unsigned char* bytes = static_cast<const unsigned char*>(p);
  for (uint64_t i = known_size; i < size; ++i) {
    if (bytes[i] != 0) {
      return fail(NATTEN_STATUS_UNSUPPORTED,
                  "%s has struct_size %llu and a non-zero byte at offset %llu, past the %llu bytes "
                  "this library (ABI %d.%d) knows; the caller uses a newer field: upgrade natten-kernels",
                  name, (unsigned long long)size, (unsigned long long)i, (unsigned long long)known_size,
                  NATTEN_ABI_VERSION_MAJOR, NATTEN_ABI_VERSION_MINOR);
    }
  }
  return NATTEN_STATUS_SUCCESS;
}

// ---------------------------------------------------------------------------------------------
// Devices
// ---------------------------------------------------------------------------------------------

const char* cuda_err_name(cudaError_t e) {
  const char* n = cudaGetErrorName(e);
  return n ? n : "cudaError?";
}
const char* cuda_err_string(cudaError_t e) {
  const char* s = cudaGetErrorString(e);
  return s ? s : "unknown CUDA error";
}

int cuda_fail(cudaError_t e, const char* what) {
  return fail(NATTEN_STATUS_CUDA_ERROR, "%s failed: %s (%s, code %d)", what, cuda_err_string(e),
              cuda_err_name(e), static_cast<int>(e));
}

// Number of visible devices; NO_DEVICE (with a message) when the driver/runtime has none.
int device_count(int* count) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();  // do not leave our probe's error for the caller's next check
    *count = 0;
    return fail(NATTEN_STATUS_NO_DEVICE,
                "no CUDA device available: cudaGetDeviceCount failed with %s (%s)", cuda_err_name(e),
                cuda_err_string(e));
  }
  if (n <= 0) {
    *count = 0;
    return fail(NATTEN_STATUS_NO_DEVICE, "no CUDA device available: cudaGetDeviceCount reported 0 devices");
  }
  *count = n;
  return NATTEN_STATUS_SUCCESS;
}

// Resolves `device` (-1 = current) to an ordinal; checks it exists.
int resolve_device(int device, const char* arg, int* out) {
  int count = 0;
  int st = device_count(&count);
  if (st != NATTEN_STATUS_SUCCESS) return st;
  if (device == -1) {
    int cur = 0;
    const cudaError_t e = cudaGetDevice(&cur);
    if (e != cudaSuccess) return cuda_fail(e, "cudaGetDevice");
    *out = cur;
    return NATTEN_STATUS_SUCCESS;
  }
  if (device < 0 || device >= count) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT,
                "%s is %d but only %d CUDA device(s) are visible (valid: 0..%d, or -1 for the current "
                "device)",
                arg, device, count, count - 1);
  }
  *out = device;
  return NATTEN_STATUS_SUCCESS;
}

constexpr int kCcCacheSize = 64;
std::atomic<int> g_cc_cache[kCcCacheSize];  // 0 = unknown, else 10*major + minor

int device_cc(int device, int* major, int* minor) {
  if (device < kCcCacheSize) {
    const int v = g_cc_cache[device].load(std::memory_order_relaxed);
    if (v > 0) {
      *major = v / 10;
      *minor = v % 10;
      return NATTEN_STATUS_SUCCESS;
    }
  }
  int ma = 0, mi = 0;
  cudaError_t e = cudaDeviceGetAttribute(&ma, cudaDevAttrComputeCapabilityMajor, device);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&mi, cudaDevAttrComputeCapabilityMinor, device);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return cuda_fail(e, "cudaDeviceGetAttribute(compute capability)");
  }
  if (device < kCcCacheSize) g_cc_cache[device].store(ma * 10 + mi, std::memory_order_relaxed);
  *major = ma;
  *minor = mi;
  return NATTEN_STATUS_SUCCESS;
}

// Arch-level support shared by forward and the query API.
int check_arch(int arch) {
  if (arch < 80) {
    return fail(NATTEN_STATUS_UNSUPPORTED,
                "compute capability %d.%d is not supported: natten-kernels needs SM 8.0 or newer", arch / 10,
                arch % 10);
  }
  if (!build_has_image_for(arch)) {
    return fail(NATTEN_STATUS_UNSUPPORTED,
                "this build of natten-kernels has no kernel image for compute capability %d.%d (built for "
                "%s); rebuild with NATTEN_CUDA_ARCHS including it",
                arch / 10, arch % 10, build_archs_string());
  }
  return NATTEN_STATUS_SUCCESS;
}

// Makes `device` current for the scope, restoring the previous one.
class DeviceGuard {
 public:
  DeviceGuard() = default;
  cudaError_t set(int device) {
    int cur = 0;
    cudaError_t e = cudaGetDevice(&cur);
    if (e != cudaSuccess) return e;
    if (cur == device) return cudaSuccess;
    e = cudaSetDevice(device);
    if (e == cudaSuccess) {
      prev_ = cur;
      switched_ = true;
    }
    return e;
  }
  ~DeviceGuard() {
    if (switched_) (void)cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = 0;
  bool switched_ = false;
};

// ---------------------------------------------------------------------------------------------
// Forward validation
// ---------------------------------------------------------------------------------------------

struct TensorCheck {
  const char* name;     // "q"
  const char* stride_arg;  // "q_stride"
  int ndim;
  int64_t sizes[NATTEN_MAX_TENSOR_DIMS];
  const int64_t* strides;
  int64_t elem_bytes;
  bool contiguous_last;  // last dim must have stride 1
  int64_t stride_multiple;  // non-last strides must be multiples of this (1 = any)
  bool output;           // no zero strides on dims of size > 1
};

void dim_names(int rank, bool has_head_dim, const char* names[NATTEN_MAX_TENSOR_DIMS]) {
  static const char* axis[3] = {"axis 0", "axis 1", "axis 2"};
  int i = 0;
  names[i++] = "batch";
  for (int a = 0; a < rank; ++a) names[i++] = axis[a];
  names[i++] = "head";
  if (has_head_dim) names[i++] = "head dim";
}

int check_tensor(const TensorCheck& t, const void* ptr, int rank) {
  const char* names[NATTEN_MAX_TENSOR_DIMS] = {nullptr};
  dim_names(rank, t.ndim == rank + 3, names);
  for (int d = 0; d < t.ndim; ++d) {
    if (t.strides[d] < 0) {
      return fail(NATTEN_STATUS_INVALID_ARGUMENT, "%s[%d] (%s) is %lld; strides must be non-negative",
                  t.stride_arg, d, names[d], (long long)t.strides[d]);
    }
  }
  const int last = t.ndim - 1;
  if (t.contiguous_last && t.sizes[last] > 1 && t.strides[last] != 1) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT,
                "%s[%d] (%s) is %lld; the %s dimension of %s must be contiguous (stride 1)", t.stride_arg,
                last, names[last], (long long)t.strides[last], names[last], t.name);
  }
  if (t.stride_multiple > 1) {
    for (int d = 0; d < last; ++d) {
      if (t.sizes[d] > 1 && t.strides[d] % t.stride_multiple != 0) {
        return fail(NATTEN_STATUS_INVALID_ARGUMENT,
                    "%s[%d] (%s) is %lld, not a multiple of %lld elements (16 bytes): every row of %s must "
                    "stay 16-byte aligned",
                    t.stride_arg, d, names[d], (long long)t.strides[d], (long long)t.stride_multiple, t.name);
      }
    }
  }
  if (t.output) {
    for (int d = 0; d < t.ndim; ++d) {
      if (t.sizes[d] > 1 && t.strides[d] == 0) {
        return fail(NATTEN_STATUS_INVALID_ARGUMENT,
                    "%s[%d] (%s) is 0 for a dimension of size %lld: elements of the output %s would alias",
                    t.stride_arg, d, names[d], (long long)t.sizes[d], t.name);
      }
    }
  }
  // Largest element offset and byte extent must fit int64 (and the address space).
  int64_t max_off = 0;
  for (int d = 0; d < t.ndim; ++d) {
    int64_t term = 0;
    if (mul_overflow(t.sizes[d] - 1, t.strides[d], &term) || add_overflow(max_off, term, &max_off)) {
      return fail(NATTEN_STATUS_INVALID_ARGUMENT,
                  "%s: the largest element offset overflows int64 (%s[%d] (%s) = %lld with size %lld)",
                  t.name, t.stride_arg, d, names[d], (long long)t.strides[d], (long long)t.sizes[d]);
    }
  }
  int64_t bytes = 0;
  if (add_overflow(max_off, 1, &bytes) || mul_overflow(bytes, t.elem_bytes, &bytes)) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT,
                "%s: the byte extent overflows int64 (largest element offset %lld)", t.name, (long long)max_off);
  }
  const uint64_t base = reinterpret_cast<uintptr_t>(ptr);
  if (base + static_cast<uint64_t>(bytes) < base) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT,
                "%s: pointer 0x%llx plus its extent of %lld bytes wraps around the address space", t.name,
                (unsigned long long)base, (long long)bytes);
  }
  return NATTEN_STATUS_SUCCESS;
}

int check_pointer(const void* p, const char* name, uintptr_t align, bool nullable) {
  if (p == nullptr) {
    if (nullable) return NATTEN_STATUS_SUCCESS;
    return fail(NATTEN_STATUS_INVALID_ARGUMENT, "%s is NULL", name);
  }
  const uintptr_t v = reinterpret_cast<uintptr_t>(p);
  if (v % align != 0) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT, "%s (0x%llx) is not %llu-byte aligned", name,
                (unsigned long long)v, (unsigned long long)align);
  }
  return NATTEN_STATUS_SUCCESS;
}

// Reads a tile request; *set tells whether the caller fixed it (all entries > 0) or left it to the
// library (all entries 0).
int check_tile(const int32_t* tile, int rank, const char* name, bool* set) {
  int zeros = 0;
  for (int a = 0; a < rank; ++a) {
    if (tile[a] < 0) {
      return fail(NATTEN_STATUS_INVALID_ARGUMENT, "%s[%d] is %d; tile sizes must be positive (or all 0 to choose)",
                  name, a, tile[a]);
    }
    zeros += tile[a] == 0;
  }
  if (zeros != 0 && zeros != rank) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT,
                "%s = (%d, %d, %d)[:%d] mixes zero and non-zero entries; give all %d entries or all 0 to let "
                "the library choose",
                name, tile[0], rank > 1 ? tile[1] : 0, rank > 2 ? tile[2] : 0, rank, rank);
  }
  *set = zeros == 0;
  return NATTEN_STATUS_SUCCESS;
}

// The caller's params as this library reads them: the first struct_size bytes (checked), fields
// past struct_size (a caller compiled against an older minor) zero, i.e. at their defaults.
int read_forward_params(const natten_fna_forward_params* user, natten_fna_forward_params* p) {
  if (user == nullptr) return fail(NATTEN_STATUS_INVALID_ARGUMENT, "params is NULL");
  const uint64_t size = user->struct_size;
  NATTEN_CHECK(check_struct_size(user, size, NATTEN_FNA_FORWARD_PARAMS_SIZE_V1_0, sizeof(*p),
                                 "natten_fna_forward_params"));
  std::memset(p, 0, sizeof(*p));
  std::memcpy(p, user, size < sizeof(*p) ? size_t(size) : sizeof(*p));
  return NATTEN_STATUS_SUCCESS;
}

// Pure argument checks (no CUDA calls) of params read by read_forward_params. *tiles_set: the
// caller fixed q_tile / kv_tile; *region: the resolved slab fields.
int validate_forward_args(const natten_fna_forward_params* p, bool* tiles_set, FnaRegion* region) {
  if (p->kernel_schedule < NATTEN_KERNEL_SCHEDULE_DEFAULT || p->kernel_schedule > NATTEN_KERNEL_SCHEDULE_PINGPONG) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT,
                "kernel_schedule is %d; expected NATTEN_KERNEL_SCHEDULE_DEFAULT (0), "
                "NATTEN_KERNEL_SCHEDULE_COOPERATIVE (1) or NATTEN_KERNEL_SCHEDULE_PINGPONG (2)",
                p->kernel_schedule);
  }
  if (p->dtype != NATTEN_DTYPE_FP16 && p->dtype != NATTEN_DTYPE_BF16 && p->dtype != NATTEN_DTYPE_FP32) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT,
                "dtype is %d; expected NATTEN_DTYPE_FP16 (1), NATTEN_DTYPE_BF16 (2) or NATTEN_DTYPE_FP32 (3)",
                p->dtype);
  }
  const int rank = p->rank;
  if (rank < 1 || rank > NATTEN_MAX_RANK) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT, "rank is %d; it must be 1, 2 or 3", rank);
  }
  // Shapes.
  if (p->batch < 1) return fail(NATTEN_STATUS_INVALID_ARGUMENT, "batch is %lld; it must be >= 1", (long long)p->batch);
  for (int a = 0; a < rank; ++a) {
    if (p->shape[a] < 1) {
      return fail(NATTEN_STATUS_INVALID_ARGUMENT, "shape[%d] is %lld; it must be >= 1", a, (long long)p->shape[a]);
    }
  }
  if (p->heads < 1) return fail(NATTEN_STATUS_INVALID_ARGUMENT, "heads is %lld; it must be >= 1", (long long)p->heads);
  if (p->heads_kv < 1) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT, "heads_kv is %lld; it must be >= 1", (long long)p->heads_kv);
  }
  if (p->head_dim < 1) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT, "head_dim is %lld; it must be >= 1", (long long)p->head_dim);
  }
  if (p->head_dim_v < 1) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT, "head_dim_v is %lld; it must be >= 1", (long long)p->head_dim_v);
  }
  if (p->heads % p->heads_kv != 0) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT,
                "heads (%lld) is not a multiple of heads_kv (%lld); GQA/MQA needs heads %% heads_kv == 0",
                (long long)p->heads, (long long)p->heads_kv);
  }
  // Slabs of a larger grid (ABI 1.1).
  NATTEN_CHECK(resolve_fna_region(p, region));
  const FnaRegion& r = *region;
  // Pointers.
  NATTEN_CHECK(check_pointer(p->q, "q", 16, false));
  NATTEN_CHECK(check_pointer(p->k, "k", 16, false));
  NATTEN_CHECK(check_pointer(p->v, "v", 16, false));
  NATTEN_CHECK(check_pointer(p->out, "out", 16, false));
  NATTEN_CHECK(check_pointer(p->lse, "lse", 4, true));
  // Strides.
  const int64_t eb = dtype_bytes(p->dtype);
  TensorCheck t[5] = {};
  const int nd = rank + 3;
  // grid: token grid of the tensor (k and v: the key slab's, = shape without slabs).
  auto fill = [&](TensorCheck& c, const char* name, const char* sarg, const int64_t* strides, const int64_t* grid,
                  int64_t h, int64_t d, int64_t bytes, bool out, bool has_d) {
    c.name = name;
    c.stride_arg = sarg;
    c.ndim = has_d ? nd : nd - 1;
    c.sizes[0] = p->batch;
    for (int a = 0; a < rank; ++a) c.sizes[1 + a] = grid[a];
    c.sizes[1 + rank] = h;
    if (has_d) c.sizes[2 + rank] = d;
    c.strides = strides;
    c.elem_bytes = bytes;
    c.contiguous_last = has_d;
    c.stride_multiple = 1;  // the kernel has a non-vectorized path for rows that are not 16-byte aligned
    c.output = out;
  };
  fill(t[0], "q", "q_stride", p->q_stride, p->shape, p->heads, p->head_dim, eb, false, true);
  fill(t[1], "k", "k_stride", p->k_stride, r.kv_shape, p->heads_kv, p->head_dim, eb, false, true);
  fill(t[2], "v", "v_stride", p->v_stride, r.kv_shape, p->heads_kv, p->head_dim_v, eb, false, true);
  fill(t[3], "out", "out_stride", p->out_stride, p->shape, p->heads, p->head_dim_v, eb, true, true);
  fill(t[4], "lse", "lse_stride", p->lse_stride, p->shape, p->heads, 1, 4, true, false);
  NATTEN_CHECK(check_tensor(t[0], p->q, rank));
  NATTEN_CHECK(check_tensor(t[1], p->k, rank));
  NATTEN_CHECK(check_tensor(t[2], p->v, rank));
  NATTEN_CHECK(check_tensor(t[3], p->out, rank));
  if (p->lse != nullptr) NATTEN_CHECK(check_tensor(t[4], p->lse, rank));
  // Window parameters.
  for (int a = 0; a < rank; ++a) {
    const int K = p->kernel_size[a], s = p->stride[a], d = p->dilation[a];
    if (K < 2) {
      return fail(NATTEN_STATUS_INVALID_ARGUMENT, "kernel_size[%d] is %d; it must be >= 2", a, K);
    }
    if (s < 1 || s > K) {
      return fail(NATTEN_STATUS_INVALID_ARGUMENT,
                  "stride[%d] is %d; it must satisfy 1 <= stride <= kernel_size (kernel_size[%d] = %d)", a, s, a, K);
    }
    if (d < 1) return fail(NATTEN_STATUS_INVALID_ARGUMENT, "dilation[%d] is %d; it must be >= 1", a, d);
    if (static_cast<int64_t>(K) * static_cast<int64_t>(d) > r.global_shape[a]) {  // = shape without slabs
      return fail(NATTEN_STATUS_INVALID_ARGUMENT,
                  "kernel_size[%d] * dilation[%d] = %d * %d = %lld exceeds %s[%d] = %lld", a, a, K, d,
                  (long long)K * d, r.sliced ? "global_shape" : "shape", a, (long long)r.global_shape[a]);
    }
    if (p->is_causal[a] != 0 && p->is_causal[a] != 1) {
      return fail(NATTEN_STATUS_INVALID_ARGUMENT, "is_causal[%d] is %d; it must be 0 or 1", a, p->is_causal[a]);
    }
  }
  NATTEN_CHECK(check_fna_region_coverage(p, r));
  if (!std::isfinite(p->scale) || p->scale == 0.0f) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT, "scale is %g; it must be finite and non-zero (usually head_dim ** -0.5)",
                (double)p->scale);
  }
  bool q_set = false, kv_set = false;
  NATTEN_CHECK(check_tile(p->q_tile, rank, "q_tile", &q_set));
  NATTEN_CHECK(check_tile(p->kv_tile, rank, "kv_tile", &kv_set));
  if (q_set != kv_set) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT,
                "%s is given but %s is all 0; give both tile shapes or neither (all 0 = let the library choose)",
                q_set ? "q_tile" : "kv_tile", q_set ? "kv_tile" : "q_tile");
  }
  *tiles_set = q_set;
  if (p->backend < NATTEN_BACKEND_AUTO || p->backend > NATTEN_BACKEND_BLACKWELL_FNA) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT,
                "backend is %d; expected NATTEN_BACKEND_AUTO (0), NATTEN_BACKEND_CUTLASS_FNA_SM80 (1), "
                "NATTEN_BACKEND_HOPPER_FNA (2) or NATTEN_BACKEND_BLACKWELL_FNA (3)",
                p->backend);
  }
  if (p->device < -1) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT, "device is %d; it must be a device ordinal or -1 (current device)",
                p->device);
  }
  return NATTEN_STATUS_SUCCESS;
}

int check_backend_supported(int backend) {
  if (backend == NATTEN_BACKEND_BLACKWELL_FNA) {
    return fail(NATTEN_STATUS_UNSUPPORTED, "backend NATTEN_BACKEND_BLACKWELL_FNA (%d) is reserved and not part of this build",
                backend);
  }
  return NATTEN_STATUS_SUCCESS;
}

// The Hopper backward kernels are reached through NATTEN_BACKEND_AUTO (sm80/fna_backward.cu).
int check_backward_backend_supported(int backend) {
  if (backend == NATTEN_BACKEND_HOPPER_FNA) {
    return fail(NATTEN_STATUS_UNSUPPORTED,
                "NATTEN_BACKEND_HOPPER_FNA is not a backward backend; use NATTEN_BACKEND_AUTO (on SM 9.0 it runs dQ "
                "and dK / dV on the SM90 kernels where they can, the rest on SM80) or "
                "NATTEN_BACKEND_CUTLASS_FNA_SM80 (all on SM80)");
  }
  return check_backend_supported(backend);
}

// NATTEN_BACKEND_AUTO picks the Hopper kernel on SM 9.0 for the problems it supports unless the
// environment variable NATTEN_DISABLE_HOPPER is set to a non-empty value other than "0".
bool hopper_auto_enabled() {
  const char* e = std::getenv("NATTEN_DISABLE_HOPPER");
  return e == nullptr || e[0] == '\0' || std::strcmp(e, "0") == 0;
}

int kernel_dtype_of(int dtype) {
  return dtype == NATTEN_DTYPE_FP16 ? 1 : dtype == NATTEN_DTYPE_BF16 ? 2 : 3;
}

// Limits of the SM80 kernel's indexing (it keeps per-axis token coordinates in 32-bit ints).
int check_sm80_limits(const natten_fna_forward_params* p, const FnaRegion& r) {
  for (int a = 0; a < p->rank; ++a) {
    // Slabs lie inside the global grid, so its extent bounds every coordinate.
    const int64_t n = r.global_shape[a];
    if (n > kMaxKernelAxis) {
      return fail(NATTEN_STATUS_UNSUPPORTED,
                  "%s[%d] is %lld; the SM80 kernel supports at most %lld tokens per axis (32-bit "
                  "coordinates)",
                  r.sliced ? "global_shape" : "shape", a, (long long)n, (long long)kMaxKernelAxis);
    }
  }
  return NATTEN_STATUS_SUCCESS;
}

void fill_args(const natten_fna_forward_params* p, const FnaRegion& r, FnaForwardArgs* a) {
  std::memset(a, 0, sizeof(*a));
  const int rank = p->rank;
  a->rank = rank;
  a->batch = p->batch;
  a->heads = p->heads;
  a->heads_kv = p->heads_kv;
  a->head_dim = p->head_dim;
  a->head_dim_v = p->head_dim_v;
  a->q = p->q;
  a->k = p->k;
  a->v = p->v;
  a->out = p->out;
  a->lse = p->lse;
  auto strides = [&](const int64_t* s, int64_t& b, int64_t* sp, int64_t& h) {
    b = s[0];
    for (int i = 0; i < kMaxRank; ++i) sp[i] = i < rank ? s[1 + i] : 0;
    h = s[1 + rank];
  };
  strides(p->q_stride, a->q_stride_batch, a->q_stride_spatial, a->q_stride_head);
  strides(p->k_stride, a->k_stride_batch, a->k_stride_spatial, a->k_stride_head);
  strides(p->v_stride, a->v_stride_batch, a->v_stride_spatial, a->v_stride_head);
  strides(p->out_stride, a->o_stride_batch, a->o_stride_spatial, a->o_stride_head);
  if (p->lse != nullptr) strides(p->lse_stride, a->lse_stride_batch, a->lse_stride_spatial, a->lse_stride_head);
  for (int i = 0; i < kMaxRank; ++i) {
    const bool on = i < rank;
    a->extent[i] = on ? p->shape[i] : 1;
    a->global_extent[i] = r.global_shape[i];  // entries past rank: 1 (FnaRegion)
    a->kv_extent[i] = r.kv_shape[i];
    a->q_origin[i] = r.q_origin[i];
    a->kv_origin[i] = r.kv_origin[i];
    a->kernel_size[i] = on ? p->kernel_size[i] : 1;
    a->stride[i] = on ? p->stride[i] : 1;
    a->dilation[i] = on ? p->dilation[i] : 1;
    a->is_causal[i] = on ? (p->is_causal[i] != 0) : false;
    a->q_tile[i] = on ? p->q_tile[i] : 1;
    a->kv_tile[i] = on ? p->kv_tile[i] : 1;
  }
  a->scale = p->scale;
  a->kernel_schedule = p->kernel_schedule;  // 0 = default; read by the Hopper kernel only
}

// Launches the Hopper kernel. With `fallback` (AUTO), a problem the kernel turns down before
// launching (a TMA descriptor the driver rejects) returns NATTEN_STATUS_UNSUPPORTED *without*
// recording an error so the caller can run the SM80 kernel instead.
int launch_hopper(const natten_fna_forward_params* p, const FnaForwardArgs& args, int dev, bool fallback) {
  DeviceGuard guard;
  cudaError_t e = guard.set(dev);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return cuda_fail(e, "cudaSetDevice");
  }
  const char* detail = nullptr;
  e = natten::sm90::fna_forward(args, kernel_dtype_of(p->dtype), static_cast<cudaStream_t>(p->stream), &detail);
  if (e != cudaSuccess && detail != nullptr) {
    (void)cudaGetLastError();
    if (fallback) return NATTEN_STATUS_UNSUPPORTED;
    return fail(NATTEN_STATUS_UNSUPPORTED, "NATTEN_BACKEND_HOPPER_FNA cannot run this problem: %s", detail);
  }
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return fail(NATTEN_STATUS_CUDA_ERROR,
                "natten_fna_forward: launching the Hopper kernel (%s, q_tile (%d, %d, %d), kv_tile (%d, %d, %d)) "
                "failed: %s (%s, code %d)",
                dtype_name(p->dtype), args.q_tile[0], args.q_tile[1], args.q_tile[2], args.kv_tile[0],
                args.kv_tile[1], args.kv_tile[2], cuda_err_string(e), cuda_err_name(e), static_cast<int>(e));
  }
  e = cudaGetLastError();
  if (e != cudaSuccess) {
    return fail(NATTEN_STATUS_CUDA_ERROR, "natten_fna_forward: CUDA error after the Hopper kernel launch: %s (%s, code %d)",
                cuda_err_string(e), cuda_err_name(e), static_cast<int>(e));
  }
  return NATTEN_STATUS_SUCCESS;
}

// Tiles of the Hopper kernel into args (the caller's if given, else the chooser's).
int hopper_tiles(const natten_fna_forward_params* p, bool tiles_set, FnaForwardArgs* args) {
  if (tiles_set) return hopper_check_tiles(p->rank, p->head_dim, p->head_dim_v, p->q_tile, p->kv_tile);
  int qt[kMaxRank] = {1, 1, 1}, kt[kMaxRank] = {1, 1, 1};
  const cudaError_t te = natten::sm90::fna_forward_default_tiles(*args, qt, kt);
  if (te != cudaSuccess) {
    return fail(NATTEN_STATUS_INTERNAL_ERROR, "choosing a Hopper tile configuration failed: %s (%s)",
                cuda_err_string(te), cuda_err_name(te));
  }
  for (int i = 0; i < kMaxRank; ++i) {
    args->q_tile[i] = i < p->rank ? qt[i] : 1;
    args->kv_tile[i] = i < p->rank ? kt[i] : 1;
  }
  return NATTEN_STATUS_SUCCESS;
}

// backend == NATTEN_BACKEND_HOPPER_FNA, asked for explicitly.
int forward_hopper_explicit(const natten_fna_forward_params* p, const FnaRegion& region, bool tiles_set) {
  NATTEN_CHECK(hopper_check_problem(p->dtype, p->rank, p->head_dim, p->head_dim_v, /*arch=*/0));
  FnaForwardArgs args;
  fill_args(p, region, &args);
  const char* why = nullptr;
  if (!natten::sm90::fna_forward_can_run(args, kernel_dtype_of(p->dtype), &why)) {
    return fail(NATTEN_STATUS_UNSUPPORTED,
                "NATTEN_BACKEND_HOPPER_FNA cannot run this problem: %s (NATTEN_BACKEND_CUTLASS_FNA_SM80 or "
                "NATTEN_BACKEND_AUTO can)",
                why ? why : "unsupported");
  }
  NATTEN_CHECK(hopper_tiles(p, tiles_set, &args));
  int dev = 0;
  NATTEN_CHECK(resolve_device(p->device, "device", &dev));
  int ma = 0, mi = 0;
  NATTEN_CHECK(device_cc(dev, &ma, &mi));
  NATTEN_CHECK(hopper_check_problem(p->dtype, p->rank, p->head_dim, p->head_dim_v, ma * 10 + mi));
  return launch_hopper(p, args, dev, /*fallback=*/false);
}

int forward_impl(const natten_fna_forward_params* user) {
  // 1. Arguments (no CUDA calls).
  natten_fna_forward_params params;
  NATTEN_CHECK(read_forward_params(user, &params));
  const natten_fna_forward_params* p = &params;
  bool tiles_set = false;
  FnaRegion region;
  NATTEN_CHECK(validate_forward_args(p, &tiles_set, &region));
  // 2. Support of this build, independent of the device.
  NATTEN_CHECK(check_backend_supported(p->backend));
  if (p->backend == NATTEN_BACKEND_HOPPER_FNA) return forward_hopper_explicit(p, region, tiles_set);
  NATTEN_CHECK(sm80_check_problem(p->dtype, p->rank, p->head_dim, p->head_dim_v, /*arch=*/0));
  NATTEN_CHECK(check_sm80_limits(p, region));
  FnaForwardArgs args;
  fill_args(p, region, &args);
  if (tiles_set) {
    NATTEN_CHECK(sm80_check_forward_tiles(p->rank, p->head_dim, p->head_dim_v, p->dtype, p->q_tile, p->kv_tile));
  } else {
    int qt[kMaxRank] = {1, 1, 1}, kt[kMaxRank] = {1, 1, 1};
    const cudaError_t te = natten::sm80::fna_forward_auto_tiles(args, kernel_dtype_of(p->dtype), qt, kt);
    if (te != cudaSuccess) {
      return fail(NATTEN_STATUS_INTERNAL_ERROR, "choosing a tile configuration failed: %s (%s)", cuda_err_string(te),
                  cuda_err_name(te));
    }
    for (int i = 0; i < kMaxRank; ++i) {
      args.q_tile[i] = i < p->rank ? qt[i] : 1;
      args.kv_tile[i] = i < p->rank ? kt[i] : 1;
    }
    args.tiles_auto = true;
  }
  // 3. Device.
  int dev = 0;
  NATTEN_CHECK(resolve_device(p->device, "device", &dev));
  int ma = 0, mi = 0;
  NATTEN_CHECK(device_cc(dev, &ma, &mi));
  NATTEN_CHECK(check_arch(ma * 10 + mi));
  NATTEN_CHECK(sm80_check_problem(p->dtype, p->rank, p->head_dim, p->head_dim_v, ma * 10 + mi));
  // AUTO on SM 9.0: the Hopper kernel when it supports the problem (and the caller left the tiles
  // to the library; explicit tiles are SM80 tiles here), except head dims up to 32 (the 32 kernel),
  // where the SM80 kernel's 64-token tiles measured faster (nat-small on an H100: 0.39 vs 0.59 ms,
  // 2026-11-26).
  if (p->backend == NATTEN_BACKEND_AUTO && !tiles_set && ma * 10 + mi == 90 && (p->head_dim > 32 || p->head_dim_v > 32) &&
      natten::sm90::fna_forward_built() &&
      hopper_auto_enabled() && natten::sm90::fna_forward_can_run(args, kernel_dtype_of(p->dtype), nullptr)) {
    FnaForwardArgs hargs = args;
    NATTEN_CHECK(hopper_tiles(p, false, &hargs));
    const int st = launch_hopper(p, hargs, dev, /*fallback=*/true);
    if (st != NATTEN_STATUS_UNSUPPORTED) return st;
  }
  // 4. Launch.
  DeviceGuard guard;
  cudaError_t e = guard.set(dev);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return cuda_fail(e, "cudaSetDevice");
  }
  const int kernel_dtype = kernel_dtype_of(p->dtype);
  e = natten::sm80::fna_forward(args, kernel_dtype, static_cast<cudaStream_t>(p->stream));
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return fail(NATTEN_STATUS_CUDA_ERROR,
                "natten_fna_forward: launching the SM80 kernel (%s, q_tile (%d, %d, %d), kv_tile (%d, %d, %d)) "
                "failed: %s (%s, code %d)",
                dtype_name(p->dtype), args.q_tile[0], args.q_tile[1], args.q_tile[2], args.kv_tile[0],
                args.kv_tile[1], args.kv_tile[2], cuda_err_string(e), cuda_err_name(e), static_cast<int>(e));
  }
  e = cudaGetLastError();
  if (e != cudaSuccess) {
    return fail(NATTEN_STATUS_CUDA_ERROR, "natten_fna_forward: CUDA error after the kernel launch: %s (%s, code %d)",
                cuda_err_string(e), cuda_err_name(e), static_cast<int>(e));
  }
  return NATTEN_STATUS_SUCCESS;
}

// ---------------------------------------------------------------------------------------------
// Backward (ABI 1.1; slabs since ABI 1.2)
// ---------------------------------------------------------------------------------------------

// Like check_struct_size, for structs introduced after ABI 1.0 (`since` names the version of
// min_size; known_size: sizeof the struct in this library).
int check_struct_size_since(const void* p, uint64_t size, uint64_t min_size, uint64_t known_size, const char* name,
                            const char* since) {
  if (size < min_size) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT,
                "%s.struct_size is %llu but must be at least %llu (sizeof(%s) of ABI %s); set it to "
                "sizeof(%s) as compiled against natten_kernels.h",
                name, (unsigned long long)size, (unsigned long long)min_size, name, since, name);
  }
  if (size > kMaxStructSize) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT,
                "%s.struct_size is %llu, larger than any version of the struct (max %llu); is it "
                "initialized?",
                name, (unsigned long long)size, (unsigned long long)kMaxStructSize);
  }
  const unsigned char* bytes = static_cast<const unsigned char*>(p);
  for (uint64_t i = known_size; i < size; ++i) {
    if (bytes[i] != 0) {
      return fail(NATTEN_STATUS_UNSUPPORTED,
                  "%s has struct_size %llu and a non-zero byte at offset %llu, past the %llu bytes "
                  "this library (ABI %d.%d) knows; the caller uses a newer field: upgrade natten-kernels",
                  name, (unsigned long long)size, (unsigned long long)i, (unsigned long long)known_size,
                  NATTEN_ABI_VERSION_MAJOR, NATTEN_ABI_VERSION_MINOR);
    }
  }
  return NATTEN_STATUS_SUCCESS;
}

// The caller's backward params as this library reads them (see read_forward_params): the first
// struct_size bytes, fields past it (a 1.1 caller: the slab fields) zero.
int read_backward_params(const natten_fna_backward_params* user, natten_fna_backward_params* p) {
  if (user == nullptr) return fail(NATTEN_STATUS_INVALID_ARGUMENT, "params is NULL");
  const uint64_t size = user->struct_size;
  NATTEN_CHECK(check_struct_size_since(user, size, NATTEN_FNA_BACKWARD_PARAMS_SIZE_V1_1, sizeof(*p),
                                       "natten_fna_backward_params", "1.1"));
  std::memset(p, 0, sizeof(*p));
  std::memcpy(p, user, size < sizeof(*p) ? size_t(size) : sizeof(*p));
  return NATTEN_STATUS_SUCCESS;
}

// The forward problem of a backward call (same field meanings): q, k, v, out, lse, strides,
// window, scale, tiles, backend, device and the slab fields. The region checks and the kernel
// arguments of the forward are reused through it.
void backward_as_forward(const natten_fna_backward_params* p, natten_fna_forward_params* f) {
  std::memset(f, 0, sizeof(*f));
  f->struct_size = sizeof(*f);
  f->dtype = p->dtype;
  f->rank = p->rank;
  f->batch = p->batch;
  f->heads = p->heads;
  f->heads_kv = p->heads_kv;
  f->head_dim = p->head_dim;
  f->head_dim_v = p->head_dim_v;
  f->q = p->q;
  f->k = p->k;
  f->v = p->v;
  f->out = const_cast<void*>(p->out);
  f->lse = const_cast<float*>(p->lse);
  for (int i = 0; i < NATTEN_MAX_RANK; ++i) {
    f->shape[i] = p->shape[i];
    f->kernel_size[i] = p->kernel_size[i];
    f->stride[i] = p->stride[i];
    f->dilation[i] = p->dilation[i];
    f->is_causal[i] = p->is_causal[i];
    f->q_tile[i] = p->q_tile[i];
    f->kv_tile[i] = p->kv_tile[i];
    f->global_shape[i] = p->global_shape[i];
    f->q_origin[i] = p->q_origin[i];
    f->kv_origin[i] = p->kv_origin[i];
    f->kv_shape[i] = p->kv_shape[i];
  }
  for (int i = 0; i < NATTEN_MAX_TENSOR_DIMS; ++i) {
    f->q_stride[i] = p->q_stride[i];
    f->k_stride[i] = p->k_stride[i];
    f->v_stride[i] = p->v_stride[i];
    f->out_stride[i] = p->out_stride[i];
    if (i < NATTEN_MAX_TENSOR_DIMS - 1) f->lse_stride[i] = p->lse_stride[i];
  }
  f->scale = p->scale;
  f->backend = p->backend;
  f->device = p->device;
}

// Pure argument checks of the backward (no CUDA calls) of params read by read_backward_params, in
// the forward's order: enums, shapes, slabs, pointers, strides, window, slab coverage, scale,
// tiles, backend / device / deterministic. *fwd: the forward problem (backward_as_forward);
// *region: the resolved slab fields.
int validate_backward_args(const natten_fna_backward_params* p, bool* tiles_set, natten_fna_forward_params* fwd,
                           FnaRegion* region) {
  backward_as_forward(p, fwd);
  if (p->reserved != 0) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT, "reserved is %d; it must be 0", p->reserved);
  }
  if (p->dtype != NATTEN_DTYPE_FP16 && p->dtype != NATTEN_DTYPE_BF16 && p->dtype != NATTEN_DTYPE_FP32) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT,
                "dtype is %d; expected NATTEN_DTYPE_FP16 (1), NATTEN_DTYPE_BF16 (2) or NATTEN_DTYPE_FP32 (3)",
                p->dtype);
  }
  const int rank = p->rank;
  if (rank < 1 || rank > NATTEN_MAX_RANK) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT, "rank is %d; it must be 1, 2 or 3", rank);
  }
  if (p->batch < 1) return fail(NATTEN_STATUS_INVALID_ARGUMENT, "batch is %lld; it must be >= 1", (long long)p->batch);
  for (int a = 0; a < rank; ++a) {
    if (p->shape[a] < 1) {
      return fail(NATTEN_STATUS_INVALID_ARGUMENT, "shape[%d] is %lld; it must be >= 1", a, (long long)p->shape[a]);
    }
  }
  if (p->heads < 1) return fail(NATTEN_STATUS_INVALID_ARGUMENT, "heads is %lld; it must be >= 1", (long long)p->heads);
  if (p->heads_kv < 1) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT, "heads_kv is %lld; it must be >= 1", (long long)p->heads_kv);
  }
  if (p->head_dim < 1) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT, "head_dim is %lld; it must be >= 1", (long long)p->head_dim);
  }
  if (p->head_dim_v < 1) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT, "head_dim_v is %lld; it must be >= 1", (long long)p->head_dim_v);
  }
  if (p->heads % p->heads_kv != 0) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT,
                "heads (%lld) is not a multiple of heads_kv (%lld); GQA/MQA needs heads %% heads_kv == 0",
                (long long)p->heads, (long long)p->heads_kv);
  }
  // Slabs of a larger grid (ABI 1.2): the forward's checks.
  NATTEN_CHECK(resolve_fna_region(fwd, region));
  const FnaRegion& r = *region;
  // Pointers.
  NATTEN_CHECK(check_pointer(p->q, "q", 16, false));
  NATTEN_CHECK(check_pointer(p->k, "k", 16, false));
  NATTEN_CHECK(check_pointer(p->v, "v", 16, false));
  NATTEN_CHECK(check_pointer(p->out, "out", 16, false));
  NATTEN_CHECK(check_pointer(p->lse, "lse", 4, false));
  NATTEN_CHECK(check_pointer(p->d_out, "d_out", 16, false));
  NATTEN_CHECK(check_pointer(p->d_lse, "d_lse", 4, true));
  NATTEN_CHECK(check_pointer(p->d_q, "d_q", 16, false));
  NATTEN_CHECK(check_pointer(p->d_k, "d_k", 16, false));
  NATTEN_CHECK(check_pointer(p->d_v, "d_v", 16, false));
  // Strides.
  const int64_t eb = dtype_bytes(p->dtype);
  const int nd = rank + 3;
  // grid: token grid of the tensor (the query slab's = shape, or the key slab's = kv_shape).
  auto make = [&](const char* name, const char* sarg, const int64_t* strides, const int64_t* grid, int64_t h,
                  int64_t d, int64_t bytes, bool out, bool has_d) {
    TensorCheck c = {};
    c.name = name;
    c.stride_arg = sarg;
    c.ndim = has_d ? nd : nd - 1;
    c.sizes[0] = p->batch;
    for (int a = 0; a < rank; ++a) c.sizes[1 + a] = grid[a];
    c.sizes[1 + rank] = h;
    if (has_d) c.sizes[2 + rank] = d;
    c.strides = strides;
    c.elem_bytes = bytes;
    c.contiguous_last = has_d;
    c.stride_multiple = 1;  // unaligned rows take the kernels' scalar path
    c.output = out;
    return c;
  };
  const int64_t* qg = p->shape;     // q, out, lse, d_out, d_lse, d_q: the query slab's grid
  const int64_t* kg = r.kv_shape;   // k, v, d_k, d_v: the key slab's grid (= shape without slabs)
  NATTEN_CHECK(
      check_tensor(make("q", "q_stride", p->q_stride, qg, p->heads, p->head_dim, eb, false, true), p->q, rank));
  NATTEN_CHECK(
      check_tensor(make("k", "k_stride", p->k_stride, kg, p->heads_kv, p->head_dim, eb, false, true), p->k, rank));
  NATTEN_CHECK(check_tensor(make("v", "v_stride", p->v_stride, kg, p->heads_kv, p->head_dim_v, eb, false, true),
                            p->v, rank));
  NATTEN_CHECK(check_tensor(make("out", "out_stride", p->out_stride, qg, p->heads, p->head_dim_v, eb, false, true),
                            p->out, rank));
  NATTEN_CHECK(
      check_tensor(make("lse", "lse_stride", p->lse_stride, qg, p->heads, 1, 4, false, false), p->lse, rank));
  NATTEN_CHECK(check_tensor(
      make("d_out", "d_out_stride", p->d_out_stride, qg, p->heads, p->head_dim_v, eb, false, true), p->d_out, rank));
  if (p->d_lse != nullptr) {
    NATTEN_CHECK(check_tensor(make("d_lse", "d_lse_stride", p->d_lse_stride, qg, p->heads, 1, 4, false, false),
                              p->d_lse, rank));
  }
  NATTEN_CHECK(check_tensor(make("d_q", "d_q_stride", p->d_q_stride, qg, p->heads, p->head_dim, eb, true, true),
                            p->d_q, rank));
  NATTEN_CHECK(check_tensor(make("d_k", "d_k_stride", p->d_k_stride, kg, p->heads_kv, p->head_dim, eb, true, true),
                            p->d_k, rank));
  NATTEN_CHECK(check_tensor(
      make("d_v", "d_v_stride", p->d_v_stride, kg, p->heads_kv, p->head_dim_v, eb, true, true), p->d_v, rank));
  // Window parameters.
  for (int a = 0; a < rank; ++a) {
    const int K = p->kernel_size[a], s = p->stride[a], d = p->dilation[a];
    if (K < 2) {
      return fail(NATTEN_STATUS_INVALID_ARGUMENT, "kernel_size[%d] is %d; it must be >= 2", a, K);
    }
    if (s < 1 || s > K) {
      return fail(NATTEN_STATUS_INVALID_ARGUMENT,
                  "stride[%d] is %d; it must satisfy 1 <= stride <= kernel_size (kernel_size[%d] = %d)", a, s, a, K);
    }
    if (d < 1) return fail(NATTEN_STATUS_INVALID_ARGUMENT, "dilation[%d] is %d; it must be >= 1", a, d);
    if (static_cast<int64_t>(K) * static_cast<int64_t>(d) > r.global_shape[a]) {  // = shape without slabs
      return fail(NATTEN_STATUS_INVALID_ARGUMENT,
                  "kernel_size[%d] * dilation[%d] = %d * %d = %lld exceeds %s[%d] = %lld", a, a, K, d,
                  (long long)K * d, r.sliced ? "global_shape" : "shape", a, (long long)r.global_shape[a]);
    }
    if (p->is_causal[a] != 0 && p->is_causal[a] != 1) {
      return fail(NATTEN_STATUS_INVALID_ARGUMENT, "is_causal[%d] is %d; it must be 0 or 1", a, p->is_causal[a]);
    }
  }
  NATTEN_CHECK(check_fna_region_coverage(fwd, r));
  if (!std::isfinite(p->scale) || p->scale == 0.0f) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT, "scale is %g; it must be finite and non-zero (usually head_dim ** -0.5)",
                (double)p->scale);
  }
  bool q_set = false, kv_set = false;
  NATTEN_CHECK(check_tile(p->q_tile, rank, "q_tile", &q_set));
  NATTEN_CHECK(check_tile(p->kv_tile, rank, "kv_tile", &kv_set));
  if (q_set != kv_set) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT,
                "%s is given but %s is all 0; give both tile shapes or neither (all 0 = let the library choose)",
                q_set ? "q_tile" : "kv_tile", q_set ? "kv_tile" : "q_tile");
  }
  *tiles_set = q_set;
  if (p->backend < NATTEN_BACKEND_AUTO || p->backend > NATTEN_BACKEND_BLACKWELL_FNA) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT,
                "backend is %d; expected NATTEN_BACKEND_AUTO (0), NATTEN_BACKEND_CUTLASS_FNA_SM80 (1), "
                "NATTEN_BACKEND_HOPPER_FNA (2) or NATTEN_BACKEND_BLACKWELL_FNA (3)",
                p->backend);
  }
  if (p->device < -1) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT, "device is %d; it must be a device ordinal or -1 (current device)",
                p->device);
  }
  if (p->deterministic != 0 && p->deterministic != 1) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT, "deterministic is %d; it must be 0 or 1", p->deterministic);
  }
  // kv_splits (ABI 1.3): all 0 (default) or every entry of the rank >= 1, entries past rank 0 or 1.
  // The upper bound (key tiles per axis) needs the tiles: checked in prepare_backward.
  if (p->reserved_1_3 != 0) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT, "reserved_1_3 is %d; it must be 0", p->reserved_1_3);
  }
  bool any_split = false, all_split = true;
  for (int a = 0; a < NATTEN_MAX_RANK; ++a) {
    const int32_t s = p->kv_splits[a];
    if (s < 0) {
      return fail(NATTEN_STATUS_INVALID_ARGUMENT, "kv_splits[%d] is %d; it must be >= 1 (or all 0 = default)", a, s);
    }
    if (a >= rank) {
      if (s > 1) {
        return fail(NATTEN_STATUS_INVALID_ARGUMENT,
                    "kv_splits[%d] is %d but rank is %d; entries past the rank must be 0 or 1", a, s, rank);
      }
      continue;
    }
    any_split = any_split || s != 0;
    all_split = all_split && s != 0;
  }
  if (any_split && !all_split) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT,
                "kv_splits mixes zero and non-zero entries over the rank (%d, %d, %d); give all of them or none "
                "(all 0 = one CTA per key tile)",
                p->kv_splits[0], p->kv_splits[1], p->kv_splits[2]);
  }
  return NATTEN_STATUS_SUCCESS;
}

void fill_backward_args(const natten_fna_backward_params* p, const natten_fna_forward_params& f, const FnaRegion& r,
                        FnaBackwardArgs* a) {
  std::memset(a, 0, sizeof(*a));
  fill_args(&f, r, &a->fwd);  // the forward part (q, k, v, out, lse, window, tiles, slabs)
  const int rank = p->rank;
  auto strides = [&](const int64_t* s, int64_t& b, int64_t* sp, int64_t& h) {
    b = s[0];
    for (int i = 0; i < kMaxRank; ++i) sp[i] = i < rank ? s[1 + i] : 0;
    h = s[1 + rank];
  };
  a->d_out = p->d_out;
  a->d_lse = p->d_lse;
  a->d_q = p->d_q;
  a->d_k = p->d_k;
  a->d_v = p->d_v;
  strides(p->d_out_stride, a->do_stride_batch, a->do_stride_spatial, a->do_stride_head);
  if (p->d_lse != nullptr)
    strides(p->d_lse_stride, a->dlse_stride_batch, a->dlse_stride_spatial, a->dlse_stride_head);
  strides(p->d_q_stride, a->dq_stride_batch, a->dq_stride_spatial, a->dq_stride_head);
  strides(p->d_k_stride, a->dk_stride_batch, a->dk_stride_spatial, a->dk_stride_head);
  strides(p->d_v_stride, a->dv_stride_batch, a->dv_stride_spatial, a->dv_stride_head);
  a->workspace = p->workspace;
  a->workspace_bytes = static_cast<int64_t>(p->workspace_bytes > uint64_t(INT64_MAX) ? uint64_t(INT64_MAX)
                                                                                      : p->workspace_bytes);
  a->deterministic = p->deterministic != 0;
  for (int i = 0; i < kMaxRank; ++i) a->kv_splits[i] = i < rank ? p->kv_splits[i] : 0;
}

// Argument and build-support checks shared by the workspace query and the backward (no CUDA calls).
// p: params read by read_backward_params.
// *ws_bytes: the workspace the backward needs; *ws_full (optional): what it can use (the SM90 dK / dV
// kernel's tables on top), what natten_fna_backward_workspace_size reports.
int prepare_backward(const natten_fna_backward_params* p, FnaBackwardArgs* args, int64_t* ws_bytes,
                     int64_t* ws_full = nullptr) {
  bool tiles_set = false;
  natten_fna_forward_params f;
  FnaRegion region;
  NATTEN_CHECK(validate_backward_args(p, &tiles_set, &f, &region));
  NATTEN_CHECK(check_backward_backend_supported(p->backend));
  NATTEN_CHECK(sm80_check_problem(p->dtype, p->rank, p->head_dim, p->head_dim_v, /*arch=*/0));
  NATTEN_CHECK(check_sm80_limits(&f, region));
  fill_backward_args(p, f, region, args);
  if (tiles_set) {
    NATTEN_CHECK(sm80_check_tiles(p->rank, p->head_dim, p->q_tile, p->kv_tile));
  } else {
    int qt[kMaxRank] = {1, 1, 1}, kt[kMaxRank] = {1, 1, 1};
    const cudaError_t te = natten::sm80::fna_forward_default_tiles(args->fwd, qt, kt);
    if (te != cudaSuccess) {
      return fail(NATTEN_STATUS_INTERNAL_ERROR, "choosing a tile configuration failed: %s (%s)", cuda_err_string(te),
                  cuda_err_name(te));
    }
    for (int i = 0; i < kMaxRank; ++i) {
      args->fwd.q_tile[i] = i < p->rank ? qt[i] : 1;
      args->fwd.kv_tile[i] = i < p->rank ? kt[i] : 1;
    }
  }
  if (args->kv_splits[0] > 0) {  // at most the key tiles per axis of the dK / dV walk
    int kvt[kMaxRank] = {1, 1, 1};
    const cudaError_t ke = natten::sm80::fna_backward_kv_tiles(*args, kvt);
    if (ke != cudaSuccess) {
      return fail(NATTEN_STATUS_INTERNAL_ERROR, "counting the key tiles of the backward failed: %s (%s)",
                  cuda_err_string(ke), cuda_err_name(ke));
    }
    for (int a = 0; a < p->rank; ++a) {
      if (args->kv_splits[a] > kvt[a]) {
        return fail(NATTEN_STATUS_INVALID_ARGUMENT,
                    "kv_splits[%d] is %d, but the dK / dV kernel has %d key tile%s along axis %d (kv_tile[%d] = %d); "
                    "use 1 to %d",
                    a, args->kv_splits[a], kvt[a], kvt[a] == 1 ? "" : "s", a, a, args->fwd.kv_tile[a], kvt[a]);
      }
    }
  }
  const int64_t ws = natten::sm80::fna_backward_workspace_bytes(*args);
  // AUTO may run the SM90 dK / dV kernel (decided at launch, on the device), which wants room for
  // its visit tables after delta; without that room the dK / dV stays on the SM80 kernel.
  // (Only the size query needs it: the backward itself requires just delta's part.)
  const int64_t ws90 = ws_full != nullptr && p->backend == NATTEN_BACKEND_AUTO
                           ? natten::sm90::bwd_dkdv_workspace_bytes(*args, kernel_dtype_of(p->dtype))
                           : 0;
  int64_t full = 0;
  if (ws < 0 || ws90 < 0 || __builtin_add_overflow(ws, ws90, &full)) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT,
                "the workspace size (4 bytes per batch x token x head, and 8 per padded token x head for the SM90 "
                "dK / dV kernel) overflows int64 for batch %lld, heads %lld",
                (long long)p->batch, (long long)p->heads);
  }
  *ws_bytes = ws;
  if (ws_full != nullptr) *ws_full = full;
  return NATTEN_STATUS_SUCCESS;
}

int backward_workspace_impl(const natten_fna_backward_params* user, uint64_t* bytes) {
  if (bytes == nullptr) return fail(NATTEN_STATUS_INVALID_ARGUMENT, "bytes is NULL");
  *bytes = 0;
  natten_fna_backward_params params;
  NATTEN_CHECK(read_backward_params(user, &params));
  const natten_fna_backward_params* p = &params;
  FnaBackwardArgs args;
  int64_t ws = 0, full = 0;
  NATTEN_CHECK(prepare_backward(p, &args, &ws, &full));
  *bytes = static_cast<uint64_t>(full);
  return NATTEN_STATUS_SUCCESS;
}

int backward_impl(const natten_fna_backward_params* user) {
  // 1. Arguments and build support (no CUDA calls).
  natten_fna_backward_params params;
  NATTEN_CHECK(read_backward_params(user, &params));
  const natten_fna_backward_params* p = &params;
  FnaBackwardArgs args;
  int64_t ws = 0;
  NATTEN_CHECK(prepare_backward(p, &args, &ws));
  if (ws > 0) {
    NATTEN_CHECK(check_pointer(p->workspace, "workspace", 16, false));
    if (p->workspace_bytes < static_cast<uint64_t>(ws)) {
      return fail(NATTEN_STATUS_INVALID_ARGUMENT,
                  "workspace_bytes is %llu but this problem needs %lld bytes (natten_fna_backward_workspace_size)",
                  (unsigned long long)p->workspace_bytes, (long long)ws);
    }
  }
  // 2. Device.
  int dev = 0;
  NATTEN_CHECK(resolve_device(p->device, "device", &dev));
  int ma = 0, mi = 0;
  NATTEN_CHECK(device_cc(dev, &ma, &mi));
  NATTEN_CHECK(check_arch(ma * 10 + mi));
  NATTEN_CHECK(sm80_check_problem(p->dtype, p->rank, p->head_dim, p->head_dim_v, ma * 10 + mi));
  if (p->dtype != NATTEN_DTYPE_FP32) {  // the fp32 kernels use < 48 KB of static shared memory
    const int need = natten::sm80::fna_backward_smem_bytes(int(p->head_dim), int(p->head_dim_v));
    int have = 0;
    const cudaError_t ae = cudaDeviceGetAttribute(&have, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
    if (ae != cudaSuccess) {
      (void)cudaGetLastError();
      return cuda_fail(ae, "cudaDeviceGetAttribute(cudaDevAttrMaxSharedMemoryPerBlockOptin)");
    }
    if (need > have) {
      return fail(NATTEN_STATUS_UNSUPPORTED,
                  "the SM80 backward at head_dim %lld / head_dim_v %lld needs %d bytes of shared memory per "
                  "block, but device %d (compute capability %d.%d) allows %d",
                  (long long)p->head_dim, (long long)p->head_dim_v, need, dev, ma, mi, have);
    }
  }
  // 3. Launch.
  DeviceGuard guard;
  cudaError_t e = guard.set(dev);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return cuda_fail(e, "cudaSetDevice");
  }
  const int kernel_dtype = kernel_dtype_of(p->dtype);
  // AUTO on SM 9.0: dQ and dK / dV on the Hopper kernels where they run (sm90/bwd_dq.hpp); the
  // preprocess, and every other case, on the SM80 kernels. NATTEN_DISABLE_HOPPER keeps all of it on
  // SM80.
  const bool hopper = p->backend == NATTEN_BACKEND_AUTO && ma * 10 + mi == 90 && hopper_auto_enabled();
  e = natten::sm80::fna_backward(args, kernel_dtype, static_cast<cudaStream_t>(p->stream), hopper);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return fail(NATTEN_STATUS_CUDA_ERROR,
                "natten_fna_backward: launching the SM80 kernels (%s, q_tile (%d, %d, %d), kv_tile (%d, %d, %d)) "
                "failed: %s (%s, code %d)",
                dtype_name(p->dtype), args.fwd.q_tile[0], args.fwd.q_tile[1], args.fwd.q_tile[2],
                args.fwd.kv_tile[0], args.fwd.kv_tile[1], args.fwd.kv_tile[2], cuda_err_string(e), cuda_err_name(e),
                static_cast<int>(e));
  }
  e = cudaGetLastError();
  if (e != cudaSuccess) {
    return fail(NATTEN_STATUS_CUDA_ERROR, "natten_fna_backward: CUDA error after the kernel launches: %s (%s, code %d)",
                cuda_err_string(e), cuda_err_name(e), static_cast<int>(e));
  }
  return NATTEN_STATUS_SUCCESS;
}

// ---------------------------------------------------------------------------------------------
// Query API
// ---------------------------------------------------------------------------------------------

// Validates the problem and resolves its arch. On success *arch is >= 80 with an image in the build.
int resolve_problem(const natten_fna_problem* pr, int* arch) {
  if (pr == nullptr) return fail(NATTEN_STATUS_INVALID_ARGUMENT, "problem is NULL");
  NATTEN_CHECK(check_struct_size(pr, pr->struct_size, NATTEN_FNA_PROBLEM_SIZE_V1_0, sizeof(natten_fna_problem),
                                 "natten_fna_problem"));
  if (pr->reserved != 0) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT, "problem->reserved is %d; it must be 0", pr->reserved);
  }
  if (pr->dtype != NATTEN_DTYPE_FP16 && pr->dtype != NATTEN_DTYPE_BF16 && pr->dtype != NATTEN_DTYPE_FP32) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT,
                "problem->dtype is %d; expected NATTEN_DTYPE_FP16 (1), NATTEN_DTYPE_BF16 (2) or NATTEN_DTYPE_FP32 (3)",
                pr->dtype);
  }
  if (pr->rank < 1 || pr->rank > NATTEN_MAX_RANK) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT, "problem->rank is %d; it must be 1, 2 or 3", pr->rank);
  }
  if (pr->head_dim < 1) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT, "problem->head_dim is %lld; it must be >= 1", (long long)pr->head_dim);
  }
  if (pr->head_dim_v < 1) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT, "problem->head_dim_v is %lld; it must be >= 1",
                (long long)pr->head_dim_v);
  }
  if (pr->arch < 0) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT,
                "problem->arch is %d; give the SM version as 10*major+minor (e.g. 80, 90) or 0 for the device",
                pr->arch);
  }
  if (pr->arch == 0 && pr->device < -1) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT, "problem->device is %d; it must be a device ordinal or -1", pr->device);
  }
  if (pr->backend < NATTEN_BACKEND_AUTO || pr->backend > NATTEN_BACKEND_BLACKWELL_FNA) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT, "problem->backend is %d; expected 0..3 (natten_backend)", pr->backend);
  }
  NATTEN_CHECK(check_backend_supported(pr->backend));
  const bool hopper = pr->backend == NATTEN_BACKEND_HOPPER_FNA;
  if (hopper) {
    NATTEN_CHECK(hopper_check_problem(pr->dtype, pr->rank, pr->head_dim, pr->head_dim_v, 0));
  } else {
    NATTEN_CHECK(sm80_check_problem(pr->dtype, pr->rank, pr->head_dim, pr->head_dim_v, 0));
  }
  int a = pr->arch;
  if (a == 0) {
    int dev = 0, ma = 0, mi = 0;
    NATTEN_CHECK(resolve_device(pr->device, "problem->device", &dev));
    NATTEN_CHECK(device_cc(dev, &ma, &mi));
    a = ma * 10 + mi;
  }
  NATTEN_CHECK(check_arch(a));
  if (hopper) {
    NATTEN_CHECK(hopper_check_problem(pr->dtype, pr->rank, pr->head_dim, pr->head_dim_v, a));
  } else {
    NATTEN_CHECK(sm80_check_problem(pr->dtype, pr->rank, pr->head_dim, pr->head_dim_v, a));
  }
  *arch = a;
  return NATTEN_STATUS_SUCCESS;
}

int query_impl(const natten_fna_problem* pr, natten_tile_config* out, int capacity, int* count) {
  if (count == nullptr) return fail(NATTEN_STATUS_INVALID_ARGUMENT, "count is NULL");
  *count = 0;
  if (capacity < 0) return fail(NATTEN_STATUS_INVALID_ARGUMENT, "capacity is %d; it must be >= 0", capacity);
  if (capacity > 0 && out == nullptr) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT, "out is NULL but capacity is %d", capacity);
  }
  int arch = 0;
  NATTEN_CHECK(resolve_problem(pr, &arch));
  auto enumerate = [&](TileConfig* dst, int cap) {
    return pr->backend == NATTEN_BACKEND_HOPPER_FNA ? hopper_enumerate_configs(pr->rank, pr->head_dim, pr->head_dim_v, dst, cap)
                                                    : sm80_enumerate_forward_configs(pr->rank, pr->head_dim, pr->head_dim_v, pr->dtype, dst, cap);
  };
  // Sized by the count itself (no fixed upper bound on a backend's list), so every entry copied out
  // below was written by the enumeration.
  const int total = enumerate(nullptr, 0);
  std::vector<TileConfig> buf(total > 0 ? size_t(total) : 1);
  const int n = total > 0 ? enumerate(buf.data(), total) : 0;
  if (n <= 0) {
    return fail(NATTEN_STATUS_UNSUPPORTED, "no tile configuration for rank %d, head_dim %lld, %s", pr->rank,
                (long long)pr->head_dim, dtype_name(pr->dtype));
  }
  const int m = n < capacity ? n : capacity;
  for (int i = 0; i < m; ++i) {
    natten_tile_config c;
    std::memset(&c, 0, sizeof(c));
    c.backend = buf[i].backend;
    c.rank = buf[i].rank;
    for (int a = 0; a < NATTEN_MAX_RANK; ++a) {
      c.q_tile[a] = buf[i].q_tile[a];
      c.kv_tile[a] = buf[i].kv_tile[a];
    }
    out[i] = c;
  }
  *count = n;
  return NATTEN_STATUS_SUCCESS;
}

}  // namespace
}  // namespace abi
}  // namespace natten

// ---------------------------------------------------------------------------------------------
// Exported functions
// ---------------------------------------------------------------------------------------------

#define NATTEN_ABI_TRY try {
#define NATTEN_ABI_CATCH                                                                                 \
  }                                                                                                      \
  catch (const std::bad_alloc&) {                                                                        \
    return natten::abi::fail(NATTEN_STATUS_INTERNAL_ERROR, "internal error: out of host memory");        \
  }                                                                                                      \
  catch (const std::exception& e) {                                                                      \
    return natten::abi::fail(NATTEN_STATUS_INTERNAL_ERROR, "internal error: %s", e.what());              \
  }                                                                                                      \
  catch (...) {                                                                                          \
    return natten::abi::fail(NATTEN_STATUS_INTERNAL_ERROR, "internal error: unknown C++ exception");     \
  }

extern "C" {

NATTEN_API int natten_abi_version(void) noexcept { return NATTEN_ABI_VERSION; }

NATTEN_API const char* natten_build_info(void) noexcept { return NATTEN_BUILD_INFO_STRING; }

NATTEN_API const char* natten_last_error(void) noexcept { return natten::abi::last_error(); }

NATTEN_API const char* natten_status_string(int status) noexcept {
  switch (status) {
    case NATTEN_STATUS_SUCCESS: return "NATTEN_STATUS_SUCCESS";
    case NATTEN_STATUS_INVALID_ARGUMENT: return "NATTEN_STATUS_INVALID_ARGUMENT";
    case NATTEN_STATUS_UNSUPPORTED: return "NATTEN_STATUS_UNSUPPORTED";
    case NATTEN_STATUS_CUDA_ERROR: return "NATTEN_STATUS_CUDA_ERROR";
    case NATTEN_STATUS_NO_DEVICE: return "NATTEN_STATUS_NO_DEVICE";
    case NATTEN_STATUS_INTERNAL_ERROR: return "NATTEN_STATUS_INTERNAL_ERROR";
    default: return "NATTEN_STATUS_UNKNOWN";
  }
}

NATTEN_API int natten_device_info(int device, int* cc_major, int* cc_minor) noexcept {
  NATTEN_ABI_TRY
  using namespace natten::abi;
  if (cc_major == nullptr || cc_minor == nullptr) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT, "cc_major and cc_minor must not be NULL");
  }
  *cc_major = 0;
  *cc_minor = 0;
  if (device < -1) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT, "device is %d; it must be a device ordinal or -1 (current device)",
                device);
  }
  int dev = 0;
  NATTEN_CHECK(resolve_device(device, "device", &dev));
  return device_cc(dev, cc_major, cc_minor);
  NATTEN_ABI_CATCH
}

NATTEN_API int natten_fna_supports(const natten_fna_problem* problem) noexcept {
  NATTEN_ABI_TRY
  int arch = 0;
  NATTEN_CHECK(natten::abi::resolve_problem(problem, &arch));
  natten::abi::TileConfig one;
  const int n = problem->backend == NATTEN_BACKEND_HOPPER_FNA
                    ? natten::abi::hopper_enumerate_configs(problem->rank, problem->head_dim, problem->head_dim_v, &one, 1)
                    : natten::abi::sm80_enumerate_configs(problem->rank, problem->head_dim, &one, 1);
  if (n <= 0) {
    return natten::abi::fail(NATTEN_STATUS_UNSUPPORTED, "no tile configuration for this problem");
  }
  return NATTEN_STATUS_SUCCESS;
  NATTEN_ABI_CATCH
}

NATTEN_API int natten_fna_query_configs(const natten_fna_problem* problem, natten_tile_config* out, int capacity,
                                        int* count) noexcept {
  NATTEN_ABI_TRY
  return natten::abi::query_impl(problem, out, capacity, count);
  NATTEN_ABI_CATCH
}

NATTEN_API int natten_fna_forward(const natten_fna_forward_params* params) noexcept {
  NATTEN_ABI_TRY
  return natten::abi::forward_impl(params);
  NATTEN_ABI_CATCH
}

NATTEN_API int natten_fna_backward_workspace_size(const natten_fna_backward_params* params,
                                                  uint64_t* bytes) noexcept {
  NATTEN_ABI_TRY
  return natten::abi::backward_workspace_impl(params, bytes);
  NATTEN_ABI_CATCH
}

NATTEN_API int natten_fna_backward(const natten_fna_backward_params* params) noexcept {
  NATTEN_ABI_TRY
  return natten::abi::backward_impl(params);
  NATTEN_ABI_CATCH
}

}  // extern "C"
