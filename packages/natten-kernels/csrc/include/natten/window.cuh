// Neighborhood-attention window math shared by every kernel of natten-kernels.
//
// This is a literal transcription of /work/shared/SEMANTICS.md ("Per-axis parameters"), restricted
// to ONE axis and expressed in dilation-group-local coordinates:
//
//   global coordinate x, dilation d  ->  group g = x mod d, local coordinate x' = x div d,
//   group extent n_g = ceil((n - g) / d).
//
// A query i' attends key j' of the same group on one axis iff  start(i') <= j' <= end(i')  where
// [start, end] (inclusive) is returned by `window()` below. A key is attended iff it is attended on
// every axis (AND over axes), and on every axis query and key are in the same dilation group.
//
// Monotonicity (used for tiling): start(i') and end(i') are both non-decreasing in i' (causal and
// non-causal). Hence for a run of queries [q0, q1] on an axis:
//   * the union of their windows is covered by [start(q0), end(q1)]  (tile key range), and
//   * a key run [k0, k1] is attended by EVERY query of [q0, q1] iff
//       k0 >= start(q1) && k1 <= end(q0)                            (fully-inside test).
//
// Everything here is plain integer C++ usable from host code (g++) and device code (nvcc).
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define NATTEN_HD __host__ __device__ __forceinline__
#else
#define NATTEN_HD inline
#endif

