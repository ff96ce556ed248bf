// CPU check of the backward (key-parallel) tile math: window::key_run_query_range and the
// key-tile -> query-tile walk of tile_scheduler.cuh (make_key_tile / make_query_tiles_for_key /
// pair_full), against a brute-force transcription of SEMANTICS.md.
//
// Build: g++ -std=c++17 -O2 -x c++ -Icsrc/include -Icsrc/kernels/sm80 tests/bwd_tile_math_test.cpp
//
// 1. Per axis, exhaustively for n <= 20, every valid (K, s, d, causal) and every key run [k0, k1]
//    (k1 may run past the group, like a partial key tile): the returned query run is exactly the set
//    of queries attending at least one key of the run (both ends come from window::query_run_bound,
//    which the SM90 dK / dV consumers also call per key, padding keys included: k0 may be past the
//    group too, then the run must be empty).
// 2. Replay on random multi-dimensional problems (rank 1-3, all tile shapes; every other problem on
//    a query slab and a key slab of a larger grid, the key slab exactly the query slab's key range
//    or larger): each attended (query of the query slab, key of the key slab) pair is visited by
//    exactly one (key tile, query tile) pair of the key-parallel walk, every visited pair of tiles
//    holds at least one attended pair, the kernel's per-element mask (query_col_window) and
//    pair_full() are exact (pair_full true iff every REAL query of the query tile attends every key
//    of the key tile), no key outside the key slab is used with a real query, and every key of the
//    key slab is a real row of exactly one work tile (dK / dV written once, zeros included); the
//    tile chooser's count of the walk's visited pairs (key_walk_axis_pairs) is exact.
// 3. A numeric replay (float64) of the backward kernels' decisions on random problems (slabs
//    included) with random q, k, v, dO, dLSE: delta = rowsum(dO * O) - dLSE; dQ accumulated over
//    the forward's key-tile walk with the 64-bit row-mask words of the masked path; dK / dV
//    accumulated over the key-parallel walk (per-element mask from the query windows, padding query
//    columns with lse = +inf, skipped full tiles) -- against the gradients of the slab's forward
//    computed straight from the definition.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "natten/window.cuh"
#include "tile_scheduler.cuh"

namespace nw = natten::window;
namespace ns = natten::sm80;

#include "cpu_check.hpp"

static bool brute_attends(int i, int j, int n, int K, int s, int d, bool causal) {
  const int g = i % d;
  if (j % d != g) return false;
  const int ip = i / d, jp = j / d;
  const int ng = int(std::ceil(double(n - g) / double(d)));
  const int L = K / 2;
  const int R = K / 2 + (K % 2) - 1;
  if (!causal) {
    const int l = std::min(s * (ip / s) + s / 2, ng - 1);
    const int c = std::min(std::max(l, L), ng - 1 - R);
    return c - L <= jp && jp <= c + R;
  }
  const int l = std::min(s * (ip / s) + s - 1, ng - 1);
  return jp <= ip && l - jp < K;
}

static void check_axis(int n, int K, int s, int d, bool causal) {
  for (int g = 0; g < d && g < n; ++g) {
    const int ng = nw::group_extent(n, d, g);
    const nw::Axis a = nw::make_axis(ng, K, s, causal);
    for (int k0 = 0; k0 < ng + 4; ++k0) {  // k0 past the group: a padding key row (attends nothing)
      for (int k1 = k0; k1 < ng + 4; ++k1) {
        int lo, hi;
        nw::key_run_query_range(k0, k1, a, lo, hi);
        for (int i = 0; i < ng; ++i) {
          bool any = false;
          for (int j = k0; j <= std::min(k1, ng - 1); ++j)
            any = any || brute_attends(g + d * i, g + d * j, n, K, s, d, causal);
          const bool in = i >= lo && i <= hi;
          CHECK(in == any, "n=%d K=%d s=%d d=%d causal=%d g=%d keys [%d,%d] query %d: range [%d,%d] brute %d", n,
                K, s, d, causal, g, k0, k1, i, lo, hi, any);
        }
      }
    }
  }
}

