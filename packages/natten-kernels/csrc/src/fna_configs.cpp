// What the SM80 fused NA forward kernel supports (dtypes, head dims, tile configurations), and
// which device images this build contains.
//
// The kernel's own dispatch (csrc/kernels/sm80/fna_forward.hpp) is the single source of truth:
// fna_forward_supports / fna_forward_tile_configs / fna_forward_default_tiles. This file only wraps
// them into ABI statuses and messages.
#include <cstdio>
#include <cstring>
#include <vector>

#include "internal.hpp"
#include "natten_build_config.h"
#include "sm80/fna_forward.hpp"
#include "sm90/fna_forward.hpp"

namespace natten {
namespace abi {

namespace {

void format_tile(char* buf, size_t n, const int* t, int rank) {
  if (rank == 1)
    std::snprintf(buf, n, "(%d,)", t[0]);
  else if (rank == 2)
    std::snprintf(buf, n, "(%d, %d)", t[0], t[1]);
  else
    std::snprintf(buf, n, "(%d, %d, %d)", t[0], t[1], t[2]);
}

bool fits_int(int64_t v) { return v >= 0 && v <= 0x7fffffff; }

}  // namespace

int sm80_check_problem(int dtype, int rank, int64_t head_dim, int64_t head_dim_v, int arch) {
  (void)rank;
  (void)arch;  // every SM >= 8.0 runs the fp16 / bf16 MMAs and the fp32 CUDA-core kernels
  if (dtype != NATTEN_DTYPE_FP16 && dtype != NATTEN_DTYPE_BF16 && dtype != NATTEN_DTYPE_FP32) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT, "dtype %d is not a natten_dtype", dtype);
  }
  const char* reason = nullptr;
  const int kd = dtype == NATTEN_DTYPE_FP16 ? 1 : dtype == NATTEN_DTYPE_BF16 ? 2 : 3;
  if (!fits_int(head_dim) || !fits_int(head_dim_v) ||
      !sm80::fna_forward_supports(int(head_dim), int(head_dim_v), kd, &reason)) {
    return fail(NATTEN_STATUS_UNSUPPORTED, "head_dim %lld / head_dim_v %lld (%s) not supported by the SM80 kernel: %s",
                (long long)head_dim, (long long)head_dim_v,
                dtype == NATTEN_DTYPE_FP16 ? "fp16" : dtype == NATTEN_DTYPE_BF16 ? "bf16" : "fp32",
                reason ? reason : "head dims must be multiples of 8 in [8, 256]");
  }
  return NATTEN_STATUS_SUCCESS;
}

namespace {
// The first n (q_tile, kv_tile) pairs of q / kv (3 ints each, as the sm80 listings write them) as
// SM80 configurations of `rank` axes (entries past rank are 1).
void fill_sm80_configs(TileConfig* out, const std::vector<int>& q, const std::vector<int>& kv, int n, int rank) {
  for (int i = 0; i < n; ++i) {
    TileConfig& c = out[i];
    c.backend = NATTEN_BACKEND_CUTLASS_FNA_SM80;
    c.rank = rank;
    for (int a = 0; a < NATTEN_MAX_RANK; ++a) {
      c.q_tile[a] = a < rank ? q[3 * size_t(i) + a] : 1;
      c.kv_tile[a] = a < rank ? kv[3 * size_t(i) + a] : 1;
    }
  }
}
}  // namespace

int sm80_enumerate_configs(int rank, int64_t head_dim, TileConfig* out, int capacity) {
  if (rank < 1 || rank > NATTEN_MAX_RANK || !fits_int(head_dim) || capacity < 0) return 0;
  const int total = sm80::fna_forward_tile_configs(rank, int(head_dim), nullptr, nullptr, 0);
  if (total <= 0) return 0;
  const int n = total < capacity ? total : capacity;
  if (n == 0) return total;
  std::vector<int> q(3 * size_t(total)), kv(3 * size_t(total));
  sm80::fna_forward_tile_configs(rank, int(head_dim), q.data(), kv.data(), total);
  fill_sm80_configs(out, q, kv, n, rank);
  return total;
}

