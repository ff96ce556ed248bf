// CPU check of the SM90 forward's division-free work context (csrc/kernels/sm90/work_context.cuh):
// make_work_context_fast and row_window_fast against make_work_context_generic and
// sm80::query_row_window (whose window math window_math_test.cpp checks against SEMANTICS.md) on
// random problems with dilation 1 (the SM90 kernels' domain): rank 1-3, odd extents, even and odd
// kernels, stride, per-axis causal, query / key slabs, every tile shape, batch and heads, GQA, the
// dynamic order's reversed axes and pair interleave; plus large 1-D / 2-D / 3-D problems (the
// benchmark suite's shapes) on a sample of their work tiles; and the forward's split-tail chunks
// (restrict_key_walk) partition each sampled tile's walk.
//
// Build: g++ -std=c++17 -O2 -x c++ -Icsrc/include -Icsrc/kernels tests/sm90_work_context_test.cpp
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>

#include "natten/window.cuh"
#include "sm90/work_context.cuh"

namespace nw = natten::window;
namespace ns = natten::sm80;
namespace n9 = natten::sm90;

#include "cpu_check.hpp"
#include "cpu_random_problem.hpp"

struct Problem : ProblemAxes {
  int batch, heads, heads_per_kv;
};

static ns::Geometry geometry(const Problem& p) { return problem_geometry(p, p.heads); }

static void compare(const Problem& p, const ns::Geometry& g, const n9::WorkDecode& d, int64_t idx, int rev) {
  const n9::WorkContext a = n9::make_work_context_generic(g, p.heads_per_kv, idx, rev);
  const n9::WorkContext b = n9::make_work_context_fast(g, d, idx, rev);
  CHECK(a.work.batch == b.work.batch && a.work.head == b.work.head && a.kv_head == b.kv_head,
        "idx=%lld rev=%d: batch %lld/%lld head %lld/%lld kv_head %lld/%lld", (long long)idx, rev,
        (long long)a.work.batch, (long long)b.work.batch, (long long)a.work.head, (long long)b.work.head,
        (long long)a.kv_head, (long long)b.kv_head);
  CHECK(a.keys.total == b.keys.total, "idx=%lld rev=%d: key tiles %d/%d", (long long)idx, rev, a.keys.total,
        b.keys.total);
  for (int x = 0; x < 3; ++x) {
    CHECK(a.work.tile[x] == b.work.tile[x] && a.work.group[x] == b.work.group[x], "idx=%lld axis %d: tile %d/%d",
          (long long)idx, x, a.work.tile[x], b.work.tile[x]);
    const ns::QueryTile &qa = a.qt, &qb = b.qt;
    CHECK(qa.q0[x] == qb.q0[x] && qa.q_last[x] == qb.q_last[x] && qa.n_q[x] == qb.n_q[x] && qa.n_kv[x] == qb.n_kv[x] &&
              qa.kv_group[x] == qb.kv_group[x] && qa.q_shift[x] == qb.q_shift[x] && qa.kv_shift[x] == qb.kv_shift[x],
          "idx=%lld axis %d: query tile", (long long)idx, x);
    CHECK(qa.axis[x].n == qb.axis[x].n && qa.axis[x].K == qb.axis[x].K && qa.axis[x].s == qb.axis[x].s &&
              qa.axis[x].causal == qb.axis[x].causal,
          "idx=%lld axis %d: window axis", (long long)idx, x);
    CHECK(a.keys.start[x] == b.keys.start[x] && a.keys.count[x] == b.keys.count[x] &&
              a.keys.full_lo[x] == b.keys.full_lo[x] && a.keys.full_hi[x] == b.keys.full_hi[x],
          "idx=%lld axis %d: keys start %d/%d count %d/%d full [%d,%d]/[%d,%d]", (long long)idx, x, a.keys.start[x],
          b.keys.start[x], a.keys.count[x], b.keys.count[x], a.keys.full_lo[x], a.keys.full_hi[x],
          b.keys.full_lo[x], b.keys.full_hi[x]);
  }
  const int rows = 1 << (p.ql[0] + p.ql[1] + p.ql[2]);
  for (int r = 0; r < rows; ++r) {
    int s0[3], l0[3], s1[3], l1[3];
    ns::query_row_window(g, a.qt, r, s0, l0);
    n9::row_window_fast(g, d, b.qt, r, s1, l1);
    for (int x = 0; x < 3; ++x)
      CHECK(s0[x] == s1[x] && l0[x] == l1[x], "idx=%lld row %d axis %d: window %d+%d / %d+%d", (long long)idx, r, x,
            s0[x], l0[x], s1[x], l1[x]);
  }
}

