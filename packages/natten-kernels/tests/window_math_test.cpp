// CPU check of the window / tile math used by the fused NA kernels
// (csrc/include/natten/window.cuh and csrc/kernels/sm80/tile_scheduler.cuh).
//
// Build: g++ -std=c++17 -O2 -x c++ -Icsrc/include -Icsrc/kernels/sm80 tests/window_math_test.cpp
// (window.cuh makes __host__ __device__ vanish when not compiled by nvcc.)
//
// 1. Per axis, exhaustively for n <= 20 and every valid (K, s, d, causal), plus the padded-axis case
//    K = 1: the window rule equals a brute-force transcription of SEMANTICS.md; non-causal windows
//    hold exactly K keys; stride-1 non-causal windows equal the classic NATTEN formula; window
//    start/end are monotone; for every run of queries [q0, q1] of a dilation group the tile key range
//    covers every attended key and is tight, and the fully-inside test is exact for every key run;
//    for every query slab [q_begin, q_end) the O(1) slab_key_range equals the brute-force range of
//    attended keys.
// 2. A replay of the kernel's decisions on random multi-dimensional problems (rank 1-3, odd shapes,
//    even/odd kernels, stride, dilation, per-axis causal, all power-of-two tile shapes; two thirds
//    of them on a query slab and a key slab of a larger grid, the key slab covering the query slab's
//    keys with a random margin): every query token of the slab is owned by exactly one work tile,
//    every attended (query, key) pair is computed exactly once, no other pair is, no masked-off key
//    or key outside the key slab is ever attended, "full" key tiles need no mask, the per-row 64-bit
//    column mask word equals the per-element rule, and the odometer key-tile walk equals the
//    indexed one.
// 3. A numeric replay (every third problem) of the kernel's per-CTA online softmax in that tile
//    order (masked tiles, rows whose first tiles hold no key, zero-filled out-of-grid keys) against
//    a float64 softmax: output and logsumexp.
// 4. The row-offset additivity the SM80 tile loads rely on (utils.cuh, load_tile_box_inside): for
//    every box shape of 64 / 128 rows, the offset of row r0 + p * R is row r0's plus the sum of the
//    offsets of rows 2^b * R over the set bits b of p.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "natten/window.cuh"
#include "tile_scheduler.cuh"

using natten::window::Axis;
namespace nw = natten::window;
namespace ns = natten::sm80;

#include "cpu_check.hpp"

// ---- brute force, transcribed from SEMANTICS.md (global coordinates) -------------------------
static bool brute_attends(int i, int j, int n, int K, int s, int d, bool causal) {
  const int g = i % d;
  if (j % d != g) return false;
  const int ip = i / d, jp = j / d;
  const int ng = int(std::ceil(double(n - g) / double(d)));
  const int L = K / 2;
  const int R = K / 2 + (K % 2) - 1;
  if (!causal) {
    const int l = std::min(s * (ip / s) + s / 2, ng - 1);
    const int c = std::min(std::max(l, L), ng - 1 - R);  // clamp(l, L, ng - 1 - R)
    return c - L <= jp && jp <= c + R;
  }
  const int l = std::min(s * (ip / s) + s - 1, ng - 1);
  return jp <= ip && l - jp < K;
}

// Classic NATTEN (stride 1, non-causal) window start in group-local coordinates.
static int classic_start(int i, int n, int K) {
  const int L = K / 2, R = K / 2 + (K % 2) - 1;
  int start = std::max(i - L, 0);
  if (i + R >= n) start += n - i - R - 1;
  return start;
}