int sm80_enumerate_forward_configs(int rank, int64_t head_dim, int64_t head_dim_v, int dtype, TileConfig* out,
                                   int capacity) {
  const int n64 = sm80_enumerate_configs(rank, head_dim, out, capacity);
  if (n64 <= 0 || !fits_int(head_dim) || !fits_int(head_dim_v)) return n64;
  const int kd = dtype == NATTEN_DTYPE_FP16 ? 1 : dtype == NATTEN_DTYPE_BF16 ? 2 : 3;
  const int n128 = sm80::fna_forward_q128_tile_configs(rank, int(head_dim), int(head_dim_v), kd, nullptr, nullptr, 0);
  if (n128 <= 0) return n64;
  const int room = capacity > n64 ? capacity - n64 : 0;
  const int n = n128 < room ? n128 : room;
  if (n > 0) {
    std::vector<int> q(3 * size_t(n128)), kv(3 * size_t(n128));
    sm80::fna_forward_q128_tile_configs(rank, int(head_dim), int(head_dim_v), kd, q.data(), kv.data(), n128);
    fill_sm80_configs(out + n64, q, kv, n, rank);
  }
  return n64 + n128;
}

namespace {
int check_tiles_in(const std::vector<TileConfig>& all, int n, int rank, int64_t head_dim, const int* q_tile,
                   const int* kv_tile) {
  for (int i = 0; i < n; ++i) {
    bool eq = true;
    for (int a = 0; a < rank; ++a) eq = eq && all[i].q_tile[a] == q_tile[a] && all[i].kv_tile[a] == kv_tile[a];
    if (eq) return NATTEN_STATUS_SUCCESS;
  }
  char qb[48], kb[48], ex[128] = "none";
  format_tile(qb, sizeof(qb), q_tile, rank);
  format_tile(kb, sizeof(kb), kv_tile, rank);
  if (n > 0) {
    char eq[48], ek[48];
    format_tile(eq, sizeof(eq), all[0].q_tile, rank);
    format_tile(ek, sizeof(ek), all[0].kv_tile, rank);
    std::snprintf(ex, sizeof(ex), "q_tile %s kv_tile %s", eq, ek);
  }
  return fail(NATTEN_STATUS_UNSUPPORTED,
              "tile configuration q_tile %s kv_tile %s is not supported by the SM80 kernel for rank %d, head_dim "
              "%lld (%d configurations exist, e.g. %s; natten_fna_query_configs() lists them; all 0 = let the "
              "library choose)",
              qb, kb, rank, (long long)head_dim, n, ex);
}
}  // namespace

int sm80_check_tiles(int rank, int64_t head_dim, const int* q_tile, const int* kv_tile) {
  const int total = sm80_enumerate_configs(rank, head_dim, nullptr, 0);
  std::vector<TileConfig> all(total > 0 ? size_t(total) : 1);
  const int n = total > 0 ? sm80_enumerate_configs(rank, head_dim, all.data(), total) : 0;
  return check_tiles_in(all, n, rank, head_dim, q_tile, kv_tile);
}

int sm80_check_forward_tiles(int rank, int64_t head_dim, int64_t head_dim_v, int dtype, const int* q_tile,
                             const int* kv_tile) {
  const int total = sm80_enumerate_forward_configs(rank, head_dim, head_dim_v, dtype, nullptr, 0);
  std::vector<TileConfig> all(total > 0 ? size_t(total) : 1);
  const int n = total > 0 ? sm80_enumerate_forward_configs(rank, head_dim, head_dim_v, dtype, all.data(), total) : 0;
  return check_tiles_in(all, n, rank, head_dim, q_tile, kv_tile);
}

// --- Hopper (sm_90a) -----------------------------------------------------------------------------

int hopper_check_problem(int dtype, int rank, int64_t head_dim, int64_t head_dim_v, int arch) {
  (void)rank;
  if (dtype != NATTEN_DTYPE_FP16 && dtype != NATTEN_DTYPE_BF16 && dtype != NATTEN_DTYPE_FP32) {
    return fail(NATTEN_STATUS_INVALID_ARGUMENT, "dtype %d is not a natten_dtype", dtype);
  }
  const char* reason = nullptr;
  const int kd = dtype == NATTEN_DTYPE_FP16 ? 1 : dtype == NATTEN_DTYPE_BF16 ? 2 : 3;
  if (!fits_int(head_dim) || !fits_int(head_dim_v) ||
      !sm90::fna_forward_supports(int(head_dim), int(head_dim_v), kd, &reason)) {
    return fail(NATTEN_STATUS_UNSUPPORTED,
                "NATTEN_BACKEND_HOPPER_FNA does not support head_dim %lld / head_dim_v %lld, dtype %s: %s",
                (long long)head_dim, (long long)head_dim_v,
                dtype == NATTEN_DTYPE_FP16 ? "fp16" : dtype == NATTEN_DTYPE_BF16 ? "bf16" : "fp32",
                reason ? reason : "unsupported head dims");
  }
  if (!sm90::fna_forward_built()) {
    return fail(NATTEN_STATUS_UNSUPPORTED,
                "NATTEN_BACKEND_HOPPER_FNA: this build has no sm_90a kernel (built for %s); rebuild with "
                "NATTEN_CUDA_ARCHS including 90a",
                build_archs_string());
  }
  if (arch != 0 && arch != 90) {
    return fail(NATTEN_STATUS_UNSUPPORTED,
                "NATTEN_BACKEND_HOPPER_FNA runs only on compute capability 9.0 (H100 / H200); this is %d.%d",
                arch / 10, arch % 10);
  }
  return NATTEN_STATUS_SUCCESS;
}