// A problem on a global grid n[], with a query slab [q0, q0 + nq) and a key slab [k0, k0 + nk) per
// axis (the whole grid: q0 = k0 = 0, nq = nk = n). Slab tokens are indexed in slab coordinates.
struct Problem {
  int rank;
  int n[3], K[3], s[3], d[3];
  bool causal[3];
  int q0[3], nq[3], k0[3], nk[3];
  int ql[3], kl[3];
  int splits[3];  // backward_kv_splits (0 = one CTA per key tile); larger than the key tiles = 0
};

// x, y: GLOBAL token coordinates.
static bool brute_multi(const Problem& p, const int x[3], const int y[3]) {
  for (int a = 0; a < 3; ++a)
    if (!brute_attends(x[a], y[a], p.n[a], p.K[a], p.s[a], p.d[a], p.causal[a])) return false;
  return true;
}

static ns::Geometry make_geometry(const Problem& p) {
  ns::Geometry geo{};
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
  geo.batch = 1;
  geo.heads = 1;
  ns::geometry_finalize(geo);
  return geo;
}

static int slab_lin(const int ext[3], const int c[3]) { return (c[0] * ext[1] + c[1]) * ext[2] + c[2]; }
static void slab_coord(const int ext[3], int i, int c[3]) {
  c[0] = i / (ext[1] * ext[2]);
  c[1] = (i / ext[2]) % ext[1];
  c[2] = i % ext[2];
}

// One visited (key tile, query tile) pair of the key-parallel walk, as the dK / dV kernel sees it:
// calls f(query column, key row, x, y, real_q, real_k, used) for every cell, where x / y are the
// query / key slab token coordinates and `used` = full || the per-element mask of the kernel.
template <class F>
static void for_each_cell(const Problem& p, const ns::Geometry& geo, const ns::KvWorkTile& w, const ns::KeyTile& kt,
                          const ns::QueryTile& qt, bool full, F&& f) {
  const int nq = 1 << (p.ql[0] + p.ql[1] + p.ql[2]);
  const int nk = 1 << (p.kl[0] + p.kl[1] + p.kl[2]);
  for (int c = 0; c < nq; ++c) {
    int qc[3], x[3], ws[3], wl[3];
    ns::tile_coord(c, geo.q_log2, qc);
    ns::query_col_window(geo, qt, c, ws, wl);
    bool qok = true;
    for (int a = 0; a < 3; ++a) {
      qc[a] += qt.q0[a];
      qok = qok && qc[a] < kt.n_q[a];
      x[a] = kt.q_group[a] + p.d[a] * qc[a];
    }
    for (int r = 0; r < nk; ++r) {
      int kc[3], y[3];
      ns::tile_coord(r, geo.kv_log2, kc);
      bool kok = true, mask = true;
      for (int a = 0; a < 3; ++a) {
        kc[a] += kt.k0[a];
        kok = kok && kc[a] < kt.n_kv[a];
        mask = mask && unsigned(kc[a] - ws[a]) <= unsigned(wl[a]);
        y[a] = w.group[a] + p.d[a] * kc[a];
      }
      f(c, r, x, y, qok, kok, full || mask);
    }
  }
}

static long long g_interval_checks = 0;  // visits whose mask-free interval test was checked

