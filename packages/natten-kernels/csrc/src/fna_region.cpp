// Slabs of a larger grid (ABI 1.1 fields of natten_fna_forward_params): validation of
// global_shape / q_origin / kv_origin / kv_shape, and of the key slab covering the keys the query
// slab attends. Host-only C++; no CUDA calls (argument checks, see natten_kernels.cpp).
#include <cstdint>

#include "internal.hpp"
#include "natten/window.cuh"

namespace natten {
namespace abi {

namespace {

// Entries 0..rank-1 of a per-axis int64 array: all zero (*given = false) or all positive
// (*given = true); anything else is an error naming the field.
int check_optional_shape(const int64_t* v, int rank, const char* name, bool* given) {
  int zeros = 0;
  for (int a = 0; a < rank; ++a) {
    if (v[a] < 0) {
      return fail(NATTEN_STATUS_INVALID_ARGUMENT, "%s[%d] is %lld; it must be >= 1 (or every entry 0)", name, a,
                  (long long)v[a]);
    }
    zeros += v[a] == 0;
  }
  if (zeros != 0 && zeros != rank) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT,
                "%s = (%lld, %lld, %lld)[:%d] mixes zero and non-zero entries; give all %d entries or all 0",
                name, (long long)v[0], (long long)(rank > 1 ? v[1] : 0), (long long)(rank > 2 ? v[2] : 0), rank,
                rank);
  }
  *given = zeros == 0;
  return NATTEN_STATUS_SUCCESS;
}

// A slab [origin, origin + extent) must lie in [0, global) on axis a.
int check_slab(int a, const char* origin_name, int64_t origin, const char* extent_name, int64_t extent,
               int64_t global) {
  if (origin < 0) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT, "%s[%d] is %lld; it must be >= 0", origin_name, a,
                (long long)origin);
  }
  int64_t end = 0;
  if (add_overflow(origin, extent, &end) || end > global) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT,
                "%s[%d] + %s[%d] = %lld + %lld exceeds global_shape[%d] = %lld: the slab must lie inside the "
                "global grid",
                origin_name, a, extent_name, a, (long long)origin, (long long)extent, a, (long long)global);
  }
  return NATTEN_STATUS_SUCCESS;
}

}  // namespace

int resolve_fna_region(const natten_fna_forward_params* p, FnaRegion* r) {
  const int rank = p->rank;
  bool global_given = false, kv_given = false;
  NATTEN_CHECK(check_optional_shape(p->global_shape, rank, "global_shape", &global_given));
  NATTEN_CHECK(check_optional_shape(p->kv_shape, rank, "kv_shape", &kv_given));
  r->sliced = global_given;
  for (int a = 0; a < NATTEN_MAX_RANK; ++a) {
    const bool on = a < rank;
    r->global_shape[a] = on ? (global_given ? p->global_shape[a] : p->shape[a]) : 1;
    r->kv_shape[a] = on ? (kv_given ? p->kv_shape[a] : p->shape[a]) : 1;
    r->q_origin[a] = on ? p->q_origin[a] : 0;
    r->kv_origin[a] = on ? p->kv_origin[a] : 0;
  }
  if (!global_given) {
    // No slabs: the tensors hold the whole grid, so the origins are 0 and k/v have q's grid.
    for (int a = 0; a < rank; ++a) {
      if (p->q_origin[a] != 0 || p->kv_origin[a] != 0) {
        const bool q = p->q_origin[a] != 0;
        return fail(NATTEN_STATUS_INVALID_ARGUMENT,
                    "%s[%d] is %lld but global_shape is all 0 (the tensors hold the whole grid); set "
                    "global_shape to pass slabs of a larger grid",
                    q ? "q_origin" : "kv_origin", a, (long long)(q ? p->q_origin[a] : p->kv_origin[a]));
      }
      if (r->kv_shape[a] != p->shape[a]) {
        return fail(NATTEN_STATUS_INVALID_ARGUMENT,
                    "kv_shape[%d] is %lld but shape[%d] is %lld and global_shape is all 0 (the tensors hold the "
                    "whole grid); set global_shape to pass slabs of a larger grid",
                    a, (long long)r->kv_shape[a], a, (long long)p->shape[a]);
      }
    }
    return NATTEN_STATUS_SUCCESS;
  }
  for (int a = 0; a < rank; ++a) {
    NATTEN_CHECK(check_slab(a, "q_origin", r->q_origin[a], "shape", p->shape[a], r->global_shape[a]));
    NATTEN_CHECK(check_slab(a, "kv_origin", r->kv_origin[a], "kv_shape", r->kv_shape[a], r->global_shape[a]));
  }
  return NATTEN_STATUS_SUCCESS;
}

int check_fna_region_coverage(const natten_fna_forward_params* p, const FnaRegion& r) {
  if (!r.sliced) return NATTEN_STATUS_SUCCESS;
  for (int a = 0; a < p->rank; ++a) {
    // The window math is 32-bit; longer axes are rejected later as UNSUPPORTED by the kernel's
    // axis limit (check_sm80_limits), so nothing runs on them.
    if (r.global_shape[a] > kMaxKernelAxis) continue;
    const int n = int(r.global_shape[a]), q0 = int(r.q_origin[a]), nq = int(p->shape[a]);
    const int K = p->kernel_size[a], s = p->stride[a], d = p->dilation[a];
    const bool causal = p->is_causal[a] != 0;
    int lo = 0, hi = 0;
    window::slab_key_range(n, K, s, d, causal, q0, q0 + nq, lo, hi);
    const int64_t k0 = r.kv_origin[a], k1 = r.kv_origin[a] + r.kv_shape[a];
    if (lo < k0 || hi > k1) {
      return fail(NATTEN_STATUS_INVALID_ARGUMENT,
                  "the key slab [%lld, %lld) on axis %d (kv_origin[%d] = %lld, kv_shape[%d] = %lld) does not "
                  "cover the keys [%d, %d) that the query slab [%d, %d) (q_origin[%d] = %d, shape[%d] = %d) "
                  "attends (global_shape[%d] = %d, kernel_size[%d] = %d, stride[%d] = %d, dilation[%d] = %d, "
                  "is_causal[%d] = %d)",
                  (long long)k0, (long long)k1, a, a, (long long)k0, a, (long long)r.kv_shape[a], lo, hi, q0,
                  q0 + nq, a, q0, a, nq, a, n, a, K, a, s, a, d, a, int(causal));
    }
  }
  return NATTEN_STATUS_SUCCESS;
}

}  // namespace abi
}  // namespace natten