static void check_axis(int n, int K, int s, int d, bool causal) {
  // rule vs brute force, all pairs
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j)
      CHECK(nw::attends_global(i, j, n, K, s, d, causal) == brute_attends(i, j, n, K, s, d, causal),
            "n=%d K=%d s=%d d=%d causal=%d i=%d j=%d", n, K, s, d, int(causal), i, j);

  for (int g = 0; g < d; ++g) {
    const int ng = nw::group_extent(n, d, g);
    CHECK(ng == int(std::ceil(double(n - g) / d)), "group extent n=%d d=%d g=%d", n, d, g);
    if (ng <= 0) continue;
    const Axis a = nw::make_axis(ng, K, s, causal);
    int prev_s = -1, prev_e = -1;
    for (int i = 0; i < ng; ++i) {
      int ws, we;
      nw::window(i, a, ws, we);
      CHECK(ws >= 0 && we <= ng - 1 && ws <= we, "window in range n=%d K=%d s=%d d=%d c=%d i=%d [%d,%d]",
            n, K, s, d, int(causal), i, ws, we);
      if (!causal) CHECK(we - ws + 1 == K, "non-causal window size n=%d K=%d i=%d", n, K, i);
      if (!causal && s == 1) CHECK(ws == classic_start(i, ng, K), "classic NA n=%d K=%d i=%d", ng, K, i);
      if (causal) CHECK(we == i, "causal end");
      CHECK(ws >= prev_s && we >= prev_e, "monotone n=%d K=%d s=%d c=%d i=%d", n, K, s, int(causal), i);
      prev_s = ws;
      prev_e = we;
      // clamped windows of padding rows equal the last real query's window
      int cs, ce, ls, le;
      nw::window_clamped(ng + i, a, cs, ce);
      nw::window(ng - 1, a, ls, le);
      CHECK(cs == ls && ce == le, "clamped window");
    }
    // every run of queries [q0, q1]
    for (int q0 = 0; q0 < ng; ++q0) {
      for (int q1 = q0; q1 < ng; ++q1) {
        int ks, ke;
        nw::tile_key_range(q0, q1, a, ks, ke);
        bool first_hit = false, last_hit = false;
        for (int q = q0; q <= q1; ++q) {
          for (int j = 0; j < ng; ++j) {
            const bool att = brute_attends(g + d * q, g + d * j, n, K, s, d, causal);
            if (att) CHECK(j >= ks && j <= ke, "range covers n=%d K=%d s=%d d=%d c=%d q=[%d,%d] j=%d",
                           n, K, s, d, int(causal), q0, q1, j);
            if (att && j == ks) first_hit = true;
            if (att && j == ke) last_hit = true;
          }
        }
        CHECK(first_hit && last_hit, "range tight n=%d K=%d s=%d c=%d q=[%d,%d]", n, K, s, int(causal), q0, q1);
        // fully-inside test exact for every key run
        for (int k0 = 0; k0 < ng; ++k0) {
          for (int k1 = k0; k1 < ng + 3; ++k1) {  // runs may overhang the group end
            bool all = true;
            for (int q = q0; q <= q1 && all; ++q)
              for (int j = k0; j <= k1 && all; ++j)
                all = j < ng && brute_attends(g + d * q, g + d * j, n, K, s, d, causal);
            CHECK(nw::block_fully_inside(q0, q1, k0, k1, a) == all,
                  "full test n=%d K=%d s=%d c=%d q=[%d,%d] k=[%d,%d]", n, K, s, int(causal), q0, q1, k0, k1);
          }
        }
      }
    }
  }
  // key range of every query slab (global token coordinates), against brute force
  for (int qb = 0; qb < n; ++qb) {
    for (int qe = qb + 1; qe <= n; ++qe) {
      int want_lo = n, want_hi = 0;
      for (int i = qb; i < qe; ++i)
        for (int j = 0; j < n; ++j)
          if (brute_attends(i, j, n, K, s, d, causal)) {
            want_lo = std::min(want_lo, j);
            want_hi = std::max(want_hi, j + 1);
          }
      int lo, hi;
      nw::slab_key_range(n, K, s, d, causal, qb, qe, lo, hi);
      CHECK(lo == want_lo && hi == want_hi, "slab key range n=%d K=%d s=%d d=%d c=%d q=[%d,%d): [%d,%d) want [%d,%d)",
            n, K, s, d, int(causal), qb, qe, lo, hi, want_lo, want_hi);
    }
  }
}