static void replay(const Problem& p) {
  const ns::Geometry geo = make_geometry(p);
  ns::KvGeometry kg{};
  ns::kv_geometry_finalize(geo, 1, kg, p.splits);
  const int NQ = p.nq[0] * p.nq[1] * p.nq[2];
  const int NK = p.nk[0] * p.nk[1] * p.nk[2];
  std::vector<int> visits(size_t(NQ) * NK, 0);
  std::vector<int> owner(size_t(NK), 0);  // key slab token -> number of work tiles holding it as a real row
  const int nk = 1 << (p.kl[0] + p.kl[1] + p.kl[2]);
  std::vector<ns::KvWorkTile> items;
  for (int64_t idx = 0; idx < kg.num_work; ++idx) {
    const ns::KvWorkTile split = ns::decode_kv_work(geo, kg, idx);
    for (int j = 0; j < ns::kv_split_tiles(kg, split); ++j) items.push_back(ns::kv_split_tile(kg, split, j));
  }
  // With backward_kv_splits the work items share the key tiles: each (batch, head, group, key tile)
  // exactly once, every tile index in range.
  {
    int64_t full = 1;
    for (int a = 0; a < 3; ++a) {
      CHECK(kg.splits[a] >= 1 && kg.splits[a] <= kg.kv_tiles[a], "splits[%d] = %d outside [1, %d]", a, kg.splits[a],
            kg.kv_tiles[a]);
      full *= int64_t(kg.groups[a]) * kg.kv_tiles[a];
    }
    CHECK(int64_t(items.size()) == full * kg.heads_kv * geo.batch, "split walk covers %lld tiles, expected %lld",
          (long long)items.size(), (long long)(full * kg.heads_kv * geo.batch));
    std::vector<int> seen(size_t(full), 0);
    for (const ns::KvWorkTile& w : items) {
      int64_t lin = 0;
      for (int a = 0; a < 3; ++a) {
        CHECK(w.tile[a] >= 0 && w.tile[a] < kg.kv_tiles[a], "tile[%d] = %d out of range", a, w.tile[a]);
        lin = (lin * kg.groups[a] + w.group[a]) * kg.kv_tiles[a] + w.tile[a];
      }
      ++seen[size_t(lin)];
    }
    for (int x : seen) CHECK(x == 1, "a key tile is owned by %d work items", x);
  }
  double walk_pairs = 0.0;  // visited (query, key) pairs of the walk, padding included
  for (size_t idx = 0; idx < items.size(); ++idx) {
    const ns::KvWorkTile& w = items[idx];
    ns::KeyTile kt;
    if (!ns::make_key_tile(geo, w, kt)) continue;
    for (int a = 0; a < 3; ++a) {  // the key tile's group and shifts describe the same global tokens
      const int y = w.group[a] + p.d[a] * kt.k0[a];
      CHECK((y + p.k0[a]) % p.d[a] == (kt.q_group[a] + p.q0[a]) % p.d[a], "query / key groups differ (axis %d)", a);
      CHECK((y + p.k0[a]) / p.d[a] == kt.k0[a] + kt.kv_shift[a], "kv_shift wrong (axis %d)", a);
      CHECK(kt.n_q[a] == 0 || (kt.q_group[a] + p.q0[a]) / p.d[a] == kt.q_shift[a], "q_shift wrong (axis %d)", a);
    }
    for (int r = 0; r < nk; ++r) {
      int kc[3], y[3];
      ns::tile_coord(r, geo.kv_log2, kc);
      bool kok = true;
      for (int a = 0; a < 3; ++a) {
        kc[a] += kt.k0[a];
        kok = kok && kc[a] < kt.n_kv[a];
        y[a] = w.group[a] + p.d[a] * kc[a];
      }
      if (kok) ++owner[size_t(slab_lin(p.nk, y))];
    }
    const ns::QueryTilesForKey qs = ns::make_query_tiles_for_key(geo, kt);
    walk_pairs += double(qs.total) * double(1 << (p.ql[0] + p.ql[1] + p.ql[2])) * double(nk);
    // The dK / dV kernel's mask-free intervals (visit_full_halves): A on a prefix, B on a suffix of
    // each axis's visit tiles, interval = [#!B, #A - 1]; checked against pair_full below.
    int full_lo[3] = {0, 0, 0}, full_hi[3] = {-1, -1, -1};
    for (int a = 0; a < 3; ++a) {
      int n_not_b = 0, n_a = 0;
      for (int j = 0; j < qs.count[a]; ++j) {
        bool A = false, B = false;
        ns::visit_full_halves(geo, kt, qs, a, j, A, B);
        CHECK(!A || n_a == j, "A is not a prefix on axis %d (tile %d)", a, j);
        CHECK(B || n_not_b == j, "B is not a suffix on axis %d (tile %d)", a, j);
        n_a += A ? 1 : 0;
        n_not_b += B ? 0 : 1;
      }
      full_lo[a] = n_not_b;
      full_hi[a] = n_a - 1;
    }
    for (int t = 0; t < qs.total; ++t) {
      int tile[3];
      ns::query_tile_of_visit(qs, t, tile);
      ns::QueryTile qt;
      ns::query_tile_at(geo, kt, tile, qt);
      for (int a = 0; a < 3; ++a) CHECK(qt.q0[a] < kt.n_q[a], "visited query tile outside the query slab (axis %d)", a);
      const bool full = ns::pair_full(geo, qt, kt.k0);
      bool in_interval = true;
      for (int a = 0; a < 3; ++a) {
        const int j = tile[a] - qs.first[a];
        in_interval = in_interval && full_lo[a] <= j && j <= full_hi[a];
      }
      CHECK(in_interval == full, "mask-free interval says %d, pair_full %d (work %lld, visit %d)", in_interval, full,
            (long long)idx, t);
      ++g_interval_checks;
      int attended = 0;
      bool all = true;
      for_each_cell(p, geo, w, kt, qt, full,
                    [&](int c, int r, const int x[3], const int y[3], bool qok, bool kok, bool used) {
                      int xg[3], yg[3];
                      for (int a = 0; a < 3; ++a) {
                        xg[a] = x[a] + p.q0[a];
                        yg[a] = y[a] + p.k0[a];
                      }
                      const bool att = qok && kok && brute_multi(p, xg, yg);
                      if (qok && !att) all = false;  // padding queries are masked by the kernel (lse = +inf)
                      if (qok && kok) CHECK(used == att, "mask %d != attends %d (col %d row %d)", used, att, c, r);
                      // keys outside the key slab's group are zero-filled rows that are never stored;
                      // the walk never even uses them with a real query
                      if (qok && !kok) CHECK(!used, "out-of-slab key row %d used (full=%d)", r, full);
                      if (att) {
                        ++attended;
                        ++visits[size_t(slab_lin(p.nq, x)) * NK + slab_lin(p.nk, y)];
                      }
                    });
      CHECK(attended > 0, "visited tile pair without an attended pair (work %lld, visit %d)", (long long)idx, t);
      CHECK(full == all, "pair_full %d but every pair attended = %d (work %lld, visit %d)", full, all,
            (long long)idx, t);
    }
  }
  // The tile chooser's count of this walk (key_walk_axis_pairs, a product over the axes).
  double model = 1.0;
  for (int a = 0; a < 3; ++a)
    model *= ns::key_walk_axis_pairs(p.n[a], p.K[a], p.s[a], p.d[a], p.causal[a], p.nq[a], p.q0[a], p.nk[a], p.k0[a],
                                     p.ql[a], p.kl[a]);
  CHECK(model == walk_pairs, "key_walk_axis_pairs gives %.0f visited pairs, the walk visits %.0f", model, walk_pairs);
  for (int yi = 0; yi < NK; ++yi)
    CHECK(owner[size_t(yi)] == 1, "key slab token %d is a real row of %d work tiles, want 1 (dK / dV written once)",
          yi, owner[size_t(yi)]);
  for (int xi = 0; xi < NQ; ++xi) {
    int x[3], xg[3];
    slab_coord(p.nq, xi, x);
    for (int a = 0; a < 3; ++a) xg[a] = x[a] + p.q0[a];
    for (int yi = 0; yi < NK; ++yi) {
      int y[3], yg[3];
      slab_coord(p.nk, yi, y);
      for (int a = 0; a < 3; ++a) yg[a] = y[a] + p.k0[a];
      const int want = brute_multi(p, xg, yg) ? 1 : 0;
      CHECK(visits[size_t(xi) * NK + yi] == want, "pair (%d,%d) visited %d times, want %d", xi, yi,
            visits[size_t(xi) * NK + yi], want);
    }
  }
}