namespace natten {
namespace window {

NATTEN_HD int imin(int a, int b) { return a < b ? a : b; }
NATTEN_HD int imax(int a, int b) { return a > b ? a : b; }

// Number of tokens of dilation group g (0 <= g < d) on an axis of n tokens: ceil((n - g) / d).
// Returns 0 when the group is empty (g >= n).
NATTEN_HD int group_extent(int n, int d, int g) {
  if (d == 1) return n > g ? n - g : 0;  // no division for the common undilated axis
  return n > g ? (n - g + d - 1) / d : 0;
}

// Keys to the left / right of the window centre (SEMANTICS 2).
NATTEN_HD int left_extent(int K) { return K / 2; }
NATTEN_HD int right_extent(int K) { return K / 2 + (K % 2) - 1; }

// One axis of the problem in dilation-group-local coordinates.
struct Axis {
  int n;       // group extent n_g (>= K for valid problems; K == 1, n == 1 on padded axes)
  int K;       // kernel size
  int s;       // stride
  int causal;  // 0 / 1
};

NATTEN_HD Axis make_axis(int n_g, int K, int s, bool causal) {
  Axis a;
  a.n = n_g;
  a.K = K;
  a.s = s;
  a.causal = causal ? 1 : 0;
  return a;
}

// Inclusive window [start, end] of (group-local) query i, 0 <= i < a.n.
NATTEN_HD void window(int i, const Axis& a, int& start, int& end) {
  const int group_first = a.s == 1 ? i : a.s * (i / a.s);  // no division for stride 1
  if (a.causal) {
    // SEMANTICS 4: leader = last query of the stride group (clamped); shared start; stop at self.
    const int leader = imin(group_first + a.s - 1, a.n - 1);
    start = imax(leader - a.K + 1, 0);
    end = i;
  } else {
    // SEMANTICS 3: leader = centre of the stride group (clamped); window centre clamped so the
    // window always holds exactly K keys.
    const int L = left_extent(a.K);
    const int R = right_extent(a.K);
    const int leader = imin(group_first + a.s / 2, a.n - 1);
    const int c = imax(L, imin(leader, a.n - 1 - R));
    start = c - L;
    end = c + R;
  }
}

NATTEN_HD int window_start(int i, const Axis& a) {
  int s, e;
  window(i, a, s, e);
  return s;
}

NATTEN_HD int window_end(int i, const Axis& a) {
  int s, e;
  window(i, a, s, e);
  return e;
}

// Window of a query that may lie past the end of the axis (padding rows of a partial tile): the
// coordinate is clamped to the last token, so padding rows behave like the last real query.
NATTEN_HD void window_clamped(int i, const Axis& a, int& start, int& end) {
  window(imin(i, a.n - 1), a, start, end);
}

// Does group-local query i attend group-local key j on this axis?
NATTEN_HD bool attends(int i, int j, const Axis& a) {
  int s, e;
  window(i, a, s, e);
  return j >= s && j <= e;
}

// ---- the same rule without divisions or branches (kernels with short per-tile work) --------------
//
// n / d for 0 <= n < 2^31 and 1 <= d < 2^31 as one 32 x 32 -> 64-bit multiply and a shift
// (Granlund & Montgomery, "Division by invariant integers using multiplication", theorem 4.2 with
// N = 31: l = ceil(log2 d), m = ceil(2^(31 + l) / d) satisfies 2^(31+l) <= m d <= 2^(31+l) + 2^l,
// and m < 2^32). Built once on the host, used per work tile on the device.
struct FastDiv {
  uint32_t mul;
  uint32_t shift;
};

inline FastDiv make_fast_div(int d) {
  int l = 0;
  while ((uint32_t(1) << l) < uint32_t(d)) ++l;
  const uint64_t m = ((uint64_t(1) << (31 + l)) + uint64_t(d) - 1) / uint64_t(d);
  return FastDiv{uint32_t(m), uint32_t(31 + l)};
}

NATTEN_HD int fast_div(int n, const FastDiv& f) { return int((uint64_t(uint32_t(n)) * f.mul) >> f.shift); }

// An Axis with its stride's FastDiv and the kernel's left / right extents.
struct FastAxis {
  int n, K, s, causal, L, R;
  FastDiv sdiv;
};

NATTEN_HD FastAxis make_fast_axis(int n_g, int K, int s, bool causal, const FastDiv& sdiv) {
  return FastAxis{n_g, K, s, causal ? 1 : 0, left_extent(K), right_extent(K), sdiv};
}

// window() for a FastAxis: both branches computed and selected (a few integer operations each), so
// the code is straight-line; equal to window() for every 0 <= i < a.n (tests/small_window_test.cpp).
NATTEN_HD void window_fast(int i, const FastAxis& a, int& start, int& end) {
  const int group_first = a.s * fast_div(i, a.sdiv);
  const int causal_start = imax(imin(group_first + a.s - 1, a.n - 1) - a.K + 1, 0);
  const int c = imax(a.L, imin(imin(group_first + (a.s >> 1), a.n - 1), a.n - 1 - a.R));
  start = a.causal ? causal_start : c - a.L;
  end = a.causal ? i : c + a.R;
}

// Key range (inclusive) covering the windows of every query of the run [q0, q_last]
// (q_last must be a real query: q_last <= a.n - 1).
NATTEN_HD void tile_key_range(int q0, int q_last, const Axis& a, int& kstart, int& kend) {
  kstart = window_start(q0, a);
  kend = window_end(q_last, a);
}

// Key run [full_lo, full_hi] attended by every query of [q0, q_last]: a key block [k0, k1] is
// fully inside all windows of the run iff full_lo <= k0 && k1 <= full_hi. (Empty if lo > hi.)
NATTEN_HD void tile_full_range(int q0, int q_last, const Axis& a, int& full_lo, int& full_hi) {
  full_lo = window_start(q_last, a);
  full_hi = window_end(q0, a);
}

NATTEN_HD bool block_fully_inside(int q0, int q_last, int k0, int k1, const Axis& a) {
  int lo, hi;
  tile_full_range(q0, q_last, a, lo, hi);
  return k0 >= lo && k1 <= hi;
}

// ---- slabs of a larger grid ------------------------------------------------------------------
//
// Window of query token x (global coordinate) on an axis of n tokens: the attended keys are
// first, first + d, ..., last (global coordinates).
NATTEN_HD void token_window(int x, int n, int K, int s, int d, bool causal, int& first, int& last) {
  const int g = x % d;
  int ws, we;
  window(x / d, make_axis(group_extent(n, d, g), K, s, causal), ws, we);
  first = g + d * ws;
  last = g + d * we;
}

// Smallest key range [lo, hi) holding every key that the query tokens [q_begin, q_end) attend
// (0 <= q_begin < q_end <= n), in O(1).
//
// Within one dilation group the window start and end are non-decreasing, so the smallest start
// comes from the first query of each group in the range (the tokens [q_begin, q_begin + d)) and
// the largest end from the last one (the tokens [q_end - d, q_end)). Among those tokens the
// group-local coordinate x div d and the group size (ceil or floor of n / d, switching at group
// n mod d) change at most once each, and inside a run where both are constant the global start /
// end grow with x. So the extremes are at the runs' first (resp. last) tokens.
NATTEN_HD void slab_key_range(int n, int K, int s, int d, bool causal, int q_begin, int q_end, int& lo,
                              int& hi) {
  const int r = n % d;  // groups g < r hold one token more than the others (if r != 0)
  const int first_end = imin(q_end, q_begin + d);
  lo = n;
  // Runs of [q_begin, first_end) start at q_begin, at the next multiple of d and at the next
  // token of group r.
  const int starts[3] = {q_begin, q_begin + (d - q_begin % d) % d, q_begin + ((r - q_begin % d) % d + d) % d};
  for (int c = 0; c < 3; ++c) {
    if (starts[c] >= first_end || (c == 2 && r == 0)) continue;
    int f, l;
    token_window(starts[c], n, K, s, d, causal, f, l);
    lo = imin(lo, f);
  }
  const int last_begin = imax(q_begin, q_end - d);
  hi = 0;
  // Runs of [last_begin, q_end) end at q_end - 1, at the previous token of group d - 1 and at the
  // previous token of group r - 1.
  const int x = q_end - 1;
  const int ends[3] = {x, x - ((x % d) + 1) % d, x - ((x % d) - (r - 1) + d) % d};
  for (int c = 0; c < 3; ++c) {
    if (ends[c] < last_begin || (c == 2 && r == 0)) continue;
    int f, l;
    token_window(ends[c], n, K, s, d, causal, f, l);
    hi = imax(hi, l + 1);
  }
}

// ---- Inverse ranges (backward, key-parallel) ------------------------------------------------
//
// Queries of an axis whose window intersects the key run [k0, k1] (inclusive, group-local,
// 0 <= k0 <= k1): by monotonicity of start() and end() this is the contiguous run
//   [ first i with end(i) >= k0,  last i with start(i) <= k1 ]
// (empty when lo > hi). Found by binary search over the n group-local queries, which is exact for
// every rule window() implements (causal or not, any stride, even or odd kernel).

// One binary search serves both ends of the run: hi = false -> the smallest i in [0, n) with
// end(i) >= k, or n if none; hi = true -> the largest i in [0, n) with start(i) <= min(k, n - 1), or
// -1 if none. Each is the smallest i in [0, n] with g(i) >= t (g = window end, t = k; or g = window
// start, t = min(k, n - 1) + 1, minus 1), so the trip count depends on a.n only and lanes asking
// different questions about the same axis do not diverge (the SM90 dK / dV consumers run one search
// per lane and shuffle the results).
NATTEN_HD int query_run_bound(int k, const Axis& a, bool hi) {
  const int t = hi ? imin(k, a.n - 1) + 1 : k;
  int lo = 0, up = a.n;  // answer in [lo, up]
  while (lo < up) {
    const int mid = lo + (up - lo) / 2;
    int s, e;
    window(mid, a, s, e);
    if ((hi ? s : e) >= t) up = mid; else lo = mid + 1;
  }
  return hi ? lo - 1 : lo;
}

// Query run [q_lo, q_hi] attending at least one key of [k0, k1] on this axis (q_lo > q_hi: none).
// k1 may exceed n - 1 (padding keys of a partial key tile attend nothing).
NATTEN_HD void key_run_query_range(int k0, int k1, const Axis& a, int& q_lo, int& q_hi) {
  q_lo = query_run_bound(k0, a, false);
  q_hi = query_run_bound(k1, a, true);
}

// Global-coordinate form of the rule (for tests / reference code): query x attends key y on an
// axis of n tokens with kernel K, stride s, dilation d.
NATTEN_HD bool attends_global(int x, int y, int n, int K, int s, int d, bool causal) {
  const int g = x % d;
  if (y % d != g) return false;
  const Axis a = make_axis(group_extent(n, d, g), K, s, causal);
  return attends(x / d, y / d, a);
}

}  // namespace window
}  // namespace natten