// ---- multi-dimensional replay of the kernel ---------------------------------------------------
struct Problem {
  int rank;
  int n[3], K[3], s[3], d[3];  // n: the global grid
  bool causal[3];
  int q0[3], nq[3];            // query slab: origin and extent (0, n without a region)
  int k0[3], nk[3];            // key slab
  int ql[3], kl[3];
  int batch, heads;
};

static void set_geometry(const Problem& p, ns::Geometry& geo) {
  geo = ns::Geometry{};
  for (int a = 0; a < 3; ++a) {
    geo.extent[a] = p.n[a];
    geo.q_extent[a] = p.nq[a];
    geo.kv_extent[a] = p.nk[a];
    geo.q_origin[a] = p.q0[a];
    geo.kv_origin[a] = p.k0[a];
    geo.kernel[a] = p.K[a];
    geo.stride[a] = p.s[a];
    geo.dilation[a] = p.d[a];
    geo.causal[a] = p.causal[a] ? 1 : 0;
    geo.q_log2[a] = p.ql[a];
    geo.kv_log2[a] = p.kl[a];
  }
  geo.batch = p.batch;
  geo.heads = p.heads;
  ns::geometry_finalize(geo);
}

// Slab token (index into the slab, last axis fastest) <-> per-axis slab coordinates.
static int slab_lin(const int ext[3], const int c[3]) { return (c[0] * ext[1] + c[1]) * ext[2] + c[2]; }
static void slab_coord(const int ext[3], int i, int c[3]) {
  c[0] = i / (ext[1] * ext[2]);
  c[1] = (i / ext[2]) % ext[1];
  c[2] = i % ext[2];
}

static bool brute_multi(const Problem& p, const int x[3], const int y[3]) {
  for (int a = 0; a < 3; ++a)
    if (!brute_attends(x[a], y[a], p.n[a], p.K[a], p.s[a], p.d[a], p.causal[a])) return false;
  return true;
}