// Split tail (sm90/split_tail.cuh): for `chunks` in [2, n0] (n0 = the walk's key tiles on axis 0),
// the chunks of restrict_key_walk are non-empty and their walks, one after the other, are the
// tile's whole walk in order (origins by key_tile_origin and by the odometer key_tile_advance), with
// the full-tile bounds unchanged.
static long g_split_walks = 0;
static void check_split(const ns::Geometry& g, const n9::WorkDecode& d, int64_t idx, std::mt19937& rng) {
  const n9::WorkContext ctx = n9::make_work_context_fast(g, d, idx, 0);
  const ns::KeyTiles& k = ctx.keys;
  const int n0 = k.count[0];
  if (n0 < 2 || k.total > 4096) return;
  static int full[4096][3];
  for (int t = 0; t < k.total; ++t) ns::key_tile_origin(g, k, t, full[t]);
  const int tries[2] = {2, 2 + int(rng() % uint32_t(n0 - 1))};
  for (int chunks : tries) {
    int pos = 0;
    for (int j = 0; j < chunks; ++j) {
      ns::KeyTiles c = k;
      n9::restrict_key_walk(g, c, j, chunks);
      CHECK(c.total >= 1 && c.count[0] >= 1, "idx=%lld chunk %d/%d: empty (n0 %d)", (long long)idx, j, chunks, n0);
      int kb[3];
      ns::key_tile_origin(g, c, 0, kb);
      for (int t = 0; t < c.total; ++t, ++pos) {
        int kt[3];
        ns::key_tile_origin(g, c, t, kt);
        bool same = pos < k.total;
        for (int a = 0; a < 3 && same; ++a) same = kt[a] == full[pos][a] && kb[a] == kt[a];
        CHECK(same, "idx=%lld chunk %d/%d step %d: origin differs from the whole walk's step %d", (long long)idx, j,
              chunks, t, pos);
        ns::key_tile_advance(g, c, kb);
      }
      for (int a = 0; a < 3; ++a)
        CHECK(c.full_lo[a] == k.full_lo[a] && c.full_hi[a] == k.full_hi[a], "idx=%lld: full bounds changed",
              (long long)idx);
    }
    CHECK(pos == k.total, "idx=%lld chunks %d: %d steps in the chunks, %d in the walk", (long long)idx, chunks, pos,
          k.total);
    ++g_split_walks;
  }
}

static void check_problem(const Problem& p, std::mt19937& rng, int max_tiles) {
  const ns::Geometry g = geometry(p);
  const n9::WorkDecode d = n9::make_work_decode(g, p.heads_per_kv);
  int rev_all = 0;
  for (int a = 0; a < p.rank; ++a)
    if (p.causal[a]) rev_all |= 1 << a;
  const int revs[3] = {0, rev_all, int(rng() % 8)};
  for (int k = 0; k < 4; ++k) check_split(g, d, int64_t(rng() % uint64_t(g.num_work)), rng);
  for (int v = 0; v < 3; ++v) {
    if (g.num_work <= max_tiles) {
      for (int64_t i = 0; i < g.num_work; ++i) compare(p, g, d, i, revs[v]);
    } else {
      compare(p, g, d, 0, revs[v]);
      compare(p, g, d, g.num_work - 1, revs[v]);
      for (int k = 0; k < max_tiles; ++k) compare(p, g, d, int64_t(rng() % uint64_t(g.num_work)), revs[v]);
    }
  }
}

int main(int argc, char** argv) {
  const int kMaxExtent[3] = {300, 40, 14};  // per rank
  std::mt19937 rng(20261127);
  auto uni = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  const int problems = argc > 1 ? std::atoi(argv[1]) : 3000;
  for (int it = 0; it < problems; ++it) {
    Problem p{};
    random_axes(p, rng, kMaxExtent);
    random_slabs(p, rng, uni(0, 2) == 0);
    random_tiles(p, rng);
    p.batch = uni(1, 3);
    p.heads_per_kv = uni(1, 3);
    p.heads = p.heads_per_kv * uni(1, 3);
    check_problem(p, rng, 400);
  }
  std::printf("random problems: %d, %ld checks, %ld failures\n", problems, g_checks, g_failures);

  // The benchmark suite's shapes (and strides / causal variants) at full size, sampled work tiles.
  struct Big {
    int rank, n[3], K[3], s[3], c[3], ql[3], kl[3], heads;
  };
  const Big big[] = {
      {1, {32768, 1, 1}, {2048, 1, 1}, {1, 1, 1}, {0, 0, 0}, {7, 0, 0}, {7, 0, 0}, 1},
      {1, {32768, 1, 1}, {2048, 1, 1}, {256, 1, 1}, {0, 0, 0}, {7, 0, 0}, {7, 0, 0}, 1},
      {1, {100003, 1, 1}, {4097, 1, 1}, {999, 1, 1}, {1, 0, 0}, {7, 0, 0}, {7, 0, 0}, 3},
      {2, {256, 256, 1}, {80, 80, 1}, {1, 1, 1}, {0, 0, 0}, {3, 4, 0}, {3, 4, 0}, 24},
      {2, {256, 256, 1}, {80, 80, 1}, {16, 16, 1}, {0, 0, 0}, {4, 3, 0}, {4, 3, 0}, 24},
      {3, {30, 48, 80}, {18, 24, 24}, {1, 1, 1}, {0, 0, 0}, {1, 3, 3}, {1, 3, 3}, 24},
      {3, {30, 48, 80}, {18, 24, 24}, {16, 8, 8}, {0, 0, 0}, {1, 3, 3}, {2, 2, 3}, 24},
      {3, {16, 44, 80}, {8, 16, 16}, {1, 1, 1}, {1, 0, 0}, {0, 3, 4}, {1, 2, 4}, 32},
  };
  const long before = g_checks;
  for (const Big& b : big) {
    Problem p{};
    p.rank = b.rank;
    for (int a = 0; a < 3; ++a) {
      p.n[a] = b.n[a];
      p.K[a] = b.K[a];
      p.s[a] = b.s[a];
      p.causal[a] = b.c[a] != 0;
      p.ql[a] = b.ql[a];
      p.kl[a] = b.kl[a];
    }
    random_slabs(p, rng, false);
    p.batch = 2;
    p.heads = b.heads;
    p.heads_per_kv = b.heads % 3 == 0 ? 3 : 1;
    check_problem(p, rng, 300);
    random_slabs(p, rng, true);
    check_problem(p, rng, 300);
  }
  std::printf("suite shapes: %ld checks, %ld failures\n", g_checks - before, g_failures);
  std::printf("split-tail walks checked: %ld\n", g_split_walks);
  CHECK(g_split_walks > 1000, "only %ld split-tail walks checked", g_split_walks);
  if (g_failures == 0) std::printf("OK (%ld checks)\n", g_checks);
  return g_failures == 0 ? 0 : 1;
}
