// Host dispatch of the SM80 fused neighborhood-attention forward kernel: argument normalization
// (rank < 3 -> padded axes), tile choice, alignment check, and the (dtype, head dim) dispatch.
#include "fna_forward.hpp"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "fna_forward_launch.hpp"
#include "params.cuh"
#include "simt/fna_f32.hpp"
#include "small_window.hpp"
#include "tile_scheduler.cuh"

namespace natten {
namespace sm80 {

namespace {

constexpr int kTileLog2 = 6;  // 64-token query and key tiles (the compiled tile sizes)

int padded_dim(int d) {
  if (d <= 32) return 32;
  if (d <= 64) return 64;
  if (d <= 128) return 128;
  if (d <= 256) return 256;
  return -1;
}

// The 128-token query tile kernels (4 warps of 32 rows) exist for fp16 / bf16 at padded head dim 128.
bool q128_built(int dtype, int dim) { return (dtype == 1 || dtype == 2) && dim == 128; }

int log2_exact(int x) {  // -1 if x is not a power of two >= 1
  if (x <= 0 || (x & (x - 1)) != 0) return -1;
  int l = 0;
  while ((1 << l) < x) ++l;
  return l;
}

// Tile shape given by the caller: 1 = valid (log2s written), 0 = "choose for me", -1 = invalid
// (not a box of 2^total tokens).
int parse_tile(const int* tile, int rank, int log2s[kRank], int expected_total = kTileLog2) {
  for (int a = 0; a < rank; ++a)
    if (tile[a] <= 0) return 0;
  int total = 0;
  for (int a = 0; a < kRank; ++a) {
    if (a >= rank) {
      log2s[a] = 0;
      continue;
    }
    log2s[a] = log2_exact(tile[a]);
    if (log2s[a] < 0) return -1;
    total += log2s[a];
  }
  return total == expected_total ? 1 : -1;
}

// Normalized per-axis problem (padded to 3 axes). Returns false if the problem is invalid.
// n: global grid; nq / q0: query slab extent / origin; nkv / k0: key slab extent / origin.
struct AxisProblem {
  int n, K, s, d;
  bool causal;
  int nq, q0, nkv, k0;

