// Plan and mask math of the SM80 small-window forward kernel (small_window_kernel.cuh).
//
// The tiled forward (fna_forward_kernel.cuh) computes 64-token query tiles against 64-token key
// tiles. With small windows (e.g. 7x7 on a 56x56 grid, classification-style NA) most of that work
// is masked: an 8x8 query tile sees a 14x14 key box, covered by 4-9 key tiles of 64, so ~10% of the
// computed scores are attended. The small-window kernel instead gives each warp a *patch* of 16
// queries (one m16 MMA row block, a box such as 4x4) and computes it against exactly the key box of
// that patch (the union of its windows, e.g. 10x10 = 100 keys, padded to 112), gathering the key
// rows from a shared-memory *halo* (the union of the windows of the CTA's query *region*, e.g. 8x16
// queries -> a 14x22 key halo, loaded once per CTA). ldmatrix takes one row address per lane, so
// the gather costs nothing over a contiguous load.
//
// Everything here is plain integer C++ (host and device), so the CPU test
// (tests/small_window_test.cpp) checks the plan bounds and the row masks against brute force.
#pragma once

#include <cstdint>

#include "natten/window.cuh"
#include "tile_scheduler.cuh"

namespace natten {
namespace sm80 {

constexpr int kSwPatchLog2 = 4;     // 16 queries per warp patch
constexpr int kSwMaxKeys = 128;     // largest key box of a patch (S: 64 fp32 registers per thread)
constexpr int kSwWarps = 4;         // warps per CTA (128 threads)

// ---- runs of queries on one axis ----------------------------------------------------------------
//
// Per axis, the query slab's dilation groups are cut into runs of 2^l queries (the last run of a
// group may be shorter). For each run, the union of its windows is the key range
// [window_start(first), window_end(last)] (monotone windows). `visit_runs` calls f(ks, ke, len) for
// every run of every group of axis a (len: real queries of the run; ks, ke global group-local).
template <class F>
inline void sw_visit_runs(const Geometry& g, int a, int l, F&& f) {
  const int d = g.dilation[a];
  const int groups = window::imin(d, g.q_extent[a]);
  for (int gl = 0; gl < groups; ++gl) {
    const int first = g.q_origin[a] + gl;
    const int gg = first % d;
    const int ng = window::group_extent(g.extent[a], d, gg);
    const int nq = window::group_extent(g.q_extent[a], d, gl);
    const int shift = first / d;
    const window::Axis ax = window::make_axis(ng, g.kernel[a], g.stride[a], g.causal[a] != 0);
    for (int q0 = 0; q0 < nq; q0 += (1 << l)) {
      const int q1 = window::imin(q0 + (1 << l) - 1, nq - 1);
      int ks, ke;
      window::tile_key_range(q0 + shift, q1 + shift, ax, ks, ke);
      f(ks, ke, q1 - q0 + 1);
    }
  }
}

struct SwRunStats {
  int max_ext = 0;      // largest key range of a run
  double sum_ext = 0;   // sum of the key ranges of all runs
  double runs = 0;      // number of runs
};

inline SwRunStats sw_run_stats(const Geometry& g, int a, int l) {
  SwRunStats s;
  sw_visit_runs(g, a, l, [&](int ks, int ke, int) {
    const int ext = ke - ks + 1;
    s.max_ext = window::imax(s.max_ext, ext);
    s.sum_ext += ext;
    s.runs += 1;
  });
  return s;
}

struct SwPlan {
  int region_log2[kRank] = {0, 0, 0};  // CTA query box (2^6 or 2^7 tokens)
  int patch_log2[kRank] = {0, 0, 0};   // warp patch (2^4 tokens), inside the region box per axis
  int halo_rows = 0;                   // bound on the key rows of any region's halo (product of per-axis maxima)
  int max_keys = 0;                    // bound on the keys of any patch box
  double pairs = 0;                    // estimated (query, key) pairs computed (16 x padded patch boxes)
  double cost = 0;                     // halo rows loaded + 1.5 x padded patch keys (relative units)
};

// Chooses the patch and region boxes of the small-window kernel for the problem in g (its extents,
// slabs, kernel, stride, dilation, causal; its tile fields are ignored) and a smem budget in bytes
// per CTA with `row_bytes` per K / V / Q row. Returns false when no patch box fits kSwMaxKeys keys
// or no region fits the budget. Cost model (relative): each halo row loaded costs as much as one
// key column of a 16-query patch (both ~ (D + Dv) / 32 cycles per SM on the H100: 64 B/clk of
// loads vs ~1 K FLOP/clk of mma.sync), and a patch key column costs 1.5 of those (the exp2).
inline bool sw_make_plan(const Geometry& g, int rank, int row_bytes, int smem_budget, SwPlan* plan) {
  constexpr int kMaxLog2 = 7;  // regions of up to 2^7 tokens
  SwRunStats stats[kRank][kMaxLog2 + 1];  // per axis and run size, computed once (O(extent) each)
  for (int a = 0; a < kRank; ++a)
    for (int l = 0; l <= (a < rank ? kMaxLog2 : 0); ++l) stats[a][l] = sw_run_stats(g, a, l);
  int patches[16][kRank], regions[40][kRank];
  const int np = log2_box_shapes(rank, kSwPatchLog2, patches, 16);
  bool found = false;
  SwPlan best;
  for (int ip = 0; ip < np; ++ip) {
    double pmax = 1, psum = 1, pruns = 1;
    for (int a = 0; a < kRank; ++a) {
      const SwRunStats& s = stats[a][patches[ip][a]];
      pmax *= s.max_ext;
      psum *= s.sum_ext;
      pruns *= s.runs;
    }
    if (pmax > kSwMaxKeys) continue;
    const double padded_keys = psum + 7.5 * pruns;  // each patch box rounded up to 16 keys (mean)
    for (int total = 7; total >= 6; --total) {
      const int nr = log2_box_shapes(rank, total, regions, 40);
      for (int ir = 0; ir < nr; ++ir) {
        bool inside = true;
        for (int a = 0; a < kRank; ++a) inside = inside && regions[ir][a] >= patches[ip][a];
        if (!inside) continue;
        double hmax = 1, hsum = 1;
        for (int a = 0; a < kRank; ++a) {
          const SwRunStats& s = stats[a][regions[ir][a]];
          hmax *= s.max_ext;
          hsum *= s.sum_ext;
        }
        const double smem = (double(1 << total) + 2.0 * (hmax + 2)) * row_bytes;
        if (smem > smem_budget) continue;
        const double cost = hsum + 1.5 * padded_keys;
        if (!found || cost < best.cost * (1.0 - 1e-9)) {
          found = true;
          for (int a = 0; a < kRank; ++a) {
            best.region_log2[a] = regions[ir][a];
            best.patch_log2[a] = patches[ip][a];
          }
          best.halo_rows = int(hmax);
          best.max_keys = int(pmax);
          best.pairs = 16.0 * padded_keys;
          best.cost = cost;
        }
      }
    }
  }
  if (found) *plan = best;
  return found;
}

// ---- per-work-tile geometry without divisions or branches -----------------------------------------
//
// The kernel's per-CTA prologue (work decode, query tile, halo box) and per-patch geometry run once
// per few thousand instructions of MMA / softmax work, but as written for the tiled kernels
// (decode_work, make_query_tile, window) they are chains of 32-bit divisions and uniform branches,
// each branch target a fresh instruction fetch: on nat-small they took ~20% of the kernel's warp time
// (H100 source counters, benchmarks/NOTES.md). These are the same values from FastDivs built on
// the host and straight-line code; the CPU test compares them with decode_work / make_query_tile /
// window on random geometries.
struct SwDivs {
  window::FastDiv tiles[kRank];   // by q_tiles[a]
  window::FastDiv groups[kRank];  // by groups[a]
  window::FastDiv heads;          // by heads
  window::FastDiv dil[kRank];     // by dilation[a]
  window::FastDiv stride[kRank];  // by stride[a]
  int kvo_mod_d[kRank];           // kv_origin[a] mod dilation[a]
};

inline SwDivs sw_make_divs(const Geometry& g) {
  SwDivs d;
  for (int a = 0; a < kRank; ++a) {
    d.tiles[a] = window::make_fast_div(g.q_tiles[a]);
    d.groups[a] = window::make_fast_div(g.groups[a]);
    d.dil[a] = window::make_fast_div(g.dilation[a]);
    d.stride[a] = window::make_fast_div(g.stride[a]);
    d.kvo_mod_d[a] = g.kv_origin[a] % g.dilation[a];
  }
  d.heads = window::make_fast_div(int(g.heads));
  return d;
}

// decode_work for 0 <= idx < 2^31 (the host takes this kernel only when num_work < 2^31).
NATTEN_HD WorkTile sw_decode_work(const Geometry& g, const SwDivs& dv, int idx) {
  WorkTile w;
  int i = idx;
  for (int a = kRank - 1; a >= 0; --a) {
    const int q = window::fast_div(i, dv.tiles[a]);
    w.tile[a] = i - q * g.q_tiles[a];
    i = q;
  }
  for (int a = kRank - 1; a >= 0; --a) {
    const int q = window::fast_div(i, dv.groups[a]);
    w.group[a] = i - q * g.groups[a];
    i = q;
  }
  const int q = window::fast_div(i, dv.heads);
  w.head = i - q * int(g.heads);
  w.batch = q;
  return w;
}

NATTEN_HD int sw_group_extent(int n, int d, int g, const window::FastDiv& dd) {
  return n > g ? window::fast_div(n - g + d - 1, dd) : 0;
}

// QueryTile with FastAxis windows.
struct SwTile {
  window::FastAxis axis[kRank];
  int q0[kRank], q_last[kRank], n_q[kRank], n_kv[kRank], kv_group[kRank], q_shift[kRank], kv_shift[kRank];
};

// make_query_tile's values (the same fields, same meaning).
NATTEN_HD bool sw_make_tile(const Geometry& g, const SwDivs& dv, const WorkTile& w, SwTile& t) {
  bool nonempty = true;
  for (int a = 0; a < kRank; ++a) {
    const int d = g.dilation[a];
    const int first = g.q_origin[a] + w.group[a];
    const int q_shift = window::fast_div(first, dv.dil[a]);
    const int gg = first - q_shift * d;
    int kg = gg - dv.kvo_mod_d[a];
    kg += kg < 0 ? d : 0;
    t.axis[a] = window::make_fast_axis(sw_group_extent(g.extent[a], d, gg, dv.dil[a]), g.kernel[a], g.stride[a],
                                       g.causal[a] != 0, dv.stride[a]);
    const int nq = sw_group_extent(g.q_extent[a], d, w.group[a], dv.dil[a]);
    t.q0[a] = w.tile[a] << g.q_log2[a];
    t.q_last[a] = window::imin(t.q0[a] + (1 << g.q_log2[a]) - 1, nq - 1);
    t.n_q[a] = nq;
    t.n_kv[a] = sw_group_extent(g.kv_extent[a], d, kg, dv.dil[a]);
    t.kv_group[a] = kg;
    t.q_shift[a] = q_shift;
    t.kv_shift[a] = window::fast_div(g.kv_origin[a] + kg, dv.dil[a]);
    nonempty = nonempty && t.q0[a] < nq;
  }
  return nonempty;
}

// Key range (inclusive, global group coordinates) of the query run [q0, q_last] (slab coordinates).
NATTEN_HD void sw_key_range(const SwTile& t, int a, int q0, int q_last, int& ks, int& ke) {
  int s, e;
  window::window_fast(q0 + t.q_shift[a], t.axis[a], ks, e);
  window::window_fast(q_last + t.q_shift[a], t.axis[a], s, ke);
}

// n / e for 0 <= n < 2^20 and 1 <= e < 2^20 from inv_e = 1 / e within 2 ulp (the hardware
// reciprocal): (n + 0.5) / e lies at least 0.5 / e from an integer and the float product is within
// 2^-22 relative of it (< 0.25 / e absolute), so truncation gives the exact quotient.
NATTEN_HD int sw_div_small(int n, float inv_e) { return int((float(n) + 0.5f) * inv_e); }

// Bit p of comb(count, s) = {x * s : 0 <= x < count} (0 <= p < 128, count * s <= 128), as each lane
// computes it for its positions p = 32 k + lane before a ballot.
NATTEN_HD bool sw_comb_bit(int p, int count, int s, float inv_s) {
  return p < count * s && sw_div_small(p, inv_s) * s == p;
}

// ---- row masks over a patch's key box -------------------------------------------------------------
//
// Keys of a patch box of extents e[] (e0 * e1 * e2 <= 128) are numbered n = (x0 * e1 + x1) * e2 + x2.
// A query's window inside the box is [lo_a, hi_a] per axis (box-local, non-empty: the box is the
// union of the patch's windows); its mask has bit n set iff lo_a <= x_a <= hi_a on every axis.
// Built as a product of three bit sets: a run of bits [lo2, hi2] (the last axis), the bits
// x1 * e2 for x1 in [lo1, hi1] and the bits x0 * e1 * e2 for x0 in [lo0, hi0]. Their pairwise sums of
// positions are all distinct and below 128, so the integer product has no carries and equals the set
// of all sums, i.e. exactly the window's keys. The "combs" (bits x * stride for every x < e_a) are
// per patch; a row costs three runs, two ANDs and at most two 128-bit multiplies.
struct Bits128 {
  uint64_t w[2];
};

NATTEN_HD Bits128 b128_or(Bits128 a, Bits128 b) { return Bits128{{a.w[0] | b.w[0], a.w[1] | b.w[1]}}; }
NATTEN_HD Bits128 b128_and(Bits128 a, Bits128 b) { return Bits128{{a.w[0] & b.w[0], a.w[1] & b.w[1]}}; }

NATTEN_HD uint64_t mulhi_u64(uint64_t a, uint64_t b) {
#if defined(__CUDA_ARCH__)
  return __umul64hi(a, b);
#else
  return uint64_t((static_cast<unsigned __int128>(a) * b) >> 64);
#endif
}

// a * b mod 2^128.
NATTEN_HD Bits128 b128_mul(Bits128 a, Bits128 b) {
  Bits128 r;
  r.w[0] = a.w[0] * b.w[0];
  r.w[1] = mulhi_u64(a.w[0], b.w[0]) + a.w[0] * b.w[1] + a.w[1] * b.w[0];
  return r;
}

// x << s for 0 <= s < 128.
NATTEN_HD Bits128 b128_shl(Bits128 x, int s) {
  Bits128 r;
  if (s >= 64) {
    r.w[1] = x.w[0] << (s - 64);
    r.w[0] = 0;
  } else if (s == 0) {
    r = x;
  } else {
    r.w[1] = (x.w[1] << s) | (x.w[0] >> (64 - s));
    r.w[0] = x.w[0] << s;
  }
  return r;
}

// x >> s for 0 <= s < 64.
NATTEN_HD Bits128 b128_shr(Bits128 x, int s) {
  if (s == 0) return x;
  Bits128 r;
  r.w[0] = (x.w[0] >> s) | (x.w[1] << (64 - s));
  r.w[1] = x.w[1] >> s;
  return r;
}

// 32-bit words of x >> s for 0 <= s < 32 (the lane's view of a row mask).
NATTEN_HD void b128_words_shr(const Bits128& x, int s, uint32_t out[4]) {
  const uint32_t w[5] = {uint32_t(x.w[0]), uint32_t(x.w[0] >> 32), uint32_t(x.w[1]), uint32_t(x.w[1] >> 32), 0u};
  for (int k = 0; k < 4; ++k) {
#if defined(__CUDA_ARCH__)
    out[k] = __funnelshift_r(w[k], w[k + 1], s);
#else
    out[k] = s == 0 ? w[k] : ((w[k] >> s) | (w[k + 1] << (32 - s)));
#endif
  }
}

// Bits [lo, hi] (0 <= lo <= hi < 128).
NATTEN_HD Bits128 b128_run(int lo, int hi) {
  auto below = [](int n) -> Bits128 {  // bits [0, n), 0 <= n <= 128
    Bits128 r;
    r.w[0] = n >= 64 ? ~uint64_t(0) : ((uint64_t(1) << n) - 1);
    r.w[1] = n >= 128 ? ~uint64_t(0) : (n <= 64 ? uint64_t(0) : ((uint64_t(1) << (n - 64)) - 1));
    return r;
  };
  const Bits128 a = below(hi + 1), b = below(lo);
  return Bits128{{a.w[0] & ~b.w[0], a.w[1] & ~b.w[1]}};
}

// The union of x << (k * stride) for k = 0 .. count - 1 (count * stride <= 128).
NATTEN_HD Bits128 b128_replicate(Bits128 x, int count, int stride) {
  int have = 1;
  while (have < count) {
    const int add = window::imin(have, count - have);
    x = b128_or(x, b128_shl(x, add * stride));
    have += add;
  }
  return x;
}

// Per patch: bits x * e2 (x < e1) and x * e1 * e2 (x < e0).
struct SwCombs {
  Bits128 c1, c0;
};

NATTEN_HD SwCombs sw_combs(const int e[kRank]) {
  SwCombs c;
  const Bits128 one{{1, 0}};
  c.c1 = e[2] == 1 ? b128_run(0, e[1] - 1) : b128_replicate(one, e[1], e[2]);
  c.c0 = e[0] == 1 ? one : b128_replicate(one, e[0], e[1] * e[2]);
  return c;
}

NATTEN_HD Bits128 sw_row_mask(const int lo[kRank], const int hi[kRank], const int e[kRank], const SwCombs& c) {
  const int s1 = e[2], s0 = e[1] * e[2];
  Bits128 m = b128_and(c.c1, b128_run(lo[1] * s1, hi[1] * s1));
  if (e[2] != 1) m = b128_mul(b128_run(lo[2], hi[2]), m);
  if (e[0] != 1) m = b128_mul(m, b128_and(c.c0, b128_run(lo[0] * s0, hi[0] * s0)));
  return m;
}

}  // namespace sm80
}  // namespace natten
