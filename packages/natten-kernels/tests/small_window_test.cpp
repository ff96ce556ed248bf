// CPU check of the SM80 small-window forward kernel's plan and mask math
// (csrc/kernels/sm80/small_window_plan.hpp) against brute force.
//
// Build: g++ -std=c++17 -O2 -x c++ -Icsrc/include -Icsrc/kernels/sm80 tests/small_window_test.cpp
//
// 1. Row masks: for random key-box extents (product <= 128) and random non-empty windows inside the
//    box, sw_row_mask (and its shifts by 0..6, as each lane uses it) equals the per-key rule.
// 2. Run statistics: per axis and run size 2^l, the max / sum of the union-of-windows extents equal
//    brute force (min start / max end over every query of every run of every dilation group of the
//    query slab, without relying on monotone windows).
// 3. Plans on random problems (rank 1-3, odd shapes, even kernels, stride, dilation, causal, query
//    and key slabs): when a plan exists, a replay of the kernel's walk (regions in decode_work order,
//    patches inside them) finds every attended key of every real query inside its patch's key box,
//    the box inside the region's halo and the halo inside the key slab, halo rows within the
//    plan's bound, patch boxes within kSwMaxKeys, and every query of the slab in exactly one patch.
//    The kernel's division-free geometry (sw_decode_work, sw_make_tile) equals decode_work /
//    make_query_tile on every work tile of these problems.
// 4. Division-free math: fast_div against exact division (random and edge divisors / numerators),
//    sw_div_small with the correctly rounded reciprocal and with reciprocals 2 ulp off either way,
//    window_fast against window on random axes (every query), the ballot-form comb bits against
//    sw_combs, and b128_words_shr against b128_shr.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "natten/window.cuh"
#include "small_window_plan.hpp"
#include "tile_scheduler.cuh"

namespace nw = natten::window;
namespace ns = natten::sm80;

#include "cpu_check.hpp"

static bool bit(const ns::Bits128& m, int n) { return (m.w[n >> 6] >> (n & 63)) & 1u; }

static void test_masks(std::mt19937& rng) {
  for (int it = 0; it < 20000; ++it) {
    int e[3];
    do {
      for (int a = 0; a < 3; ++a) e[a] = 1 + int(rng() % (a == 2 ? 128 : 16));
    } while (e[0] * e[1] * e[2] > 128);
    int lo[3], hi[3];
    for (int a = 0; a < 3; ++a) {
      lo[a] = int(rng() % e[a]);
      hi[a] = lo[a] + int(rng() % (e[a] - lo[a]));
    }
    const ns::Bits128 m = ns::sw_row_mask(lo, hi, e, ns::sw_combs(e));
    const int shift = 2 * int(rng() % 4);
    const ns::Bits128 ms = ns::b128_shr(m, shift);
    for (int n = 0; n < 128; ++n) {
      const int x2 = n % e[2], x1 = (n / e[2]) % e[1], x0 = n / (e[1] * e[2]);
      bool want = n < e[0] * e[1] * e[2];
      want = want && x0 >= lo[0] && x0 <= hi[0] && x1 >= lo[1] && x1 <= hi[1] && x2 >= lo[2] && x2 <= hi[2];
      CHECK(bit(m, n) == want, "mask e=(%d,%d,%d) lo=(%d,%d,%d) hi=(%d,%d,%d) n=%d", e[0], e[1], e[2], lo[0], lo[1],
            lo[2], hi[0], hi[1], hi[2], n);
      if (n + shift < 128) CHECK(bit(ms, n) == bit(m, n + shift), "shr %d n=%d", shift, n);
    }
  }
}

// A random problem in Geometry form (tile fields unused by the plan).
static bool random_geometry(std::mt19937& rng, int* rank_out, ns::Geometry* out) {
  ns::Geometry g{};
  const int rank = 1 + int(rng() % 3);
  for (int a = 0; a < 3; ++a) {
    if (a >= rank) {
      g.extent[a] = g.q_extent[a] = g.kv_extent[a] = 1;
      g.kernel[a] = g.stride[a] = g.dilation[a] = 1;
      continue;
    }
    const int hi = rank == 1 ? 200 : (rank == 2 ? 40 : 14);
    const int n = 2 + int(rng() % (hi - 1));
    const int d = (rng() % 3 == 0) ? 1 + int(rng() % std::max(1, n / 4)) : 1;
    const int kmax = std::max(1, std::min(n / d, rank == 1 ? 40 : 9));
    const int K = 1 + int(rng() % kmax);
    g.extent[a] = n;
    g.kernel[a] = K;
    g.dilation[a] = d;
    g.stride[a] = (rng() % 3 == 0) ? 1 + int(rng() % K) : 1;
    g.causal[a] = rng() % 4 == 0;
    // Query slab [q0, q0 + nq); key slab = the keys it attends plus a margin, inside the grid.
    if (rng() % 3 == 0) {
      const int q0 = int(rng() % n);
      const int nq = 1 + int(rng() % (n - q0));
      int lo, hi2;
      nw::slab_key_range(n, K, g.stride[a], d, g.causal[a] != 0, q0, q0 + nq, lo, hi2);
      lo = std::max(0, lo - int(rng() % 3));
      hi2 = std::min(n, hi2 + int(rng() % 3));
      g.q_origin[a] = q0;
      g.q_extent[a] = nq;
      g.kv_origin[a] = lo;
      g.kv_extent[a] = hi2 - lo;
    } else {
      g.q_extent[a] = g.kv_extent[a] = n;
    }
  }
  g.batch = 1;
  g.heads = 1;
  *rank_out = rank;
  *out = g;
  return true;
}