// ---- 3. numeric replay of the backward ------------------------------------------------------
// Reference: the gradient of THIS slab's forward (queries of the query slab, keys of the key
// slab, which holds every key they attend) w.r.t. its inputs, straight from the definition.
static void numeric_replay(const Problem& p, std::mt19937& rng) {
  const ns::Geometry geo = make_geometry(p);
  ns::KvGeometry kg{};
  ns::kv_geometry_finalize(geo, 1, kg, p.splits);
  const int NQ = p.nq[0] * p.nq[1] * p.nq[2];
  const int NK = p.nk[0] * p.nk[1] * p.nk[2];
  const int D = 3;
  std::normal_distribution<double> nd(0.0, 1.0);
  std::vector<double> q(NQ * D), k(NK * D), v(NK * D), dO(NQ * D), dL(NQ);
  for (auto* vec : {&q, &k, &v, &dO}) for (auto& x : *vec) x = nd(rng);
  for (auto& x : dL) x = nd(rng);
  const double scale = (rng() & 1) ? 0.7 : -0.4;  // negative scales are valid
  auto qglob = [&](int i, int xg[3]) {
    slab_coord(p.nq, i, xg);
    for (int a = 0; a < 3; ++a) xg[a] += p.q0[a];
  };
  auto kglob = [&](int j, int yg[3]) {
    slab_coord(p.nk, j, yg);
    for (int a = 0; a < 3; ++a) yg[a] += p.k0[a];
  };
  auto dot = [&](const std::vector<double>& a, int i, const std::vector<double>& b, int j) {
    double s = 0;
    for (int c = 0; c < D; ++c) s += a[i * D + c] * b[j * D + c];
    return s;
  };
  std::vector<double> lse(NQ), O(NQ * D, 0.0), P(size_t(NQ) * NK, 0.0);
  for (int i = 0; i < NQ; ++i) {
    int x[3];
    qglob(i, x);
    double mx = -INFINITY;
    for (int j = 0; j < NK; ++j) {
      int y[3];
      kglob(j, y);
      if (brute_multi(p, x, y)) mx = std::max(mx, scale * dot(q, i, k, j));
    }
    double sum = 0;
    for (int j = 0; j < NK; ++j) {
      int y[3];
      kglob(j, y);
      if (brute_multi(p, x, y)) sum += std::exp(scale * dot(q, i, k, j) - mx);
    }
    lse[i] = mx + std::log(sum);
    for (int j = 0; j < NK; ++j) {
      int y[3];
      kglob(j, y);
      if (!brute_multi(p, x, y)) continue;
      P[size_t(i) * NK + j] = std::exp(scale * dot(q, i, k, j) - lse[i]);
      for (int c = 0; c < D; ++c) O[i * D + c] += P[size_t(i) * NK + j] * v[j * D + c];
    }
  }
  std::vector<double> rdq(NQ * D, 0.0), rdk(NK * D, 0.0), rdv(NK * D, 0.0);
  for (int i = 0; i < NQ; ++i) {
    double delta = dot(dO, i, O, i);
    for (int j = 0; j < NK; ++j) {
      const double pij = P[size_t(i) * NK + j];
      if (pij == 0.0) continue;
      const double dz = pij * (dot(dO, i, v, j) - delta + dL[i]);
      for (int c = 0; c < D; ++c) {
        rdq[i * D + c] += scale * dz * k[j * D + c];
        rdk[j * D + c] += scale * dz * q[i * D + c];
        rdv[j * D + c] += pij * dO[i * D + c];
      }
    }
  }
  // Preprocess (the kernel folds dLSE into delta).
  std::vector<double> delta(NQ);
  for (int i = 0; i < NQ; ++i) delta[i] = dot(dO, i, O, i) - dL[i];
  const double slog2 = scale * 1.4426950408889634;
  // dQ: query-parallel walk (the forward's), masked tiles through the row-mask words.
  std::vector<double> dq(NQ * D, 0.0);
  std::vector<int> dq_owner(NQ, 0);
  const int nq = 1 << (p.ql[0] + p.ql[1] + p.ql[2]);
  const int nk = 1 << (p.kl[0] + p.kl[1] + p.kl[2]);
  uint64_t rep[3];
  ns::key_tile_mask_patterns(geo.kv_log2, rep);
  for (int64_t idx = 0; idx < geo.num_work; ++idx) {
    const ns::WorkTile w = ns::decode_work(geo, idx);
    ns::QueryTile qt;
    if (!ns::make_query_tile(geo, w, qt)) continue;
    for (int r = 0; r < nq; ++r) {
      if (!ns::query_row_valid(geo, qt, r)) continue;
      int qc[3], x[3];
      ns::tile_coord(r, geo.q_log2, qc);
      for (int a = 0; a < 3; ++a) x[a] = w.group[a] + p.d[a] * (qt.q0[a] + qc[a]);
      ++dq_owner[slab_lin(p.nq, x)];
    }
    const ns::KeyTiles kt = ns::make_key_tiles(geo, qt);
    int kb[3];
    ns::key_tile_origin(geo, kt, 0, kb);
    for (int t = 0; t < kt.total; ++t) {
      const bool full = ns::key_tile_full(geo, kt, kb);
      for (int r = 0; r < nq; ++r) {
        if (!ns::query_row_valid(geo, qt, r)) continue;
        int qc[3], x[3];
        ns::tile_coord(r, geo.q_log2, qc);
        int start[3], len[3], rel[3];
        ns::query_row_window(geo, qt, r, start, len);
        for (int a = 0; a < 3; ++a) {
          x[a] = w.group[a] + p.d[a] * (qt.q0[a] + qc[a]);
          rel[a] = start[a] - kb[a];
        }
        const uint64_t word = ns::key_tile_row_mask(rel, len, geo.kv_log2, rep);
        const int i = slab_lin(p.nq, x);
        for (int c = 0; c < nk; ++c) {
          if (!ns::key_col_valid(geo, qt, kb, c)) {
            CHECK(!full && ((word >> c) & 1u) == 0, "dq: out-of-slab key column %d used", c);
            continue;  // zero-filled K / V: masked (and never in a full tile)
          }
          if (!full && ((word >> c) & 1u) == 0) continue;
          int kc[3], y[3];
          ns::tile_coord(c, geo.kv_log2, kc);
          for (int a = 0; a < 3; ++a) y[a] = qt.kv_group[a] + p.d[a] * (kb[a] + kc[a]);
          const int j = slab_lin(p.nk, y);
          const double pij = std::exp2(dot(q, i, k, j) * slog2 - lse[i] * 1.4426950408889634);
          const double ds = pij * (dot(dO, i, v, j) - delta[i]);
          for (int cc = 0; cc < D; ++cc) dq[i * D + cc] += ds * k[j * D + cc];
        }
      }
      ns::key_tile_advance(geo, kt, kb);
    }
  }
  for (int i = 0; i < NQ; ++i) CHECK(dq_owner[i] == 1, "dq: query slab token %d written %d times", i, dq_owner[i]);
  for (auto& x : dq) x *= scale;
  // dK / dV: key-parallel walk.
  std::vector<double> dk(NK * D, 0.0), dv(NK * D, 0.0);
  for (int64_t idx = 0; idx < kg.num_work; ++idx) {
   const ns::KvWorkTile split = ns::decode_kv_work(geo, kg, idx);
   for (int j = 0; j < ns::kv_split_tiles(kg, split); ++j) {
    const ns::KvWorkTile w = ns::kv_split_tile(kg, split, j);
    ns::KeyTile ktile;
    if (!ns::make_key_tile(geo, w, ktile)) continue;
    const ns::QueryTilesForKey qs = ns::make_query_tiles_for_key(geo, ktile);
    for (int t = 0; t < qs.total; ++t) {
      int tile[3];
      ns::query_tile_of_visit(qs, t, tile);
      ns::QueryTile qt;
      ns::query_tile_at(geo, ktile, tile, qt);
      const bool full = ns::pair_full(geo, qt, ktile.k0);
      for_each_cell(p, geo, w, ktile, qt, full,
                    [&](int, int r, const int x[3], const int y[3], bool qok, bool kok, bool used) {
                      if (!used) return;
                      if (!kok) {
                        CHECK(!qok, "dkdv: out-of-slab key row %d used by a real query (full=%d)", r, full);
                        return;  // rows never stored
                      }
                      if (!qok) return;  // padding query column: lse = +inf makes P exactly 0
                      const int i = slab_lin(p.nq, x), j = slab_lin(p.nk, y);
                      const double pij = std::exp2(dot(q, i, k, j) * slog2 - lse[i] * 1.4426950408889634);
                      const double ds = pij * (dot(dO, i, v, j) - delta[i]);
                      for (int cc = 0; cc < D; ++cc) {
                        dv[j * D + cc] += pij * dO[i * D + cc];
                        dk[j * D + cc] += ds * q[i * D + cc];
                      }
                    });
    }
   }
  }
  for (auto& x : dk) x *= scale;
  auto cmp = [&](const std::vector<double>& got, const std::vector<double>& ref, const char* name) {
    double worst = 0;
    for (size_t e = 0; e < got.size(); ++e) worst = std::max(worst, std::fabs(got[e] - ref[e]));
    CHECK(worst < 1e-9, "%s: max abs diff %g (rank %d, n %d %d %d, q slab %d+%d %d+%d %d+%d, kv slab %d+%d %d+%d "
          "%d+%d)", name, worst, p.rank, p.n[0], p.n[1], p.n[2], p.q0[0], p.nq[0], p.q0[1], p.nq[1], p.q0[2],
          p.nq[2], p.k0[0], p.nk[0], p.k0[1], p.nk[1], p.k0[2], p.nk[2]);
  };
  cmp(dq, rdq, "dq");
  cmp(dk, rdk, "dk");
  cmp(dv, rdv, "dv");
}