int hopper_enumerate_configs(int rank, int64_t head_dim, int64_t head_dim_v, TileConfig* out, int capacity) {
  if (rank < 1 || rank > NATTEN_MAX_RANK || capacity < 0 || !fits_int(head_dim) || !fits_int(head_dim_v)) return 0;
  const int hd = int(head_dim), hdv = int(head_dim_v);
  const int total = sm90::fna_forward_tile_configs(rank, hd, hdv, nullptr, nullptr, 0);
  if (total <= 0) return 0;
  const int n = total < capacity ? total : capacity;
  if (n == 0) return total;
  std::vector<int> q(3 * size_t(total)), kv(3 * size_t(total));
  sm90::fna_forward_tile_configs(rank, hd, hdv, q.data(), kv.data(), total);
  for (int i = 0; i < n; ++i) {
    TileConfig& c = out[i];
    c.backend = NATTEN_BACKEND_HOPPER_FNA;
    c.rank = rank;
    for (int a = 0; a < NATTEN_MAX_RANK; ++a) {
      c.q_tile[a] = a < rank ? q[3 * size_t(i) + a] : 1;
      c.kv_tile[a] = a < rank ? kv[3 * size_t(i) + a] : 1;
    }
  }
  return total;
}

int hopper_check_tiles(int rank, int64_t head_dim, int64_t head_dim_v, const int* q_tile, const int* kv_tile) {
  const int total = hopper_enumerate_configs(rank, head_dim, head_dim_v, nullptr, 0);
  std::vector<TileConfig> all(total > 0 ? size_t(total) : 1);
  const int n = total > 0 ? hopper_enumerate_configs(rank, head_dim, head_dim_v, all.data(), total) : 0;
  for (int i = 0; i < n; ++i) {
    bool eq = true;
    for (int a = 0; a < rank; ++a) eq = eq && all[i].q_tile[a] == q_tile[a] && all[i].kv_tile[a] == kv_tile[a];
    if (eq) return NATTEN_STATUS_SUCCESS;
  }
  char qb[48], kb[48];
  format_tile(qb, sizeof(qb), q_tile, rank);
  format_tile(kb, sizeof(kb), kv_tile, rank);
  return fail(NATTEN_STATUS_UNSUPPORTED,
              "tile configuration q_tile %s kv_tile %s is not supported by NATTEN_BACKEND_HOPPER_FNA for rank %d "
              "(q_tile must be a power-of-two box of 128 tokens and kv_tile one of %d tokens at head_dim %lld / "
              "head_dim_v %lld; %d configurations exist; natten_fna_query_configs() lists them; all 0 = let the "
              "library choose)",
              qb, kb, rank,
              fits_int(head_dim) && fits_int(head_dim_v) ? 1 << sm90::kv_tile_log2(int(head_dim), int(head_dim_v)) : 0,
              (long long)head_dim, (long long)head_dim_v, n);
}

// --- device images ------------------------------------------------------------------------------

namespace {
struct ArchImage {
  int sm;       // 80, 86, 90, 100, ...
  int variant;  // 0 plain, 1 arch-specific ('a'), 2 family ('f')
  int ptx;      // 1 = PTX (JIT), 0 = SASS
};
constexpr ArchImage kImages[] = NATTEN_BUILD_ARCH_TABLE;
}  // namespace

bool build_has_image_for(int arch) {
  for (const ArchImage& im : kImages) {
    if (im.variant == 1) {
      if (im.sm == arch) return true;  // sm_XYa / compute_XYa run only on X.Y
    } else if (im.ptx) {
      if (arch >= im.sm) return true;  // PTX is JIT-compiled for newer devices
    } else if (im.sm / 10 == arch / 10 && arch % 10 >= im.sm % 10) {
      return true;  // SASS runs on the same major, same or newer minor
    }
  }
  return false;
}

const char* build_archs_string() { return NATTEN_BUILD_ARCHS_STRING; }

}  // namespace abi
}  // namespace natten