static void test_stats_and_plans(std::mt19937& rng) {
  long plans = 0;
  for (int it = 0; it < 3000; ++it) {
    int rank = 1;
    ns::Geometry g;
    random_geometry(rng, &rank, &g);
    // 2. run statistics against brute force
    for (int a = 0; a < 3; ++a) {
      for (int l = 0; l <= 7; ++l) {
        const ns::SwRunStats s = ns::sw_run_stats(g, a, l);
        int bmax = 0;
        double bsum = 0, bruns = 0;
        const int d = g.dilation[a];
        for (int gl = 0; gl < std::min(d, g.q_extent[a]); ++gl) {
          const int first = g.q_origin[a] + gl, gg = first % d, shift = first / d;
          const nw::Axis ax = nw::make_axis(nw::group_extent(g.extent[a], d, gg), g.kernel[a], g.stride[a], g.causal[a] != 0);
          const int nq = nw::group_extent(g.q_extent[a], d, gl);
          for (int q0 = 0; q0 < nq; q0 += 1 << l) {
            int lo = 1 << 30, hi = -1;
            for (int q = q0; q < std::min(nq, q0 + (1 << l)); ++q) {
              for (int k = 0; k < ax.n; ++k)
                if (nw::attends(q + shift, k, ax)) {
                  lo = std::min(lo, k);
                  hi = std::max(hi, k);
                }
            }
            bmax = std::max(bmax, hi - lo + 1);
            bsum += hi - lo + 1;
            bruns += 1;
          }
        }
        CHECK(s.max_ext == bmax && s.sum_ext == bsum && s.runs == bruns, "stats it=%d axis %d l=%d: %d/%g/%g vs %d/%g/%g",
              it, a, l, s.max_ext, s.sum_ext, s.runs, bmax, bsum, bruns);
      }
    }
    // 3. plan replay
    ns::SwPlan plan;
    const int row_bytes = (rng() % 2) ? 64 : 128;
    if (!ns::sw_make_plan(g, rank, row_bytes, 64 * 1024, &plan)) continue;
    ++plans;
    int rsum = 0, psum = 0;
    for (int a = 0; a < 3; ++a) {
      rsum += plan.region_log2[a];
      psum += plan.patch_log2[a];
      CHECK(plan.patch_log2[a] <= plan.region_log2[a], "patch inside region");
      CHECK(a < rank || (plan.region_log2[a] == 0), "padded axis");
    }
    CHECK(psum == ns::kSwPatchLog2 && (rsum == 6 || rsum == 7), "sizes %d %d", psum, rsum);
    CHECK(plan.max_keys <= ns::kSwMaxKeys, "max keys %d", plan.max_keys);
    CHECK((double((1 << rsum)) + 2.0 * (plan.halo_rows + 2)) * row_bytes <= 64 * 1024, "smem");
    for (int a = 0; a < 3; ++a) g.q_log2[a] = plan.region_log2[a];
    ns::geometry_finalize(g);
    long long q_total = 1;
    for (int a = 0; a < 3; ++a) q_total *= g.q_extent[a];
    std::vector<int> owner(size_t(q_total), 0);
    const ns::SwDivs dv = ns::sw_make_divs(g);
    for (int64_t work = 0; work < g.num_work; ++work) {
      const ns::WorkTile w = ns::decode_work(g, work);
      ns::QueryTile qt;
      const bool nonempty = ns::make_query_tile(g, w, qt);
      {
        const ns::WorkTile fw = ns::sw_decode_work(g, dv, int(work));
        bool same = fw.batch == w.batch && fw.head == w.head;
        for (int a = 0; a < 3; ++a) same = same && fw.tile[a] == w.tile[a] && fw.group[a] == w.group[a];
        CHECK(same, "sw_decode_work it=%d work=%lld", it, (long long)work);
        ns::SwTile ft;
        const bool fne = ns::sw_make_tile(g, dv, w, ft);
        CHECK(fne == nonempty, "sw_make_tile nonempty it=%d", it);
        if (fne && nonempty) {
          for (int a = 0; a < 3; ++a) {
            const nw::Axis& x = qt.axis[a];
            const nw::FastAxis& f = ft.axis[a];
            CHECK(f.n == x.n && f.K == x.K && f.s == x.s && f.causal == x.causal && ft.q0[a] == qt.q0[a] &&
                      ft.q_last[a] == qt.q_last[a] && ft.n_q[a] == qt.n_q[a] && ft.n_kv[a] == qt.n_kv[a] &&
                      ft.kv_group[a] == qt.kv_group[a] && ft.q_shift[a] == qt.q_shift[a] &&
                      ft.kv_shift[a] == qt.kv_shift[a],
                  "sw_make_tile it=%d axis %d", it, a);
          }
        }
      }
      if (!nonempty) continue;
      int hs[3], he[3], rows = 1;
      for (int a = 0; a < 3; ++a) {
        int ks, ke;
        nw::tile_key_range(qt.q0[a] + qt.q_shift[a], qt.q_last[a] + qt.q_shift[a], qt.axis[a], ks, ke);
        hs[a] = ks - qt.kv_shift[a];
        he[a] = ke - ks + 1;
        rows *= he[a];
        CHECK(hs[a] >= 0 && hs[a] + he[a] <= qt.n_kv[a], "halo inside key slab axis %d", a);
      }
      CHECK(rows <= plan.halo_rows, "halo rows %d > %d", rows, plan.halo_rows);
      const int patches = 1 << (rsum - psum);
      for (int pi = 0; pi < patches; ++pi) {
        int origin[3], t = pi;
        for (int a = 2; a >= 0; --a) {
          const int nl = g.q_log2[a] - plan.patch_log2[a];
          origin[a] = (t & ((1 << nl) - 1)) << plan.patch_log2[a];
          t >>= nl;
        }
        int q0[3], ks[3], e[3], nkeys = 1;
        bool any = true;
        for (int a = 0; a < 3; ++a) {
          q0[a] = qt.q0[a] + origin[a];
          any = any && q0[a] < qt.n_q[a];
          const int ql = std::min(q0[a] + (1 << plan.patch_log2[a]) - 1, qt.n_q[a] - 1);
          int ke;
          nw::tile_key_range(q0[a] + qt.q_shift[a], ql + qt.q_shift[a], qt.axis[a], ks[a], ke);
          e[a] = ke - ks[a] + 1;
          nkeys *= e[a];
        }
        if (!any) continue;
        CHECK(nkeys <= plan.max_keys, "patch keys %d > %d", nkeys, plan.max_keys);
        for (int a = 0; a < 3; ++a)
          CHECK(ks[a] - qt.kv_shift[a] >= hs[a] && ks[a] - qt.kv_shift[a] + e[a] <= hs[a] + he[a], "box in halo");
        for (int r = 0; r < 16; ++r) {
          int c[3];
          c[2] = r & ((1 << plan.patch_log2[2]) - 1);
          c[1] = (r >> plan.patch_log2[2]) & ((1 << plan.patch_log2[1]) - 1);
          c[0] = r >> (plan.patch_log2[1] + plan.patch_log2[2]);
          bool real = true;
          long long lin = 0;
          for (int a = 0; a < 3; ++a) {
            const int x = q0[a] + c[a];  // slab group coordinate
            real = real && x < qt.n_q[a];
            const int token = (x * g.dilation[a]) + w.group[a];  // slab token coordinate
            lin = lin * g.q_extent[a] + token;
          }
          if (!real) continue;
          ++owner[size_t(lin)];
          for (int a = 0; a < 3; ++a) {  // every attended key inside the box
            const int q = q0[a] + c[a] + qt.q_shift[a];
            int ws, we;
            nw::window(q, qt.axis[a], ws, we);
            CHECK(ws >= ks[a] && we <= ks[a] + e[a] - 1, "window in box axis %d", a);
          }
        }
      }
    }
    for (long long i = 0; i < q_total; ++i) CHECK(owner[size_t(i)] == 1, "query %lld owned %d times", i, owner[size_t(i)]);
  }
  std::printf("plans checked: %ld\n", plans);
  CHECK(plans > 300, "too few problems with a plan: %ld", plans);
}