static void replay(const Problem& p) {
  ns::Geometry geo;
  set_geometry(p, geo);

  const int NQ = p.nq[0] * p.nq[1] * p.nq[2];  // query slab tokens
  const int NK = p.nk[0] * p.nk[1] * p.nk[2];  // key slab tokens
  const int qsize = 1 << (p.ql[0] + p.ql[1] + p.ql[2]);
  const int ksize = 1 << (p.kl[0] + p.kl[1] + p.kl[2]);
  // visits[(b*heads + h)][query slab token][key slab token]
  std::vector<int> owner(size_t(p.batch) * p.heads * NQ, 0);
  std::vector<unsigned char> visits(size_t(p.batch) * p.heads * NQ * NK, 0);

  for (int64_t w = 0; w < geo.num_work; ++w) {
    const ns::WorkTile wt = ns::decode_work(geo, w);
    CHECK(wt.batch >= 0 && wt.batch < p.batch && wt.head >= 0 && wt.head < p.heads, "decode range");
    ns::QueryTile qt;
    const bool nonempty = ns::make_query_tile(geo, wt, qt);
    bool any_valid = false;
    for (int r = 0; r < qsize; ++r) any_valid = any_valid || ns::query_row_valid(geo, qt, r);
    CHECK(nonempty == any_valid, "nonempty flag");
    if (!nonempty) continue;
    const ns::KeyTiles kt = ns::make_key_tiles(geo, qt);
    CHECK(kt.total >= 1, "at least one key tile");
    for (int a = 0; a < 3; ++a)  // key tiles are loaded from the key box's first key on: inside the slab
      CHECK(kt.start[a] >= 0 && kt.start[a] < qt.n_kv[a], "key box starts outside the key slab: %d", kt.start[a]);
    const size_t bh = size_t(wt.batch) * p.heads + size_t(wt.head);

    // per-row windows, as the kernel stores them in shared memory
    std::vector<int> rs(qsize * 3), rl(qsize * 3);
    for (int r = 0; r < qsize; ++r) ns::query_row_window(geo, qt, r, &rs[r * 3], &rl[r * 3]);

    uint64_t rep[3];
    ns::key_tile_mask_patterns(geo.kv_log2, rep);
    int kb[3], kb_idx[3];
    ns::key_tile_origin(geo, kt, 0, kb);
    for (int t = 0; t < kt.total; ++t) {
      ns::key_tile_origin(geo, kt, t, kb_idx);
      CHECK(kb[0] == kb_idx[0] && kb[1] == kb_idx[1] && kb[2] == kb_idx[2], "odometer t=%d", t);
      const bool full = ns::key_tile_full(geo, kt, kb);
      for (int r = 0; r < qsize; ++r) {
        int rel[3];
        for (int a = 0; a < 3; ++a) rel[a] = rs[r * 3 + a] - kb[a];
        const uint64_t word = ns::key_tile_row_mask(rel, &rl[r * 3], geo.kv_log2, rep);
        int rc[3], x[3], xg[3];  // query: slab and global token coordinates
        ns::tile_coord(r, geo.q_log2, rc);
        const bool rvalid = ns::query_row_valid(geo, qt, r);
        bool row_has_key = false;
        for (int a = 0; a < 3; ++a) {
          x[a] = wt.group[a] + p.d[a] * (qt.q0[a] + rc[a]);
          xg[a] = x[a] + p.q0[a];
        }
        for (int c = 0; c < ksize; ++c) {
          int kc[3], key[3], y[3], yg[3];  // key: slab and global token coordinates
          ns::tile_coord(c, geo.kv_log2, kc);
          for (int a = 0; a < 3; ++a) {
            key[a] = kb[a] + kc[a];
            y[a] = qt.kv_group[a] + p.d[a] * key[a];
            yg[a] = y[a] + p.k0[a];
          }
          const bool cvalid = ns::key_col_valid(geo, qt, kb, c);
          const bool masked_ok = ns::row_attends(&rs[r * 3], &rl[r * 3], key);
          CHECK(((word >> c) & 1u) == (masked_ok ? 1u : 0u), "mask word bit %d", c);
          const bool computed = full || masked_ok;
          if (full) {
            CHECK(cvalid, "full tile holds an out-of-grid key");
            CHECK(masked_ok, "full tile element rejected by the mask");
          }
          if (computed) CHECK(cvalid, "attends an out-of-grid key (row valid=%d)", int(rvalid));
          if (computed && cvalid) row_has_key = true;
          if (!rvalid || !cvalid || !computed) continue;
          for (int a = 0; a < 3; ++a)
            CHECK(key[a] >= 0 && y[a] >= 0 && y[a] < p.nk[a], "key outside the key slab axis %d: %d", a, y[a]);
          CHECK(brute_multi(p, xg, yg), "attends a non-neighbour x=(%d,%d,%d) y=(%d,%d,%d)", xg[0], xg[1], xg[2],
                yg[0], yg[1], yg[2]);
          unsigned char& v = visits[(bh * NQ + slab_lin(p.nq, x)) * NK + slab_lin(p.nk, y)];
          if (v < 255) ++v;
        }
        (void)row_has_key;
      }
      ns::key_tile_advance(geo, kt, kb);
    }
    for (int r = 0; r < qsize; ++r) {
      if (!ns::query_row_valid(geo, qt, r)) continue;
      int rc[3], x[3];
      ns::tile_coord(r, geo.q_log2, rc);
      for (int a = 0; a < 3; ++a) x[a] = wt.group[a] + p.d[a] * (qt.q0[a] + rc[a]);
      ++owner[bh * NQ + slab_lin(p.nq, x)];
    }
  }

  // Every query of the slab owned once; every (query, key of the key slab) pair visited iff
  // attended, and the key slab holds all attended keys (the problem was built that way).
  for (size_t bh = 0; bh < size_t(p.batch) * p.heads; ++bh) {
    for (int xi = 0; xi < NQ; ++xi) {
      int x[3], xg[3];
      slab_coord(p.nq, xi, x);
      for (int a = 0; a < 3; ++a) xg[a] = x[a] + p.q0[a];
      CHECK(owner[bh * NQ + xi] == 1, "query owned %d times", owner[bh * NQ + xi]);
      int attended = 0;
      for (int yi = 0; yi < NK; ++yi) {
        int y[3], yg[3];
        slab_coord(p.nk, yi, y);
        for (int a = 0; a < 3; ++a) yg[a] = y[a] + p.k0[a];
        const int want = brute_multi(p, xg, yg) ? 1 : 0;
        attended += want;
        const int got = visits[(bh * NQ + xi) * NK + yi];
        CHECK(got == want, "pair visited %d times, want %d: x=(%d,%d,%d) y=(%d,%d,%d)", got, want, xg[0], xg[1],
              xg[2], yg[0], yg[1], yg[2]);
      }
      CHECK(attended > 0, "query without keys");
    }
  }
}

