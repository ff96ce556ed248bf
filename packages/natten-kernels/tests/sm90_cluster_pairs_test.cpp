// CPU check of the SM90 forward's cluster pairs (csrc/kernels/sm90/work_context.cuh:
// cluster_pair_axis, pair_member, ordered_tile) against their definition on random dilation-1
// problems (rank 1-3, odd extents, strides that are multiples of the query tile half the time so
// that pairs exist, per-axis causal, query / key slabs, every tile shape, batch and heads) and on the
// benchmark suite's shapes: the axis returned is the fastest one (last axis first) whose query tiles
// 2 j, 2 j + 1 have the same key walk for every work tile (compared as whole work contexts, all
// axes), or -1 when none has; with that axis, pair_member maps the pairs one to one onto the work
// tiles, both members of a pair are tiles 2 j and 2 j + 1 of one (batch, head) with the same key
// walk, and ordered_tile is pair_member in the launch order (member i % 2 of pair i / 2).
//
// Build: g++ -std=c++17 -O2 -x c++ -Icsrc/include -Icsrc/kernels tests/sm90_cluster_pairs_test.cpp
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "natten/window.cuh"
#include "sm90/work_context.cuh"

namespace nw = natten::window;
namespace ns = natten::sm80;
namespace n9 = natten::sm90;

#include "cpu_check.hpp"
#include "cpu_random_problem.hpp"

struct Problem : ProblemAxes {
  int batch, heads;
};

// The fields of FnaSm90Params that pair_member / ordered_tile read.
struct PairParams {
  int pair_half;
  nw::FastDiv pair_half_div;
  int pair_inner;
  nw::FastDiv pair_inner_div;
};

static bool same_walk(const ns::KeyTiles& a, const ns::KeyTiles& b) {
  bool same = a.total == b.total;
  for (int x = 0; x < 3; ++x) same = same && a.start[x] == b.start[x] && a.count[x] == b.count[x];
  return same;
}

// The definition: the fastest axis with an even number (>= 2) of query tiles on which every work
// tile whose tile index there is even has the key walk of its neighbour at index + 1.
static int expected_axis(const ns::Geometry& g, const n9::WorkDecode& d) {
  int64_t inner = 1;
  for (int a = 2; a >= 0; inner *= g.q_tiles[a], --a) {
    const int n = g.q_tiles[a];
    if (n < 2 || n % 2 != 0) continue;
    bool all = true;
    for (int64_t i = 0; all && i < g.num_work; ++i) {
      const n9::WorkContext c = n9::make_work_context_fast(g, d, i);
      if (c.work.tile[a] % 2 != 0) continue;
      all = same_walk(c.keys, n9::make_work_context_fast(g, d, i + inner).keys);
    }
    if (all) return a;
  }
  return -1;
}

static void check(const ns::Geometry& g, const char* what, int want_axis = -2) {
  const n9::WorkDecode d = n9::make_work_decode(g, 1);
  const int axis = n9::cluster_pair_axis(g, d);
  const int expected = expected_axis(g, d);
  CHECK(axis == expected, "%s: pair axis %d, expected %d", what, axis, expected);
  if (want_axis != -2) CHECK(axis == want_axis, "%s: pair axis %d, the suite row needs %d", what, axis, want_axis);
  if (axis < 0) return;
  PairParams p{};
  p.pair_half = g.q_tiles[axis] / 2;
  p.pair_inner = 1;
  for (int b = axis + 1; b < 3; ++b) p.pair_inner *= g.q_tiles[b];
  p.pair_half_div = nw::make_fast_div(p.pair_half);
  p.pair_inner_div = nw::make_fast_div(p.pair_inner);
  std::vector<int> hits(size_t(g.num_work), 0);
  for (int64_t pair = 0; pair < g.num_work / 2; ++pair) {
    const int64_t t0 = n9::pair_member(p, pair, 0), t1 = n9::pair_member(p, pair, 1);
    const bool in = t0 >= 0 && t0 < g.num_work && t1 >= 0 && t1 < g.num_work;
    CHECK(in, "%s: pair %lld -> tiles %lld %lld of %lld", what, (long long)pair, (long long)t0, (long long)t1,
          (long long)g.num_work);
    if (!in) continue;
    ++hits[size_t(t0)];
    ++hits[size_t(t1)];
    CHECK(n9::ordered_tile(p, 2 * pair) == t0 && n9::ordered_tile(p, 2 * pair + 1) == t1,
          "%s: ordered_tile of pair %lld", what, (long long)pair);
    const n9::WorkContext a = n9::make_work_context_fast(g, d, t0), b = n9::make_work_context_fast(g, d, t1);
    bool tiles = a.work.batch == b.work.batch && a.work.head == b.work.head && a.work.tile[axis] % 2 == 0 &&
                 b.work.tile[axis] == a.work.tile[axis] + 1;
    for (int x = 0; x < 3; ++x) tiles = tiles && (x == axis || a.work.tile[x] == b.work.tile[x]);
    CHECK(tiles, "%s: pair %lld -> tiles %lld %lld are not 2j, 2j+1 of one axis-%d row", what, (long long)pair,
          (long long)t0, (long long)t1, axis);
    CHECK(same_walk(a.keys, b.keys), "%s: pair %lld -> tiles %lld %lld walk different keys", what, (long long)pair,
          (long long)t0, (long long)t1);
  }
  for (int64_t t = 0; t < g.num_work; ++t)
    CHECK(hits[size_t(t)] == 1, "%s: tile %lld in %d pairs", what, (long long)t, hits[size_t(t)]);
}

