/*
 * natten_kernels.h -- the C ABI of the natten-kernels library (libnatten_kernels.so).
 *
 * Pure C (C99), includable from C and C++. No C++ or framework types cross this boundary:
 * only fixed-width integers, float, raw pointers and plain structs.
 *
 * Versioning (see docs/abi.md):
 *   - NATTEN_ABI_VERSION_MAJOR changes on any incompatible change (a field moved, removed or
 *     re-typed, a function removed or its signature changed, a meaning changed).
 *   - NATTEN_ABI_VERSION_MINOR changes on additive changes (new functions, new enum values, new
 *     fields appended to a struct that carries `struct_size`).
 *   - natten_abi_version() returns MAJOR * 1000 + MINOR of the library actually loaded.
 *   - The package version of natten-kernels is <ABI major>.<ABI minor>.<patch>.
 *
 * Conventions:
 *   - Every entry point except the three string/version getters returns an int status
 *     (natten_status). On failure, natten_last_error() returns a message for this thread.
 *   - Every parameter struct starts with `uint64_t struct_size`, which the caller sets to
 *     sizeof(the struct) as compiled against this header. The library accepts any size >= the
 *     v1.0 size and rejects smaller ones. It reads only the first struct_size bytes: fields
 *     appended after that size (a caller compiled against an older minor) take their default,
 *     which is always "all zero". Trailing fields it does not know (a caller compiled against a
 *     newer minor) are ignored only if they are zero.
 *   - Shapes and strides are int64, strides in elements (not bytes).
 *   - Functions never abort, exit, print or throw; all failures are reported through the status.
 */
#ifndef NATTEN_KERNELS_H_
#define NATTEN_KERNELS_H_

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define NATTEN_ABI_VERSION_MAJOR 1
#define NATTEN_ABI_VERSION_MINOR 3
#define NATTEN_ABI_VERSION (NATTEN_ABI_VERSION_MAJOR * 1000 + NATTEN_ABI_VERSION_MINOR)

/* Maximum number of spatial (token grid) axes. */
#define NATTEN_MAX_RANK 3
/* Maximum number of tensor dims: [B, X, Y, Z, H, D]. */
#define NATTEN_MAX_TENSOR_DIMS (NATTEN_MAX_RANK + 3)

/* sizeof() of the v1.0 structs (LP64); the library rejects a struct_size below these. */
#define NATTEN_FNA_FORWARD_PARAMS_SIZE_V1_0 448
#define NATTEN_FNA_PROBLEM_SIZE_V1_0 48
/* sizeof(natten_fna_forward_params) since v1.1 (query/key slabs of a larger grid appended). */
#define NATTEN_FNA_FORWARD_PARAMS_SIZE_V1_1 544
/* sizeof() of the v1.1 backward params (LP64); the library rejects a struct_size below it. */
#define NATTEN_FNA_BACKWARD_PARAMS_SIZE_V1_1 744
/* sizeof(natten_fna_backward_params) since v1.2 (query/key slabs of a larger grid appended). */
#define NATTEN_FNA_BACKWARD_PARAMS_SIZE_V1_2 840
/* sizeof(natten_fna_backward_params) since v1.3 (kv_splits appended). */
#define NATTEN_FNA_BACKWARD_PARAMS_SIZE_V1_3 856

#if defined(_WIN32)
#if defined(NATTEN_KERNELS_BUILDING)
#define NATTEN_API __declspec(dllexport)
#else
#define NATTEN_API __declspec(dllimport)
#endif
#else
#define NATTEN_API __attribute__((visibility("default")))
#endif

#if defined(__cplusplus)
#define NATTEN_NOEXCEPT noexcept
#else
#define NATTEN_NOEXCEPT
#endif