// ---- numeric replay of the kernel's per-CTA algorithm ---------------------------------------
// Same tile walk, full / masked decisions and mask words as the kernel, with the kernel's
// log2-domain online softmax (running max with the "no key yet" guard, rescale, final 1/sum and
// lse = (m + log2(sum)) * ln2) in float, against a direct float64 softmax over the attended keys.
static void numeric_replay(Problem p, std::mt19937& rng) {
  p.batch = p.heads = 1;
  ns::Geometry geo;
  set_geometry(p, geo);
  const int NQ = p.nq[0] * p.nq[1] * p.nq[2], NK = p.nk[0] * p.nk[1] * p.nk[2], D = 4;
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> q(NQ * D), k(NK * D), v(NK * D);
  for (auto& x : q) x = 2.f * nd(rng);
  for (auto& x : k) x = 2.f * nd(rng);
  for (auto& x : v) x = nd(rng);
  const float scale = 0.7f;
  const float scale_log2 = float(scale * 1.4426950408889634);
  const int qsize = 1 << (p.ql[0] + p.ql[1] + p.ql[2]);
  const int ksize = 1 << (p.kl[0] + p.kl[1] + p.kl[2]);
  uint64_t rep[3];
  ns::key_tile_mask_patterns(geo.kv_log2, rep);

  for (int64_t w = 0; w < geo.num_work; ++w) {
    const ns::WorkTile wt = ns::decode_work(geo, w);
    ns::QueryTile qt;
    if (!ns::make_query_tile(geo, wt, qt)) continue;
    const ns::KeyTiles kt = ns::make_key_tiles(geo, qt);
    for (int r = 0; r < qsize; ++r) {
      if (!ns::query_row_valid(geo, qt, r)) continue;
      int rc[3], x[3], xg[3], ws[3], wl[3];
      ns::tile_coord(r, geo.q_log2, rc);
      for (int a = 0; a < 3; ++a) {
        x[a] = wt.group[a] + p.d[a] * (qt.q0[a] + rc[a]);
        xg[a] = x[a] + p.q0[a];
      }
      ns::query_row_window(geo, qt, r, ws, wl);
      const int xi = slab_lin(p.nq, x);
      // kernel algorithm
      float m = -INFINITY, l = 0.f, o[D] = {0, 0, 0, 0};
      int kb[3] = {kt.start[0], kt.start[1], kt.start[2]};
      for (int t = 0; t < kt.total; ++t) {
        const bool full = ns::key_tile_full(geo, kt, kb);
        int rel[3];
        for (int a = 0; a < 3; ++a) rel[a] = ws[a] - kb[a];
        const uint64_t word = ns::key_tile_row_mask(rel, wl, geo.kv_log2, rep);
        std::vector<float> sc(ksize);
        std::vector<int> key_index(ksize, -1);
        float mx = m;
        for (int c = 0; c < ksize; ++c) {
          int kc[3], y[3];
          ns::tile_coord(c, geo.kv_log2, kc);
          bool in = true;
          for (int a = 0; a < 3; ++a) {
            y[a] = qt.kv_group[a] + p.d[a] * (kb[a] + kc[a]);
            in = in && kb[a] + kc[a] < qt.n_kv[a];
          }
          float dot = 0.f;
          if (in) {
            key_index[c] = slab_lin(p.nk, y);
            for (int e = 0; e < D; ++e) dot += q[xi * D + e] * k[key_index[c] * D + e];
          }
          float sv = dot * scale_log2;  // zero-filled rows score 0
          if (!full && !((word >> c) & 1u)) sv = -INFINITY;
          sc[c] = sv;
          mx = std::max(mx, sv);
        }
        const float m_use = mx == -INFINITY ? 0.f : mx;
        const float corr = std::exp2(m - m_use);
        m = mx;
        float sum = 0.f;
        for (int e = 0; e < D; ++e) o[e] *= corr;
        for (int c = 0; c < ksize; ++c) {
          const float pr = std::exp2(sc[c] - m_use);
          sum += pr;
          if (key_index[c] >= 0)
            for (int e = 0; e < D; ++e) o[e] += pr * v[key_index[c] * D + e];
          else
            CHECK(pr == 0.f, "out-of-grid key with nonzero probability");
        }
        l = l * corr + sum;
        ns::key_tile_advance(geo, kt, kb);
      }
      const float inv = l > 0.f ? 1.f / l : 0.f;
      const float lse = l > 0.f ? (m + std::log2(l)) * 0.69314718055994530942f : -INFINITY;
      // float64 reference
      double rm = -1e300;
      std::vector<double> ref_s(NK, 0.0);
      std::vector<char> att(NK, 0);
      for (int yi = 0; yi < NK; ++yi) {
        int y[3], yg[3];
        slab_coord(p.nk, yi, y);
        for (int a = 0; a < 3; ++a) yg[a] = y[a] + p.k0[a];
        if (!brute_multi(p, xg, yg)) continue;
        att[yi] = 1;
        double dot = 0.0;
        for (int e = 0; e < D; ++e) dot += double(q[xi * D + e]) * double(k[yi * D + e]);
        ref_s[yi] = dot * scale;
        rm = std::max(rm, ref_s[yi]);
      }
      double rl = 0.0, ro[D] = {0, 0, 0, 0};
      for (int yi = 0; yi < NK; ++yi) {
        if (!att[yi]) continue;
        const double e = std::exp(ref_s[yi] - rm);
        rl += e;
        for (int j = 0; j < D; ++j) ro[j] += e * v[yi * D + j];
      }
      const double rlse = rm + std::log(rl);
      CHECK(std::fabs(lse - rlse) < 1e-4 * std::max(1.0, std::fabs(rlse)), "lse %f vs %f", lse, rlse);
      for (int j = 0; j < D; ++j)
        CHECK(std::fabs(o[j] * inv - ro[j] / rl) < 1e-4, "out %f vs %f", o[j] * inv, ro[j] / rl);
    }
  }
}

