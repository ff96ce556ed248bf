// Internal helpers of the C ABI layer (host only, not installed, not ABI).
#pragma once

#include <cstdarg>
#include <cstddef>
#include <cstdint>

#include "natten_kernels.h"

namespace natten {
namespace abi {

// ---- thread-local last error ------------------------------------------------------------------

// Formats the message into this thread's buffer and returns `status` (for `return fail(...)`).
int fail(int status, const char* fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
const char* last_error() noexcept;

// Returns the status of `expr` from the calling function unless it is NATTEN_STATUS_SUCCESS.
#define NATTEN_CHECK(expr)                                      \
  do {                                                          \
    const int natten_st_ = (expr);                              \
    if (natten_st_ != NATTEN_STATUS_SUCCESS) return natten_st_; \
  } while (0)

// ---- overflow-safe arithmetic -----------------------------------------------------------------

inline bool mul_overflow(int64_t a, int64_t b, int64_t* out) { return __builtin_mul_overflow(a, b, out); }
inline bool add_overflow(int64_t a, int64_t b, int64_t* out) { return __builtin_add_overflow(a, b, out); }

// Longest axis (tokens) of the SM80 kernel, which keeps per-axis token coordinates in 32-bit ints.
constexpr int64_t kMaxKernelAxis = int64_t(1) << 30;

// ---- slabs of a larger grid (fna_region.cpp) ---------------------------------------------------

// The ABI 1.1 fields of natten_fna_forward_params resolved for the first `rank` axes (entries past
// rank: extent 1, origin 0). Without slabs: global_shape = kv_shape = shape, origins 0. The
// backward's ABI 1.2 fields go through the same functions, via the forward problem of the
// backward call (natten_kernels.cpp: backward_as_forward).
struct FnaRegion {
  bool sliced;  // global_shape was given
  int64_t global_shape[NATTEN_MAX_RANK];
  int64_t q_origin[NATTEN_MAX_RANK];
  int64_t kv_origin[NATTEN_MAX_RANK];
  int64_t kv_shape[NATTEN_MAX_RANK];
};

// Reads and checks global_shape / q_origin / kv_origin / kv_shape (zero / non-zero patterns,
// slabs inside the global grid). Needs valid rank and shape. INVALID_ARGUMENT with a message on
// failure.
int resolve_fna_region(const natten_fna_forward_params* p, FnaRegion* r);

// With slabs: the key slab holds every key the query slab attends, per axis (the window
// parameters must already be valid against r.global_shape).
int check_fna_region_coverage(const natten_fna_forward_params* p, const FnaRegion& r);

// ---- tile configurations (fna_configs.cpp) ----------------------------------------------------

struct TileConfig {
  int backend;
  int rank;
  int q_tile[NATTEN_MAX_RANK];   // entries past rank are 1
  int kv_tile[NATTEN_MAX_RANK];  // entries past rank are 1
};

// Is the problem (ignoring the device) one the SM80 kernel handles? Returns NATTEN_STATUS_SUCCESS
// or a failing status with the reason already stored via fail(). `arch` is 10*major+minor, or 0
// when not known yet.
int sm80_check_problem(int dtype, int rank, int64_t head_dim, int64_t head_dim_v, int arch);

// Tile configurations of the SM80 backend for (rank, head dim), in the kernel's order. Writes at
// most `capacity` entries (out may be null when capacity == 0) and returns the total number.
int sm80_enumerate_configs(int rank, int64_t head_dim, TileConfig* out, int capacity);

// The forward's list (natten-kernels >= 1.3.6): sm80_enumerate_configs' 64-token tiles, then, for
// fp16 / bf16 at padded head dim 128, the 128-token query tiles with 64-token key tiles. dtype:
// natten_dtype.
int sm80_enumerate_forward_configs(int rank, int64_t head_dim, int64_t head_dim_v, int dtype, TileConfig* out,
                                   int capacity);

// SUCCESS if (q_tile, kv_tile) (first `rank` entries) is a supported pair, else UNSUPPORTED with
// a message. The 64-token list (the backward's); sm80_check_forward_tiles: the forward's list.
int sm80_check_tiles(int rank, int64_t head_dim, const int* q_tile, const int* kv_tile);
int sm80_check_forward_tiles(int rank, int64_t head_dim, int64_t head_dim_v, int dtype, const int* q_tile,
                             const int* kv_tile);

// Hopper (sm_90a) backend, NATTEN_BACKEND_HOPPER_FNA: the same three queries. `arch` 0 = not
// known yet; otherwise it must be 90 and the build must contain the sm_90a kernel.
int hopper_check_problem(int dtype, int rank, int64_t head_dim, int64_t head_dim_v, int arch);
int hopper_enumerate_configs(int rank, int64_t head_dim, int64_t head_dim_v, TileConfig* out, int capacity);
int hopper_check_tiles(int rank, int64_t head_dim, int64_t head_dim_v, const int* q_tile, const int* kv_tile);

// ---- device images compiled into this build ---------------------------------------------------

// Does this build contain a device image (SASS or JIT-able PTX) that runs on SM `arch`?
bool build_has_image_for(int arch);
// "80-real,86-real,..." as configured.
const char* build_archs_string();

}  // namespace abi
}  // namespace natten