int main(int argc, char** argv) {
  const int max_n = argc > 1 ? std::atoi(argv[1]) : 20;
  long configs = 0;
  for (int n = 1; n <= max_n; ++n) {
    check_axis(n, 1, 1, 1, false);
    check_axis(n, 1, 1, 1, true);
    for (int K = 2; K <= n; ++K)
      for (int d = 1; K * d <= n; ++d)
        for (int s = 1; s <= K; ++s)
          for (int c = 0; c < 2; ++c) {
            check_axis(n, K, s, d, c != 0);
            ++configs;
          }
  }
  std::printf("per-axis inverse ranges: %ld configurations, %ld checks, %ld failures\n", configs, g_checks,
              g_failures);
  std::mt19937 rng(4321);
  auto uni = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  const int problems = argc > 2 ? std::atoi(argv[2]) : 1000;
  const long before = g_checks;
  long sliced = 0;
  for (int it = 0; it < problems; ++it) {
    Problem p{};
    p.rank = uni(1, 3);
    const int max_ext = p.rank == 1 ? 70 : (p.rank == 2 ? 15 : 7);
    // Every other problem: a query slab and a key slab of a larger grid (the key slab is the
    // query slab's key range, exactly or with a random margin that adds keys no slab query attends).
    const bool region = it % 2 == 1;
    sliced += region;
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
      if (region) {
        p.q0[a] = uni(0, p.n[a] - 1);
        p.nq[a] = uni(1, p.n[a] - p.q0[a]);
      }
      int lo, hi;
      nw::slab_key_range(p.n[a], p.K[a], p.s[a], p.d[a], p.causal[a], p.q0[a], p.q0[a] + p.nq[a], lo, hi);
      const bool minimal = uni(0, 2) == 0;
      p.k0[a] = region ? (minimal ? lo : std::max(0, lo - uni(0, 3) * uni(0, 3))) : 0;
      p.nk[a] = region ? (minimal ? hi : std::min(p.n[a], hi + uni(0, 3) * uni(0, 3))) - p.k0[a] : p.n[a];
    }
    for (int pass = 0; pass < 2; ++pass) {
      int* l = pass == 0 ? p.ql : p.kl;
      l[0] = l[1] = l[2] = 0;
      int total = uni(0, 3) == 0 ? uni(0, 6) : 6;
      while (total-- > 0) l[uni(0, p.rank - 1)] += 1;
    }
    // backward_kv_splits: default (one CTA per key tile), 1 (one CTA walks every tile of an axis),
    // or a random count (values past the key tiles fall back to the default).
    for (int a = 0; a < 3; ++a) {
      const int mode = uni(0, 3);
      p.splits[a] = mode == 0 ? 0 : mode == 1 ? 1 : uni(1, 6);
    }
    replay(p);
    if (it % 3 == 0 || (region && it % 3 == 1)) numeric_replay(p, rng);
  }
  std::printf("key-parallel replay: %d problems (%ld on slabs), %ld checks (%lld visits' mask-free intervals), "
              "%ld failures total\n", problems, sliced, g_checks - before, g_interval_checks, g_failures);
  if (g_failures) {
    std::printf("FAILED\n");
    return 1;
  }
  std::printf("OK\n");
  return 0;
}