int main(int argc, char** argv) {
  const int max_n = argc > 1 ? std::atoi(argv[1]) : 20;
  // 1. exhaustive per-axis checks
  long configs = 0;
  for (int n = 1; n <= max_n; ++n) {
    check_axis(n, 1, 1, 1, false);  // padded axis (kernel 1)
    check_axis(n, 1, 1, 1, true);
    ++configs;
    for (int K = 2; K <= n; ++K)
      for (int d = 1; K * d <= n; ++d)
        for (int s = 1; s <= K; ++s)
          for (int c = 0; c < 2; ++c) {
            check_axis(n, K, s, d, c != 0);
            ++configs;
          }
  }
  std::printf("per-axis: %ld configurations, %ld checks, %ld failures\n", configs, g_checks, g_failures);

  // 2. random multi-dimensional replays
  std::mt19937 rng(12345);
  auto uni = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  const int problems = argc > 2 ? std::atoi(argv[2]) : 1500;
  const long before = g_checks;
  for (int it = 0; it < problems; ++it) {
    Problem p{};
    p.rank = uni(1, 3);
    const int max_ext = p.rank == 1 ? 70 : (p.rank == 2 ? 17 : 9);
    const bool region = uni(0, 2) != 0;
    for (int a = 0; a < 3; ++a) {
      if (a >= p.rank) {
        p.n[a] = p.K[a] = p.s[a] = p.d[a] = 1;
        p.causal[a] = false;
        p.q0[a] = p.k0[a] = 0;
        p.nq[a] = p.nk[a] = 1;
        continue;
      }
      p.n[a] = uni(2, max_ext);
      p.K[a] = uni(2, p.n[a]);
      p.d[a] = uni(1, p.n[a] / p.K[a]);
      p.s[a] = uni(1, p.K[a]);
      if (uni(0, 3) == 0) p.s[a] = 1;
      p.causal[a] = uni(0, 2) == 0;
      p.q0[a] = 0;
      p.nq[a] = p.n[a];
      if (region) {  // a random query slab, the key slab its key range plus a random margin
        p.q0[a] = uni(0, p.n[a] - 1);
        p.nq[a] = uni(1, p.n[a] - p.q0[a]);
      }
      int lo, hi;
      nw::slab_key_range(p.n[a], p.K[a], p.s[a], p.d[a], p.causal[a], p.q0[a], p.q0[a] + p.nq[a], lo, hi);
      p.k0[a] = region ? std::max(0, lo - uni(0, 2) * uni(0, 2)) : 0;
      p.nk[a] = region ? std::min(p.n[a], hi + uni(0, 2) * uni(0, 2)) - p.k0[a] : p.n[a];
    }
    // tile shapes: powers of two over the real axes, total 2^q / 2^k with q, k <= 6 (kernel: 6)
    for (int pass = 0; pass < 2; ++pass) {
      int* l = pass == 0 ? p.ql : p.kl;
      l[0] = l[1] = l[2] = 0;
      int total = uni(0, 3) == 0 ? uni(0, 6) : 6;
      while (total-- > 0) l[uni(0, p.rank - 1)] += 1;
    }
    p.batch = uni(1, 2);
    p.heads = uni(1, 2);
    replay(p);
    if (it % 3 == 0) numeric_replay(p, rng);
  }
  std::printf("replay: %d problems, %ld checks, %ld failures total\n", problems, g_checks - before, g_failures);

  // 3. The SM80 tile loads (utils.cuh, load_tile_box_inside) address row r0 + p * R of a box as row
  //    r0's address plus the sum of the offsets of rows 2^b * R over the set bits b of p, and row r0
  //    + p * R as row r0 plus row p * R. Both hold when tile_coord gives every bit of a row index to
  //    exactly one axis (disjoint bit fields): checked for every box shape of 2^6 / 2^7 rows over
  //    3 axes, R = 8 and 16, and uneven per-axis steps.
  const long before_pass = g_checks;
  for (int total = 6; total <= 7; ++total) {
    for (int l0 = 0; l0 <= total; ++l0) {
      for (int l1 = 0; l0 + l1 <= total; ++l1) {
        const int lg[3] = {l0, l1, total - l0 - l1};
        const long long step[3] = {1000003LL * 7, 4099LL * 3, 17LL};
        auto offset = [&](int row) {
          int c[3];
          ns::tile_coord(row, lg, c);
          return c[0] * step[0] + c[1] * step[1] + c[2] * step[2];
        };
        for (int rpp : {8, 16}) {
          const int passes = (1 << total) / rpp;
          for (int r0 = 0; r0 < rpp; ++r0) {
            for (int pp = 0; pp < passes; ++pp) {
              long long bits = 0;
              for (int b = 0; (1 << b) < passes; ++b)
                if (pp & (1 << b)) bits += offset((1 << b) * rpp);
              CHECK(offset(pp * rpp) == bits, "pass offset additive lg=(%d,%d,%d) R=%d p=%d", lg[0], lg[1], lg[2],
                    rpp, pp);
              CHECK(offset(r0 + pp * rpp) == offset(r0) + offset(pp * rpp), "row r0 + pass lg=(%d,%d,%d) R=%d", lg[0],
                    lg[1], lg[2], rpp);
            }
          }
        }
      }
    }
  }
  std::printf("tile-load pass offsets: %ld checks, %ld failures total\n", g_checks - before_pass, g_failures);
  if (g_failures) {
    std::printf("FAILED\n");
    return 1;
  }
  std::printf("OK\n");
  return 0;
}