#if defined(__cplusplus)
extern "C" {
#endif

/* ------------------------------------------------------------------------------------------ */
/* Enumerations (values are part of the ABI; struct fields carrying them are int32_t).        */
/* ------------------------------------------------------------------------------------------ */

typedef enum natten_status {
  NATTEN_STATUS_SUCCESS = 0,
  NATTEN_STATUS_INVALID_ARGUMENT = 1, /* a null/misaligned pointer, bad shape/stride/window... */
  NATTEN_STATUS_UNSUPPORTED = 2,      /* valid, but this build/device has no kernel for it */
  NATTEN_STATUS_CUDA_ERROR = 3,       /* the CUDA runtime reported an error */
  NATTEN_STATUS_NO_DEVICE = 4,        /* no usable CUDA device or driver */
  NATTEN_STATUS_INTERNAL_ERROR = 5    /* a bug in the library (please report) */
} natten_status;

typedef enum natten_dtype {
  NATTEN_DTYPE_INVALID = 0,
  NATTEN_DTYPE_FP16 = 1, /* IEEE half */
  NATTEN_DTYPE_BF16 = 2, /* bfloat16 */
  NATTEN_DTYPE_FP32 = 3  /* float (CUDA-core kernels of the SM80 backend; the Hopper backend: UNSUPPORTED) */
} natten_dtype;

typedef enum natten_backend {
  NATTEN_BACKEND_AUTO = 0,              /* let the library choose */
  NATTEN_BACKEND_CUTLASS_FNA_SM80 = 1,  /* CUTLASS 2.x-style fused NA, SM80+ */
  NATTEN_BACKEND_HOPPER_FNA = 2,        /* SM90 TMA + wgmma fused NA forward (sm_90a builds; ABI 1.2) */
  NATTEN_BACKEND_BLACKWELL_FNA = 3      /* reserved */
} natten_backend;

/* Consumer schedule of the Hopper forward (ABI 1.2; natten_fna_forward_params.kernel_schedule). */
typedef enum natten_kernel_schedule {
  NATTEN_KERNEL_SCHEDULE_DEFAULT = 0,     /* the library's choice (currently pingpong) */
  NATTEN_KERNEL_SCHEDULE_COOPERATIVE = 1, /* both consumer warpgroups run independently */
  NATTEN_KERNEL_SCHEDULE_PINGPONG = 2     /* consumer warpgroups alternate GEMM issue (FA3) */
} natten_kernel_schedule;

/* ------------------------------------------------------------------------------------------ */
/* Fused neighborhood attention, forward.                                                     */
/* ------------------------------------------------------------------------------------------ */

/*
 * Heads-last layout, rank R = 1..3 spatial axes:
 *   q   [B, X, (Y), (Z), H,    D ]      dtype
 *   k   [B, X, (Y), (Z), H_kv, D ]      dtype
 *   v   [B, X, (Y), (Z), H_kv, Dv]      dtype
 *   out [B, X, (Y), (Z), H,    Dv]      dtype
 *   lse [B, X, (Y), (Z), H]             float32, natural log of the scaled scores (optional)
 * (X, Y, Z) = shape. With slabs (below) k and v have the token grid kv_shape instead.
 *
 * Strides are given per tensor dim in tensor order, in elements: index 0 = batch,
 * 1..R = spatial axes, R+1 = head, R+2 = head dim (must be 1). For lse: 0 = batch,
 * 1..R = spatial, R+1 = head. Entries past the tensor's dims are ignored.
 * This is exactly torch.Tensor.stride() of the heads-last tensors.
 *
 * Window parameters are per spatial axis (entries past R are ignored); see docs/abi.md
 * for the exact semantics (identical to NATTEN >= 0.20).
 *
 * Slabs of a larger grid (ABI 1.1; the four arrays at the end, all 0 = the tensors hold the whole
 * grid): q, out and lse hold the slab of the global grid `global_shape` that starts at global
 * coordinate `q_origin` and has `shape` tokens per axis; k and v hold the slab at `kv_origin` with
 * `kv_shape` tokens per axis. Windows are placed on the global grid (clamped at its borders, not
 * at the slabs'), and the key slab must hold every key the query slab attends.
 */
typedef struct natten_fna_forward_params {
  uint64_t struct_size; /* = sizeof(natten_fna_forward_params) */
  int32_t dtype;        /* natten_dtype of q, k, v and out */
  int32_t rank;         /* R: 1, 2 or 3 */

  int64_t batch;                   /* B >= 1 */
  int64_t shape[NATTEN_MAX_RANK];  /* X, Y, Z: token grid of q, out, lse, each >= 1 */
  int64_t heads;                   /* H >= 1 */
  int64_t heads_kv;                /* H_kv >= 1, H % H_kv == 0 (GQA/MQA) */
  int64_t head_dim;                /* D */
  int64_t head_dim_v;              /* Dv */

  const void* q;   /* 16-byte aligned device pointer */
  const void* k;   /* 16-byte aligned device pointer */
  const void* v;   /* 16-byte aligned device pointer */
  void* out;       /* 16-byte aligned device pointer */
  float* lse;      /* 4-byte aligned device pointer, or NULL to skip the logsumexp output */

  int64_t q_stride[NATTEN_MAX_TENSOR_DIMS];
  int64_t k_stride[NATTEN_MAX_TENSOR_DIMS];
  int64_t v_stride[NATTEN_MAX_TENSOR_DIMS];
  int64_t out_stride[NATTEN_MAX_TENSOR_DIMS];
  int64_t lse_stride[NATTEN_MAX_TENSOR_DIMS - 1];

  int32_t kernel_size[NATTEN_MAX_RANK]; /* >= 2 and kernel_size * dilation <= global_shape */
  int32_t stride[NATTEN_MAX_RANK];      /* 1 <= stride <= kernel_size */
  int32_t dilation[NATTEN_MAX_RANK];    /* >= 1 */
  int32_t is_causal[NATTEN_MAX_RANK];   /* 0 or 1 */
  float scale;                          /* softmax scale applied to q.k; finite, non-zero */

  int32_t q_tile[NATTEN_MAX_RANK];  /* query tile shape in tokens; all 0 = let the library choose */
  int32_t kv_tile[NATTEN_MAX_RANK]; /* key/value tile shape in tokens; all 0 = choose */
  int32_t backend;                  /* natten_backend; NATTEN_BACKEND_AUTO = choose */
  int32_t device;                   /* CUDA device ordinal of the tensors; -1 = current device */
  int32_t kernel_schedule;          /* ABI 1.2 (was `reserved`, must be 0 before): natten_kernel_schedule;
                                       0 = default. Used by NATTEN_BACKEND_HOPPER_FNA (also when AUTO
                                       picks it), ignored by the SM80 kernel. */

  void* stream; /* cudaStream_t to launch on (NULL = legacy default stream) */

  /* ---- ABI 1.1 ---- */
  int64_t global_shape[NATTEN_MAX_RANK]; /* grid the windows live on; all 0 = shape (no slabs) */
  int64_t q_origin[NATTEN_MAX_RANK];     /* global coordinate of q's first token; >= 0 */
  int64_t kv_origin[NATTEN_MAX_RANK];    /* global coordinate of k's and v's first token; >= 0 */
  int64_t kv_shape[NATTEN_MAX_RANK];     /* token grid of k and v; all 0 = shape */
} natten_fna_forward_params;

/* ------------------------------------------------------------------------------------------ */
/* Fused neighborhood attention, backward (ABI 1.1; slabs since ABI 1.2).                      */
/* ------------------------------------------------------------------------------------------ */

/*
 * Gradients of natten_fna_forward. Same layout conventions as the forward, plus:
 *   d_out [B, X, (Y), (Z), H,    Dv]    dtype, gradient of out
 *   d_lse [B, X, (Y), (Z), H]           float32, gradient of lse (optional: NULL = zero)
 *   d_q   [B, X, (Y), (Z), H,    D ]    dtype, written
 *   d_k   [B, X, (Y), (Z), H_kv, D ]    dtype, written (summed over the H / H_kv query heads of
 *                                       each kv head; no repeated K / V is materialized)
 *   d_v   [B, X, (Y), (Z), H_kv, Dv]    dtype, written (same)
 * (X, Y, Z) = shape; with slabs (below) k, v, d_k and d_v have the token grid kv_shape instead.
 * q, k, v, out and lse are the forward's inputs and outputs (lse is required here). The window,
 * scale and tiles must be those of the forward call. All pointers 16-byte aligned (lse, d_lse: 4).
 * workspace: device memory of at least natten_fna_backward_workspace_size() bytes, 16-byte
 * aligned, owned by the caller, used only during the (asynchronous) call; NULL if that size is 0.
 * deterministic: 1 = results are bit-identical across runs; 0 = the library may use a faster,
 * non-deterministic path. (This build's kernels are all deterministic: dQ is computed by a
 * query-parallel kernel and dK / dV by a key-parallel one, none uses atomics.)
 *
 * Slabs of a larger grid (ABI 1.2; the four arrays at the end, same meaning and all-zero default as
 * in natten_fna_forward_params): q, out, lse, d_out, d_lse and d_q have the query slab's grid
 * `shape`; k, v, d_k and d_v the key slab's grid `kv_shape`. The gradients are those of the slab's
 * forward (natten_fna_forward with the same fields) w.r.t. its inputs: only queries of the query
 * slab contribute, and keys of the key slab that no query of the slab attends get d_k = d_v = 0
 * (written). A caller compiled against ABI 1.1 (struct_size 744) gets the whole-grid behaviour.
 */
typedef struct natten_fna_backward_params {
  uint64_t struct_size; /* = sizeof(natten_fna_backward_params) */
  int32_t dtype;        /* natten_dtype of q, k, v, out, d_out, d_q, d_k, d_v */
  int32_t rank;         /* R: 1, 2 or 3 */

  int64_t batch;
  int64_t shape[NATTEN_MAX_RANK];
  int64_t heads;
  int64_t heads_kv;
  int64_t head_dim;
  int64_t head_dim_v;

  const void* q;
  const void* k;
  const void* v;
  const void* out;
  const float* lse;   /* required */
  const void* d_out;
  const float* d_lse; /* optional (NULL = no gradient through the logsumexp) */
  void* d_q;
  void* d_k;
  void* d_v;

  int64_t q_stride[NATTEN_MAX_TENSOR_DIMS];
  int64_t k_stride[NATTEN_MAX_TENSOR_DIMS];
  int64_t v_stride[NATTEN_MAX_TENSOR_DIMS];
  int64_t out_stride[NATTEN_MAX_TENSOR_DIMS];
  int64_t lse_stride[NATTEN_MAX_TENSOR_DIMS - 1];
  int64_t d_out_stride[NATTEN_MAX_TENSOR_DIMS];
  int64_t d_lse_stride[NATTEN_MAX_TENSOR_DIMS - 1];
  int64_t d_q_stride[NATTEN_MAX_TENSOR_DIMS];
  int64_t d_k_stride[NATTEN_MAX_TENSOR_DIMS];
  int64_t d_v_stride[NATTEN_MAX_TENSOR_DIMS];

  int32_t kernel_size[NATTEN_MAX_RANK];
  int32_t stride[NATTEN_MAX_RANK];
  int32_t dilation[NATTEN_MAX_RANK];
  int32_t is_causal[NATTEN_MAX_RANK];
  float scale;

  int32_t q_tile[NATTEN_MAX_RANK];  /* all 0 = let the library choose (as the forward) */
  int32_t kv_tile[NATTEN_MAX_RANK];
  int32_t backend;                  /* natten_backend */
  int32_t device;                   /* -1 = current device */
  int32_t deterministic;            /* 0 or 1 */
  int32_t reserved;                 /* must be 0 */

  void* workspace;          /* device memory, >= natten_fna_backward_workspace_size() bytes */
  uint64_t workspace_bytes; /* size of workspace */
  void* stream;             /* cudaStream_t (NULL = legacy default stream) */

  /* ---- ABI 1.2 ---- */
  int64_t global_shape[NATTEN_MAX_RANK]; /* grid the windows live on; all 0 = shape (no slabs) */
  int64_t q_origin[NATTEN_MAX_RANK];     /* global coordinate of q's (and d_q's) first token; >= 0 */
  int64_t kv_origin[NATTEN_MAX_RANK];    /* global coordinate of k's, v's, d_k's, d_v's first token */
  int64_t kv_shape[NATTEN_MAX_RANK];     /* token grid of k, v, d_k and d_v; all 0 = shape */

  /* ---- ABI 1.3 ---- */
  int32_t kv_splits[NATTEN_MAX_RANK]; /* KV parallelism of the dK / dV kernel: CTAs per axis sharing
                                         the key tiles of each (batch, kv head, dilation group);
                                         all 0 = one CTA per key tile (the default, most parallel);
                                         else 1 <= kv_splits[a] <= key tiles along axis a (entries
                                         past rank: 0 or 1). Results do not depend on it. */
  int32_t reserved_1_3;               /* must be 0 */
} natten_fna_backward_params;

/* A problem description for the kernel-query API. */
typedef struct natten_fna_problem {
  uint64_t struct_size; /* = sizeof(natten_fna_problem) */
  int32_t dtype;        /* natten_dtype */
  int32_t rank;         /* 1, 2 or 3 */
  int64_t head_dim;     /* D */
  int64_t head_dim_v;   /* Dv */
  int32_t arch;         /* SM version 10 * major + minor (80, 86, 90, 100, ...); 0 = ask `device` */
  int32_t device;       /* used only when arch == 0: device ordinal, -1 = current device */
  int32_t backend;      /* natten_backend; NATTEN_BACKEND_AUTO = any */
  int32_t reserved;     /* must be 0 */
} natten_fna_problem;

/* One tile configuration a backend supports. Fixed layout: changing it is an ABI major bump. */
typedef struct natten_tile_config {
  int32_t backend;                  /* natten_backend */
  int32_t rank;                     /* number of valid entries in q_tile / kv_tile */
  int32_t q_tile[NATTEN_MAX_RANK];  /* query tile shape (entries past rank are 1) */
  int32_t kv_tile[NATTEN_MAX_RANK]; /* key/value tile shape (entries past rank are 1) */
  int32_t reserved[2];              /* set to 0 by the library */
} natten_tile_config;

/* ------------------------------------------------------------------------------------------ */
/* Functions                                                                                   */
/* ------------------------------------------------------------------------------------------ */

/* MAJOR * 1000 + MINOR of the loaded library. */
NATTEN_API int natten_abi_version(void) NATTEN_NOEXCEPT;

/* Static, NUL-terminated description of the build: version, ABI, CUDA version, archs, git
 * revision, build type, host compiler. Never NULL. */
NATTEN_API const char* natten_build_info(void) NATTEN_NOEXCEPT;

/* Message of the last failed call in the calling thread; "" if none failed yet. Never NULL.
 * Valid until the next call into the library from the same thread. */
NATTEN_API const char* natten_last_error(void) NATTEN_NOEXCEPT;

/* Static name of a status code ("NATTEN_STATUS_SUCCESS", ...; "NATTEN_STATUS_UNKNOWN" otherwise). */
NATTEN_API const char* natten_status_string(int status) NATTEN_NOEXCEPT;

/* Compute capability of `device` (-1 = current device). NATTEN_STATUS_NO_DEVICE if there is no
 * usable CUDA device or driver, NATTEN_STATUS_INVALID_ARGUMENT for a bad ordinal or NULL output. */
NATTEN_API int natten_device_info(int device, int* cc_major, int* cc_minor) NATTEN_NOEXCEPT;

/* NATTEN_STATUS_SUCCESS if this build has at least one kernel for `problem`, otherwise
 * NATTEN_STATUS_UNSUPPORTED (or INVALID_ARGUMENT / NO_DEVICE) with the reason in
 * natten_last_error(). */
NATTEN_API int natten_fna_supports(const natten_fna_problem* problem) NATTEN_NOEXCEPT;

/* Tile configurations this build supports for `problem`, in a fixed enumeration order (the list
 * depends on backend, rank, head dims and dtype only: natten_fna_problem has no token shape, so
 * it cannot be ranked for a problem; natten-profiler ranks it by simulated tile bound, and the
 * forward's automatic choice, all tiles 0, is not necessarily its first entry). Writes up to `capacity`
 * entries to `out` (which may be NULL when capacity == 0) and the total number available to
 * *count (like snprintf: call with capacity 0 to size the array). Returns SUCCESS when at least
 * one configuration exists; UNSUPPORTED with *count = 0 and a reason otherwise. */
NATTEN_API int natten_fna_query_configs(const natten_fna_problem* problem, natten_tile_config* out,
                                        int capacity, int* count) NATTEN_NOEXCEPT;

/* Fused neighborhood attention forward: out = softmax(scale * q k^T restricted to the
 * neighborhood) v, and optionally lse. Asynchronous on params->stream. */
NATTEN_API int natten_fna_forward(const natten_fna_forward_params* params) NATTEN_NOEXCEPT;

/* ABI 1.1. Bytes of workspace natten_fna_backward needs for `params` (its workspace fields are
 * ignored). Validates the arguments like natten_fna_backward, without touching any device. */
NATTEN_API int natten_fna_backward_workspace_size(const natten_fna_backward_params* params,
                                                  uint64_t* bytes) NATTEN_NOEXCEPT;

/* ABI 1.1. Fused neighborhood attention backward: d_q, d_k, d_v from d_out (and d_lse).
 * Asynchronous on params->stream. */
NATTEN_API int natten_fna_backward(const natten_fna_backward_params* params) NATTEN_NOEXCEPT;

/* ------------------------------------------------------------------------------------------ */
/* Convenience initializers (header-only).                                                     */
/* ------------------------------------------------------------------------------------------ */

/* Zero the struct, set struct_size, device = -1 (current) and unit stride/dilation. */
static inline void natten_fna_forward_params_init(natten_fna_forward_params* p) {
  int i;
  memset(p, 0, sizeof(*p));
  p->struct_size = (uint64_t)sizeof(*p);
  p->device = -1;
  for (i = 0; i < NATTEN_MAX_RANK; ++i) {
    p->stride[i] = 1;
    p->dilation[i] = 1;
  }
}

/* Zero the struct, set struct_size, device = -1 (current) and unit stride/dilation. */
static inline void natten_fna_backward_params_init(natten_fna_backward_params* p) {
  int i;
  memset(p, 0, sizeof(*p));
  p->struct_size = (uint64_t)sizeof(*p);
  p->device = -1;
  for (i = 0; i < NATTEN_MAX_RANK; ++i) {
    p->stride[i] = 1;
    p->dilation[i] = 1;
  }
}

/* Zero the struct, set struct_size and device = -1 (current). */
static inline void natten_fna_problem_init(natten_fna_problem* p) {
  memset(p, 0, sizeof(*p));
  p->struct_size = (uint64_t)sizeof(*p);
  p->device = -1;
}

#if defined(__cplusplus)
} /* extern "C" */
#endif

#endif /* NATTEN_KERNELS_H_ */