  bool operator==(const AxisProblem& o) const {
    return n == o.n && K == o.K && s == o.s && d == o.d && causal == o.causal && nq == o.nq && q0 == o.q0 &&
           nkv == o.nkv && k0 == o.k0;
  }
};

bool fits_int(int64_t x) { return x >= 0 && x <= INT_MAX; }

bool normalize_axes(const FnaForwardArgs& args, AxisProblem ax[kRank], bool* empty) {
  if (args.rank < 1 || args.rank > kRank) return false;
  *empty = false;
  for (int a = 0; a < kRank; ++a) {
    if (a >= args.rank) {
      ax[a] = AxisProblem{1, 1, 1, 1, false, 1, 0, 1, 0};
      continue;
    }
    const int64_t n = args.global_extent[a], nq = args.extent[a], nkv = args.kv_extent[a];
    const int64_t q0 = args.q_origin[a], k0 = args.kv_origin[a];
    if (!fits_int(n) || !fits_int(nq) || !fits_int(nkv) || !fits_int(q0) || !fits_int(k0)) return false;
    if (q0 + nq > n || k0 + nkv > n) return false;
    if (nq == 0) {
      *empty = true;
      ax[a] = AxisProblem{0, 1, 1, 1, false, 0, 0, 0, 0};
      continue;
    }
    const int K = args.kernel_size[a], s = args.stride[a], d = args.dilation[a];
    if (K < 1 || s < 1 || s > K || d < 1 || int64_t(K) * int64_t(d) > n) return false;
    const bool causal = args.is_causal[a];
    // The key slab must hold every key the query slab attends (the kernel never reads outside it).
    int lo = 0, hi = 0;
    window::slab_key_range(int(n), K, s, d, causal, int(q0), int(q0 + nq), lo, hi);
    if (lo < k0 || hi > k0 + nkv) return false;
    ax[a] = AxisProblem{int(n), K, s, d, causal, int(nq), int(q0), int(nkv), int(k0)};
  }
  return true;
}

// Dilation groups g < this hold ceil(n / d) tokens, the others floor(n / d) (n >= 1).
int groups_before_size_change(int n, int d) {
  return n - (window::group_extent(n, d, 0) - 1) * d;
}

// Visited (query, key) pairs of a tiling, and those of them in key tiles that need no mask (every
// key of the tile attended by every query of the query tile; window.cuh, tile_full_range).
struct PairCount {
  double all = 0.0;
  double full = 0.0;
};

// PairCount of one dilation group of the query slab: query slab group gl.
PairCount group_visits(const AxisProblem& ax, int gl, int ql, int kl) {
  const int qt = 1 << ql, kt = 1 << kl;
  const int nq = window::group_extent(ax.nq, ax.d, gl);
  const int shift = (ax.q0 + gl) / ax.d;  // global coordinate = slab coordinate + shift
  const int ng = window::group_extent(ax.n, ax.d, (ax.q0 + gl) % ax.d);
  const window::Axis a = window::make_axis(ng, ax.K, ax.s, ax.causal);
  PairCount c;
  for (int q0 = 0; q0 < nq; q0 += qt) {
    const int q1 = window::imin(q0 + qt - 1, nq - 1);
    int ks, ke, lo, hi;
    window::tile_key_range(q0 + shift, q1 + shift, a, ks, ke);
    window::tile_full_range(q0 + shift, q1 + shift, a, lo, hi);
    const int tiles = (ke - ks + kt) >> kl;
    // Key tiles j (origin ks + j kt) inside [lo, hi]: lo >= ks, so j_lo >= 0.
    const int j_lo = (lo - ks + kt - 1) >> kl;
    const int span = hi - kt + 1 - ks;  // j kt <= span
    const int j_hi = span < 0 ? -1 : window::imin(span >> kl, tiles - 1);
    c.all += double(qt) * double(tiles * kt);
    c.full += double(qt) * double(j_hi >= j_lo ? (j_hi - j_lo + 1) * kt : 0);
  }
  return c;
}

// PairCount on one axis for a query tile of 2^ql and key tile of 2^kl tokens, summed over the query
// tiles of every dilation group of the query slab (padding included: a CTA computes whole tiles).
// Separable over axes: the totals are the products of the per-axis values (a key tile needs no mask
// iff it needs none on every axis).
PairCount axis_visits(const AxisProblem& ax, int ql, int kl) {
  // Instead of walking all d groups: the slab group's size, its global group's size and the shift
  // change only where the slab group index crosses one of these cuts, so weigh runs of groups.
  const int d = ax.d, qm = ax.q0 % d;
  const int rn = groups_before_size_change(ax.n, d);
  int cuts[6] = {0, groups_before_size_change(ax.nq, d), d - qm, rn - qm, rn - qm + d, d};
  std::sort(cuts, cuts + 6);
  PairCount total;
  for (int i = 0; i + 1 < 6; ++i) {
    const int lo = window::imax(cuts[i], 0), hi = window::imin(cuts[i + 1], d);
    if (lo >= hi) continue;
    const PairCount g = group_visits(ax, lo, ql, kl);
    total.all += g.all * (hi - lo);
    total.full += g.full * (hi - lo);
  }
  return total;
}

// Visited pairs on one axis of the backward's key-parallel walk (tile_scheduler.cuh).
double axis_key_walk_visits(const AxisProblem& ax, int ql, int kl) {
  return key_walk_axis_pairs(ax.n, ax.K, ax.s, ax.d, ax.causal, ax.nq, ax.q0, ax.nkv, ax.k0, ql, kl);
}

constexpr int kMaxTileLog2 = 7;  // 128-token tiles (the SM90 kernel) share this chooser
constexpr int kMaxShapes = 36;   // compositions of 7 into 3 parts

int tile_shapes(int rank, int out[][kRank], int capacity, int tile_log2 = kTileLog2) {
  return log2_box_shapes(rank, tile_log2, out, capacity);
}

// Query tiles of 2^tile_log2 tokens, key tiles of 2^kv_log2 (the SM90 kernel at head dim 256: 128
// and 64). Cost of a tiling: its visited pairs, those in key tiles that need a mask weighted by
// mask_weight (1: pairs only). key_walk: count the pairs of the backward's key-parallel walk
// instead (axis_key_walk_visits; mask_weight is then ignored). Returns the visited (query, key)
// pairs of the chosen tiling, and (full) those in key tiles that need no mask.
PairCount choose_tiles(int rank, const AxisProblem ax[kRank], int ql[kRank], int kl[kRank], int tile_log2,
                       int kv_log2, double mask_weight, bool key_walk = false) {
  if (key_walk) mask_weight = 1.0;
  const auto count = [&](int a, int q, int k) {
    if (!key_walk) return axis_visits(ax[a], q, k);
    PairCount c;
    c.all = c.full = axis_key_walk_visits(ax[a], q, k);
    return c;
  };
  int shapes[kMaxShapes][kRank], kshapes[kMaxShapes][kRank];
  const int ns = tile_shapes(rank, shapes, kMaxShapes, tile_log2);
  const int nk = tile_shapes(rank, kshapes, kMaxShapes, kv_log2);
  for (int a = 0; a < kRank; ++a) {
    ql[a] = shapes[0][a];
    kl[a] = kshapes[0][a];
  }
  if (ns == 1 && nk == 1) {  // rank 1: a single shape
    PairCount c;
    c.all = c.full = 1.0;
    for (int a = 0; a < rank; ++a) {
      const PairCount x = count(a, ql[a], kl[a]);
      c.all *= x.all;
      c.full *= x.full;
    }
    return c;
  }
  PairCount cost[kRank][kMaxTileLog2 + 1][kMaxTileLog2 + 1];
  for (int a = 0; a < rank; ++a)
    for (int q = 0; q <= tile_log2; ++q)
      for (int k = 0; k <= kv_log2; ++k) cost[a][q][k] = count(a, q, k);
  double best = -1.0;
  PairCount best_pairs;
  bool best_same = false;
  for (int iq = 0; iq < ns; ++iq) {
    for (int ik = 0; ik < nk; ++ik) {
      double all = 1.0, full = 1.0;
      for (int a = 0; a < rank; ++a) {
        all *= cost[a][shapes[iq][a]][kshapes[ik][a]].all;
        full *= cost[a][shapes[iq][a]][kshapes[ik][a]].full;
      }
      const double c = mask_weight * all - (mask_weight - 1.0) * full;
      // Lowest cost; among (near-)ties prefer a key box inside the query box (equal shapes when the
      // sizes are equal); on the key walk, a query box inside the key box.
      bool same = true;
      for (int a = 0; a < kRank; ++a)
        same = same && (key_walk ? shapes[iq][a] <= kshapes[ik][a] : kshapes[ik][a] <= shapes[iq][a]);
      const bool tie = best >= 0.0 && c <= best * (1.0 + 1e-9) && c >= best * (1.0 - 1e-9);
      if (best < 0.0 || (!tie && c < best) || (tie && same && !best_same)) {
        best = c;
        best_pairs.all = all;
        best_pairs.full = full;
        best_same = same;
        for (int a = 0; a < kRank; ++a) {
          ql[a] = shapes[iq][a];
          kl[a] = kshapes[ik][a];
        }
      }
    }
  }
  return best_pairs;
}

// Small cache of recent automatic choices, per thread: the search costs O(extent) per axis for each
// of up to 36 x 36 tile pairs (rank 3, 128-token tiles), ~15-25 us of host time per call on a
// development CPU, and a model alternates between several problems (layers, the SM80 and Hopper
// tile sizes of one problem), which a single entry would miss every time. Replacement: the least
// recently used entry. A Hopper training step of one problem takes 4 entries (the forward's tiles,
// the dQ kernel's 64- and 128-token key tilings, the dK / dV key walk), so 32 entries keep about 8
// problems' choices (a lookup scans them: tens of nanoseconds).
struct TileChoiceEntry {
  bool valid = false;
  int rank = 0;
  int tile_log2 = 0;
  int kv_log2 = 0;
  double mask_weight = 1.0;
  bool key_walk = false;
  unsigned last_use = 0;
  AxisProblem ax[kRank];
  int ql[kRank], kl[kRank];
  PairCount visits;  // visited (query, key) pairs of the chosen tiling (full: in unmasked key tiles)
};
constexpr int kTileCacheEntries = 32;
struct TileChoiceCache {
  TileChoiceEntry entry[kTileCacheEntries];
  unsigned clock = 0;
};
thread_local TileChoiceCache g_tile_cache;

// Returns the visited (query, key) pairs of the chosen tiling; *full (optional): those in key tiles
// that need no mask.
double choose_tiles_cached(int rank, const AxisProblem ax[kRank], int ql[kRank], int kl[kRank],
                           int tile_log2 = kTileLog2, int kv_log2 = -1, double mask_weight = 1.0,
                           bool key_walk = false, double* full = nullptr) {
  if (kv_log2 < 0) kv_log2 = tile_log2;
  TileChoiceCache& c = g_tile_cache;
  TileChoiceEntry* hit = nullptr;
  TileChoiceEntry* victim = &c.entry[0];
  for (TileChoiceEntry& e : c.entry) {
    if (e.valid && e.rank == rank && e.tile_log2 == tile_log2 && e.kv_log2 == kv_log2 &&
        e.mask_weight == mask_weight && e.key_walk == key_walk) {
      bool same = true;
      for (int a = 0; a < kRank && same; ++a) same = e.ax[a] == ax[a];
      if (same) {
        hit = &e;
        break;
      }
    }
    if (!e.valid || (victim->valid && e.last_use < victim->last_use)) victim = &e;
  }
  if (hit == nullptr) {
    hit = victim;
    hit->visits = choose_tiles(rank, ax, hit->ql, hit->kl, tile_log2, kv_log2, mask_weight, key_walk);
    hit->valid = true;
    hit->rank = rank;
    hit->tile_log2 = tile_log2;
    hit->kv_log2 = kv_log2;
    hit->mask_weight = mask_weight;
    hit->key_walk = key_walk;
    for (int a = 0; a < kRank; ++a) hit->ax[a] = ax[a];
  }
  hit->last_use = ++c.clock;
  for (int a = 0; a < kRank; ++a) {
    ql[a] = hit->ql[a];
    kl[a] = hit->kl[a];
  }
  if (full != nullptr) *full = hit->visits.full;
  return hit->visits.all;
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }
bool stride_ok(int64_t s) { return (s & 7) == 0; }  // 8 halves = 16 bytes

}  // namespace

bool fna_forward_supports(int head_dim, int head_dim_v, int dtype, const char** reason) {
  const char* why = nullptr;
  if (dtype != 1 && dtype != 2 && dtype != 3)
    why = "sm80 fna_forward supports only fp16 (dtype 1), bf16 (dtype 2) and fp32 (dtype 3)";
  else if (head_dim < 8 || head_dim > 256 || head_dim % 8 != 0)
    why = "sm80 fna_forward supports head_dim in [8, 256] that are multiples of 8";
  else if (head_dim_v < 8 || head_dim_v > 256 || head_dim_v % 8 != 0)
    why = "sm80 fna_forward supports head_dim_v in [8, 256] that are multiples of 8";
  if (reason != nullptr) *reason = why;
  return why == nullptr;
}

int fna_forward_tile_configs(int rank, int head_dim, int* q_tiles, int* kv_tiles, int capacity) {
  if (head_dim < 8 || head_dim > 256 || head_dim % 8 != 0) return 0;
  return fna_forward_tile_pairs(rank, kTileLog2, q_tiles, kv_tiles, capacity);
}

int fna_forward_q128_tile_configs(int rank, int head_dim, int head_dim_v, int dtype, int* q_tiles, int* kv_tiles,
                                  int capacity) {
  if (!fna_forward_supports(head_dim, head_dim_v, dtype, nullptr) ||
      !q128_built(dtype, padded_dim(head_dim > head_dim_v ? head_dim : head_dim_v)))
    return 0;
  return fna_forward_tile_pairs(rank, kTileLog2 + 1, q_tiles, kv_tiles, capacity, kTileLog2);
}

int fna_forward_tile_pairs(int rank, int tile_log2, int* q_tiles, int* kv_tiles, int capacity, int kv_log2) {
  if (kv_log2 < 0) kv_log2 = tile_log2;
  if (rank < 1 || rank > kRank || tile_log2 < 0 || tile_log2 > kMaxTileLog2 || kv_log2 > kMaxTileLog2) return 0;
  int shapes[kMaxShapes][kRank], kshapes[kMaxShapes][kRank];
  const int ns = tile_shapes(rank, shapes, kMaxShapes, tile_log2);
  const int nk = tile_shapes(rank, kshapes, kMaxShapes, kv_log2);
  int count = 0;
  for (int iq = 0; iq < ns; ++iq) {
    for (int ik = 0; ik < nk; ++ik) {
      if (count < capacity) {
        for (int a = 0; a < kRank; ++a) {
          if (q_tiles != nullptr) q_tiles[3 * count + a] = 1 << shapes[iq][a];
          if (kv_tiles != nullptr) kv_tiles[3 * count + a] = 1 << kshapes[ik][a];
        }
      }
      ++count;
    }
  }
  return count;
}

bool fna_forward_axes_valid(const FnaForwardArgs& args) {
  AxisProblem ax[kRank];
  bool empty = false;
  return normalize_axes(args, ax, &empty);
}

cudaError_t fna_forward_default_tiles(const FnaForwardArgs& args, int q_tile[3], int kv_tile[3]) {
  return fna_forward_choose_tiles(args, kTileLog2, q_tile, kv_tile);
}

namespace {
cudaError_t choose_tiles_for(const FnaForwardArgs& args, int tile_log2, int q_tile[3], int kv_tile[3], int kv_log2,
                             double mask_weight, bool key_walk) {
  if (kv_log2 < 0) kv_log2 = tile_log2;
  if (tile_log2 < 0 || tile_log2 > kMaxTileLog2 || kv_log2 > kMaxTileLog2) return cudaErrorInvalidValue;
  AxisProblem ax[kRank];
  bool empty = false;
  if (!normalize_axes(args, ax, &empty)) return cudaErrorInvalidValue;
  int ql[kRank], kl[kRank];
  if (empty) {
    int shapes[1][kRank] = {}, kshapes[1][kRank] = {};
    tile_shapes(args.rank, shapes, 1, tile_log2);
    tile_shapes(args.rank, kshapes, 1, kv_log2);
    for (int a = 0; a < kRank; ++a) {
      ql[a] = shapes[0][a];
      kl[a] = kshapes[0][a];
    }
  } else {
    choose_tiles_cached(args.rank, ax, ql, kl, tile_log2, kv_log2, mask_weight, key_walk);
  }
  for (int a = 0; a < kRank; ++a) {
    q_tile[a] = 1 << ql[a];
    kv_tile[a] = 1 << kl[a];
  }
  return cudaSuccess;
}
}  // namespace

cudaError_t fna_forward_choose_tiles(const FnaForwardArgs& args, int tile_log2, int q_tile[3], int kv_tile[3],
                                     int kv_log2, double mask_weight) {
  return choose_tiles_for(args, tile_log2, q_tile, kv_tile, kv_log2, mask_weight, false);
}

cudaError_t key_walk_choose_tiles(const FnaForwardArgs& args, int q_log2, int kv_log2, int q_tile[3], int kv_tile[3]) {
  return choose_tiles_for(args, q_log2, q_tile, kv_tile, kv_log2, 1.0, true);
}

cudaError_t fna_forward_geometry(const FnaForwardArgs& args, Geometry* geo, bool* empty, int q_log2_total) {
  AxisProblem ax[kRank];
  bool none = false;
  if (!normalize_axes(args, ax, &none)) return cudaErrorInvalidValue;
  if (args.batch < 0 || args.heads < 0 || args.heads_kv < 0) return cudaErrorInvalidValue;
  *empty = none || args.batch == 0 || args.heads == 0;
  if (*empty) return cudaSuccess;
  if (args.heads_kv == 0 || args.heads % args.heads_kv != 0) return cudaErrorInvalidValue;

  Geometry& g = *geo;
  std::memset(&g, 0, sizeof(g));
  int ql[kRank], kl[kRank];
  const int pq = parse_tile(args.q_tile, args.rank, ql, q_log2_total);
  const int pk = parse_tile(args.kv_tile, args.rank, kl);
  if (pq < 0 || pk < 0) return cudaErrorInvalidValue;
  if (pq == 0 || pk == 0) {
    int aql[kRank], akl[kRank];
    choose_tiles_cached(args.rank, ax, aql, akl, q_log2_total, kTileLog2);
    for (int a = 0; a < kRank; ++a) {
      if (pq == 0) ql[a] = aql[a];
      if (pk == 0) kl[a] = akl[a];
    }
  }
  for (int a = 0; a < kRank; ++a) {
    g.extent[a] = ax[a].n;
    g.q_extent[a] = ax[a].nq;
    g.kv_extent[a] = ax[a].nkv;
    g.q_origin[a] = ax[a].q0;
    g.kv_origin[a] = ax[a].k0;
    g.kernel[a] = ax[a].K;
    g.stride[a] = ax[a].s;
    g.dilation[a] = ax[a].d;
    g.causal[a] = ax[a].causal ? 1 : 0;
    g.q_log2[a] = ql[a];
    g.kv_log2[a] = kl[a];
  }
  g.batch = args.batch;
  g.heads = args.heads;
  geometry_finalize(g);
  return cudaSuccess;
}

namespace {
// 128-token query tiles on 4 warps (32 rows per warp; K / V tiles of 64 tokens) at head dim 128,
// fp16 / bf16, when the caller gives no tiles. Each K / V fragment a warp reads from shared memory
// feeds two MMAs, and each K / V tile serves twice the queries. H100, 2026-11-27, same process vs
// the 64 x 64 kernel: 1.36-1.42x on the block-sparse rows and dense attention, 1.16-1.29x on
// flux-4k / hunyuan / gqa / causal-video. At head dims 32 and 64 the same tiling measured slower
// (nat-small -13%, dilated -7.5%), so it is not built there. Taken when the chooser's 128 x 64 tiling
// visits at most kQ128MaxExtra times the (query, key) pairs of its 64 x 64 one.
// NATTEN_SM80_Q128=0 / 1 turns it off / on wherever it applies (read per call; for measurements).
constexpr double kQ128MaxExtra = 1.25;
bool use_q128(const FnaForwardArgs& args, int dtype, int dim) {
  if (!q128_built(dtype, dim)) return false;
  const char* env = std::getenv("NATTEN_SM80_Q128");
  if (env != nullptr && env[0] == '0') return false;
  if (env != nullptr && env[0] == '1') return true;
  AxisProblem ax[kRank];
  bool none = false;
  if (!normalize_axes(args, ax, &none) || none) return false;
  // Both costs come from the per-thread choice cache, so a repeated call does no O(extent) work.
  int ql[kRank], kl[kRank];
  const double c6 = choose_tiles_cached(args.rank, ax, ql, kl, kTileLog2, kTileLog2);
  const double c7 = choose_tiles_cached(args.rank, ax, ql, kl, kTileLog2 + 1, kTileLog2);
  return c7 <= kQ128MaxExtra * c6;
}

// Sum of the log2 tile extents of a given tile (0 if not given or not powers of two).
int tile_log2_total(const int* tile, int rank) {
  int total = 0;
  for (int a = 0; a < rank; ++a) {
    const int l = log2_exact(tile[a]);
    if (l < 0) return 0;
    total += l;
  }
  return total;
}
}  // namespace

double fna_forward_default_pairs(const FnaForwardArgs& args) {
  AxisProblem ax[kRank];
  bool none = false;
  if (!normalize_axes(args, ax, &none) || none) return 0.0;
  int ql[kRank], kl[kRank];
  return choose_tiles_cached(args.rank, ax, ql, kl);
}

bool fna_forward_tiling_pairs(const FnaForwardArgs& args, int tile_log2, int kv_log2, double* all, double* full) {
  if (tile_log2 < 0 || tile_log2 > kMaxTileLog2 || kv_log2 < 0 || kv_log2 > kMaxTileLog2) return false;
  AxisProblem ax[kRank];
  bool none = false;
  if (!normalize_axes(args, ax, &none) || none) return false;
  int ql[kRank], kl[kRank];
  *all = choose_tiles_cached(args.rank, ax, ql, kl, tile_log2, kv_log2, 1.0, false, full);
  return true;
}

cudaError_t fna_forward_auto_tiles(const FnaForwardArgs& args, int dtype, int q_tile[3], int kv_tile[3]) {
  if (args.head_dim > INT_MAX || args.head_dim_v > INT_MAX) return cudaErrorNotSupported;
  const int D = int(args.head_dim), Dv = int(args.head_dim_v);
  if (use_q128(args, dtype, padded_dim(D > Dv ? D : Dv))) return fna_forward_choose_tiles(args, kTileLog2 + 1, q_tile, kv_tile, kTileLog2);
  return fna_forward_choose_tiles(args, kTileLog2, q_tile, kv_tile);
}

cudaError_t fna_forward(const FnaForwardArgs& args, int dtype, cudaStream_t stream) {
  if (args.head_dim > INT_MAX || args.head_dim_v > INT_MAX) return cudaErrorNotSupported;
  const int D = int(args.head_dim), Dv = int(args.head_dim_v);
  if (!fna_forward_supports(D, Dv, dtype, nullptr)) return cudaErrorNotSupported;

  FnaParams p;
  std::memset(&p, 0, sizeof(p));
  bool empty = false;
  // 128-token query tiles (from fna_forward_auto_tiles) at head dim 128, fp16 / bf16 only.
  const int dim = padded_dim(D > Dv ? D : Dv);
  const bool q128 = q128_built(dtype, dim) && tile_log2_total(args.q_tile, args.rank) == kTileLog2 + 1;
  const cudaError_t ge = fna_forward_geometry(args, &p.geo, &empty, q128 ? kTileLog2 + 1 : kTileLog2);
  if (ge != cudaSuccess) return ge;
  if (empty) return cudaSuccess;
  if (args.q == nullptr || args.k == nullptr || args.v == nullptr || args.out == nullptr)
    return cudaErrorInvalidValue;

  p.q = args.q;
  p.k = args.k;
  p.v = args.v;
  p.o = args.out;
  p.lse = args.lse;
  p.q_batch = args.q_stride_batch;
  p.k_batch = args.k_stride_batch;
  p.v_batch = args.v_stride_batch;
  p.o_batch = args.o_stride_batch;
  p.lse_batch = args.lse_stride_batch;
  p.q_head = args.q_stride_head;
  p.k_head = args.k_stride_head;
  p.v_head = args.v_stride_head;
  p.o_head = args.o_stride_head;
  p.lse_head = args.lse_stride_head;
  for (int a = 0; a < kRank; ++a) {
    const bool real = a < args.rank;
    p.q_spatial[a] = real ? args.q_stride_spatial[a] : 0;
    p.k_spatial[a] = real ? args.k_stride_spatial[a] : 0;
    p.v_spatial[a] = real ? args.v_stride_spatial[a] : 0;
    p.o_spatial[a] = real ? args.o_stride_spatial[a] : 0;
    p.lse_spatial[a] = real ? args.lse_stride_spatial[a] : 0;
  }
  p.heads_per_kv = args.heads / args.heads_kv;
  p.head_dim = D;
  p.head_dim_v = Dv;
  p.scale_log2 = float(double(args.scale) * 1.4426950408889634074);

  bool aligned = aligned16(args.q) && aligned16(args.k) && aligned16(args.v) && aligned16(args.out);
  const int64_t strides[] = {p.q_batch, p.q_head, p.k_batch, p.k_head, p.v_batch, p.v_head, p.o_batch, p.o_head};
  for (int64_t s : strides) aligned = aligned && stride_ok(s);
  for (int a = 0; a < kRank; ++a)
    aligned = aligned && stride_ok(p.q_spatial[a]) && stride_ok(p.k_spatial[a]) && stride_ok(p.v_spatial[a]) &&
              stride_ok(p.o_spatial[a]);
  p.aligned = aligned ? 1 : 0;
#if defined(NATTEN_SM80_TRACE)
  p.trace = trace_buffer_from_env();
#endif

  if (dtype == 3) return simt::fna_forward_f32(p, stream);  // CUDA cores, same tiles
  cudaError_t small_result = cudaSuccess;
  if (small_window_forward(args, dtype, p, stream, &small_result)) return small_result;
  if (dtype == 1) {
    switch (dim) {
      case 32: return launch_fna_forward<1, 32>(p, stream);
      case 64: return launch_fna_forward<1, 64>(p, stream);
      case 128: return q128 ? launch_fna_forward<1, 128, 128, 64, 4>(p, stream) : launch_fna_forward<1, 128>(p, stream);
      case 256: return launch_fna_forward<1, 256>(p, stream);
    }
  } else {
    switch (dim) {
      case 32: return launch_fna_forward<2, 32>(p, stream);
      case 64: return launch_fna_forward<2, 64>(p, stream);
      case 128: return q128 ? launch_fna_forward<2, 128, 128, 64, 4>(p, stream) : launch_fna_forward<2, 128>(p, stream);
      case 256: return launch_fna_forward<2, 256>(p, stream);
    }
  }
  return cudaErrorNotSupported;
}

}  // namespace sm80
}  // namespace natten