int main() {
  const int kMaxExtent[3] = {600, 64, 20};
  std::mt19937 rng(20261128);
  auto uni = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  char what[200];
  int problems = 0, paired = 0;
  for (int it = 0; it < 3000; ++it) {
    Problem p{};
    random_axes(p, rng, kMaxExtent);
    random_slabs(p, rng, uni(0, 3) == 0);
    random_tiles(p, rng);
    // Half the time a stride that holds two or more query tiles on some axis, so that pairs exist.
    if (uni(0, 1) == 0) {
      const int a = uni(0, p.rank - 1);
      const int s = (1 << p.ql[a]) * (2 << uni(0, 2));
      if (s <= p.K[a]) p.s[a] = s;
    }
    p.batch = uni(1, 2);
    p.heads = uni(1, 3);
    const ns::Geometry g = problem_geometry(p, p.heads);
    if (g.num_work > 20000) continue;
    std::snprintf(what, sizeof(what), "problem %d: rank %d n %d %d %d K %d %d %d s %d %d %d tiles 2^%d 2^%d 2^%d", it,
                  p.rank, p.n[0], p.n[1], p.n[2], p.K[0], p.K[1], p.K[2], p.s[0], p.s[1], p.s[2], p.ql[0], p.ql[1],
                  p.ql[2]);
    const long failures = g_failures;
    check(g, what);
    ++problems;
    paired += n9::cluster_pair_axis(g, n9::make_work_decode(g, 1)) >= 0 && g_failures == failures;
  }
  std::printf("random problems: %d (%d paired), %ld checks, %ld failures\n", problems, paired, g_checks, g_failures);
  CHECK(paired >= problems / 10, "only %d of %d random problems paired: the generator misses the case", paired,
        problems);

  // The suite's shapes (one head): which pair and on which axis (flux-4k-gna's 8 x 16 tiles pair on
  // axis 0, the 1-D stride-256 row on axis 0, dense attention on axis 0; stride 1 and hunyuan-gna's
  // 2 x 8 x 8 tiles do not).
  struct Big {
    const char* id;
    int rank, n[3], K[3], s[3], ql[3], kl[3], axis;
  };
  const Big big[] = {
      {"1d-32k", 1, {32768, 1, 1}, {2048, 1, 1}, {1, 1, 1}, {7, 0, 0}, {7, 0, 0}, -1},
      {"1d-32k-s256", 1, {32768, 1, 1}, {2048, 1, 1}, {256, 1, 1}, {7, 0, 0}, {7, 0, 0}, 0},
      {"dense-8192", 1, {8192, 1, 1}, {8192, 1, 1}, {1, 1, 1}, {7, 0, 0}, {7, 0, 0}, 0},
      {"flux-4k", 2, {256, 256, 1}, {80, 80, 1}, {1, 1, 1}, {3, 4, 0}, {3, 4, 0}, -1},
      {"flux-4k-gna", 2, {256, 256, 1}, {80, 80, 1}, {16, 16, 1}, {3, 4, 0}, {3, 4, 0}, 0},
      {"hunyuan-gna", 3, {30, 48, 80}, {18, 24, 24}, {16, 8, 8}, {1, 3, 3}, {1, 3, 3}, -1},
  };
  for (const Big& b : big) {
    Problem p{};
    p.rank = b.rank;
    for (int a = 0; a < 3; ++a) {
      p.n[a] = p.nq[a] = p.nk[a] = b.n[a];
      p.K[a] = b.K[a];
      p.s[a] = b.s[a];
      p.causal[a] = false;
      p.ql[a] = b.ql[a];
      p.kl[a] = b.kl[a];
    }
    p.batch = 1;
    p.heads = 1;
    check(problem_geometry(p, 1), b.id, b.axis);
  }
  std::printf("total: %ld checks, %ld failures\n", g_checks, g_failures);
  if (g_failures == 0) std::printf("OK\n");
  return g_failures == 0 ? 0 : 1;
}