static void test_fast_math(std::mt19937& rng) {
  // fast_div: exact for 0 <= n < 2^31, 1 <= d < 2^31.
  std::vector<int> ds = {1, 2, 3, 5, 7, 8, 9, 31, 32, 33, 56, 127, 128, 129, 1000, 65535, 65536, 65537, 1 << 30,
                         (1 << 30) + 1, 2147483646, 2147483647};
  for (int i = 0; i < 2000; ++i) ds.push_back(1 + int(rng() % 2147483647u));
  for (int i = 0; i < 2000; ++i) ds.push_back(1 + int(rng() % 300));
  for (const int d : ds) {
    const nw::FastDiv f = nw::make_fast_div(d);
    std::vector<int> ns_ = {0, 1, d - 1, d, 2147483647, 2147483646};
    if (d < 1073741823) ns_.push_back(d + 1), ns_.push_back(2 * d - 1), ns_.push_back(2 * d);
    for (int i = 0; i < 200; ++i) ns_.push_back(int(rng() % 2147483648u));
    for (int i = 0; i < 200; ++i) ns_.push_back(int(rng() % 5000));
    const int q_top = 2147483647 / d;  // numerators around the largest multiple
    ns_.push_back(int(int64_t(q_top) * d));
    if (int64_t(q_top) * d > 0) ns_.push_back(int(int64_t(q_top) * d - 1));
    for (const int n : ns_) CHECK(nw::fast_div(n, f) == n / d, "fast_div %d / %d = %d", n, d, nw::fast_div(n, f));
  }
  // sw_div_small: 0 <= n < 2^20, 1 <= e < 2^20, reciprocal within 2 ulp.
  for (int i = 0; i < 400000; ++i) {
    const int e = 1 + int(rng() % (i % 2 ? 200 : (1 << 20) - 1));
    int n = int(rng() % (1 << 20));
    if (i % 3 == 0) n = (n / e) * e + (i % 6 == 0 ? 0 : e - 1);  // at and just below multiples
    if (n >= (1 << 20)) n = (1 << 20) - 1;
    const float r = 1.0f / float(e);
    const float rs[5] = {r, std::nextafter(r, 0.f), std::nextafter(std::nextafter(r, 0.f), 0.f),
                         std::nextafter(r, 1.f), std::nextafter(std::nextafter(r, 1.f), 1.f)};
    for (const float inv : rs) CHECK(ns::sw_div_small(n, inv) == n / e, "div_small %d / %d", n, e);
  }
  // window_fast == window.
  for (int it = 0; it < 20000; ++it) {
    const int n = 1 + int(rng() % 300);
    const int K = 1 + int(rng() % n);
    const int s = 1 + int(rng() % K);
    const bool causal = rng() % 2;
    const nw::Axis a = nw::make_axis(n, K, s, causal);
    const nw::FastAxis f = nw::make_fast_axis(n, K, s, causal, nw::make_fast_div(s));
    for (int i = 0; i < n; ++i) {
      int ws, we, fs, fe;
      nw::window(i, a, ws, we);
      nw::window_fast(i, f, fs, fe);
      CHECK(ws == fs && we == fe, "window_fast n=%d K=%d s=%d causal=%d i=%d", n, K, s, int(causal), i);
    }
  }
  // ballot-form combs == sw_combs; word shifts == b128_shr.
  for (int it = 0; it < 20000; ++it) {
    int e[3];
    do {
      for (int a = 0; a < 3; ++a) e[a] = 1 + int(rng() % (a == 2 ? 128 : 16));
    } while (e[0] * e[1] * e[2] > 128);
    const ns::SwCombs want = ns::sw_combs(e);
    const int s1 = e[2], s0 = e[1] * e[2];
    const float inv1 = 1.0f / float(s1), inv0 = 1.0f / float(s0);
    for (int p = 0; p < 128; ++p) {
      CHECK(ns::sw_comb_bit(p, e[1], s1, inv1) == bit(want.c1, p), "comb c1 e=(%d,%d,%d) p=%d", e[0], e[1], e[2], p);
      CHECK(ns::sw_comb_bit(p, e[0], s0, inv0) == bit(want.c0, p), "comb c0 e=(%d,%d,%d) p=%d", e[0], e[1], e[2], p);
    }
    const ns::Bits128 x{{(uint64_t(rng()) << 32) | rng(), (uint64_t(rng()) << 32) | rng()}};
    const int sh = 2 * int(rng() % 4);
    uint32_t words[4];
    ns::b128_words_shr(x, sh, words);
    const ns::Bits128 y = ns::b128_shr(x, sh);
    CHECK(words[0] == uint32_t(y.w[0]) && words[1] == uint32_t(y.w[0] >> 32) && words[2] == uint32_t(y.w[1]) &&
              words[3] == uint32_t(y.w[1] >> 32),
          "words_shr %d", sh);
  }
}

int main() {
  std::mt19937 rng(12345);
  test_masks(rng);
  test_fast_math(rng);
  test_stats_and_plans(rng);
  std::printf("%ld checks, %ld failures\n", g_checks, g_failures);
  if (g_failures == 0) std::printf("OK\n");
  return g_failures == 0 ? 0 : 1;
}
