// CPU check of the rotated key walks of the Hopper forward / dQ kernels
// (csrc/kernels/sm80/tile_scheduler.cuh: walk_origin, walk_advance, walk_rotation)
// on random dilation-1 problems (rank 1-3, odd extents, stride, per-axis causal, query / key slabs,
// every tile shape) and on the benchmark suite's shapes:
//   - plain (rotate 0): step t visits sm80::key_tile_origin(t), the order every other kernel uses;
//   - rotated: the walk visits every key tile of the box exactly once, in the odometer order on the
//     inner axes, and at outer step u the axis-0 tile whose key-tile index is congruent to u modulo
//     the box's axis-0 tile count;
//   - the split tail's chunks (restrict_key_walk) walked rotated cover the whole walk once;
//   - the reason for the rotation, on 1d-32k-s256: the first round of the static order (132 CTAs)
//     reads at most 10 distinct key tiles per step rotated, against 60 or more in the plain order.
//
// Build: g++ -std=c++17 -O2 -x c++ -Icsrc/include -Icsrc/kernels tests/sm90_walk_order_test.cpp
#include <cstdint>
#include <cstdio>
#include <random>
#include <set>
#include <tuple>
#include <vector>

#include "natten/window.cuh"
#include "sm90/work_context.cuh"

namespace ns = natten::sm80;
namespace n9 = natten::sm90;

#include "cpu_check.hpp"
#include "cpu_random_problem.hpp"

struct Problem : ProblemAxes {
  int batch, heads;
};

using Origin = std::tuple<int, int, int>;

static std::vector<Origin> walk(const ns::Geometry& g, const ns::KeyTiles& k, int rotate) {
  std::vector<Origin> v;
  int kb[3];
  n9::walk_origin(g, k, rotate, kb);
  for (int t = 0; t < k.total; ++t) {
    v.emplace_back(kb[0], kb[1], kb[2]);
    n9::walk_advance(g, k, kb);
  }
  return v;
}

static int floor_mod(int x, int n) { return ((x % n) + n) % n; }

static void check_tile(const ns::Geometry& g, const ns::KeyTiles& k, const char* what) {
  const std::vector<Origin> plain = walk(g, k, 0), rot = walk(g, k, 1);
  bool same = true;
  for (int t = 0; t < k.total && same; ++t) {
    int kb[3];
    ns::key_tile_origin(g, k, t, kb);
    same = plain[size_t(t)] == Origin(kb[0], kb[1], kb[2]);
  }
  CHECK(same, "%s: the plain walk is not key_tile_origin's order", what);
  CHECK(std::set<Origin>(rot.begin(), rot.end()) == std::set<Origin>(plain.begin(), plain.end()) &&
            rot.size() == plain.size(),
        "%s: the rotated walk is not a permutation of the box (%zu steps)", what, rot.size());
  const int n0 = k.count[0], inner = k.total / n0;
  bool aligned = true, inner_order = true;
  for (int t = 0; t < k.total; ++t) {
    const int u = t / inner;
    aligned = aligned && floor_mod(std::get<0>(rot[size_t(t)]) >> g.kv_log2[0], n0) == u % n0;
    inner_order = inner_order && std::get<1>(rot[size_t(t)]) == std::get<1>(plain[size_t(t)]) &&
                  std::get<2>(rot[size_t(t)]) == std::get<2>(plain[size_t(t)]);
  }
  // (Key-tile index: the origin's floor on the kt grid, start[0] >> log2 + j for the box's tile j.)
  CHECK(aligned, "%s: rotated step's axis-0 tile index is not the step modulo %d (start %d)", what, n0, k.start[0]);
  CHECK(inner_order, "%s: rotated walk changed the inner axes' order", what);
  // The split tail's chunks of axis 0, each walked rotated, partition the walk.
  const int chunks = std::min(n0, 1 + ((k.start[0] % 4) + 4) % 4);  // 1..4, at most n0 (the host's cap)
  std::multiset<Origin> cover;
  for (int c = 0; c < chunks; ++c) {
    ns::KeyTiles kc = k;
    n9::restrict_key_walk(g, kc, c, chunks);
    for (const Origin& o : walk(g, kc, 1)) cover.insert(o);
  }
  CHECK(cover == std::multiset<Origin>(plain.begin(), plain.end()), "%s: %d chunks, rotated, do not cover the walk",
        what, chunks);
}

static void check(const ns::Geometry& g, const char* what) {
  const n9::WorkDecode d = n9::make_work_decode(g, 1);
  for (int64_t i = 0; i < g.num_work; ++i) check_tile(g, n9::make_work_context_fast(g, d, i).keys, what);
}

// Distinct axis-0 key tiles read at each of the first `steps` steps by work tiles [0, ctas).
static int max_distinct(const ns::Geometry& g, int ctas, int steps, int rotate) {
  const n9::WorkDecode d = n9::make_work_decode(g, 1);
  std::vector<std::vector<Origin>> walks;
  for (int i = 0; i < ctas && i < g.num_work; ++i) walks.push_back(walk(g, n9::make_work_context_fast(g, d, i).keys, rotate));
  int most = 0;
  for (int t = 0; t < steps; ++t) {
    std::set<int> tiles;
    for (const auto& w : walks)
      if (t < int(w.size())) tiles.insert(std::get<0>(w[size_t(t)]));
    most = std::max(most, int(tiles.size()));
  }
  return most;
}

int main() {
  const int kMaxExtent[3] = {600, 64, 20};
  std::mt19937 rng(20261129);
  auto uni = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  char what[200];
  int problems = 0;
  for (int it = 0; it < 2000; ++it) {
    Problem p{};
    random_axes(p, rng, kMaxExtent);
    random_slabs(p, rng, uni(0, 3) == 0);
    random_tiles(p, rng);
    p.batch = 1;
    p.heads = 1;
    const ns::Geometry g = problem_geometry(p, 1);
    if (g.num_work > 4000) continue;
    std::snprintf(what, sizeof(what), "problem %d: rank %d n %d %d %d K %d %d %d s %d %d %d tiles 2^%d 2^%d 2^%d", it,
                  p.rank, p.n[0], p.n[1], p.n[2], p.K[0], p.K[1], p.K[2], p.s[0], p.s[1], p.s[2], p.kl[0], p.kl[1],
                  p.kl[2]);
    check(g, what);
    ++problems;
  }
  std::printf("random problems: %d, %ld checks, %ld failures\n", problems, g_checks, g_failures);

  // 1d-32k-s256 and 1d-32k: every work tile, and the first round's distinct key tiles per step.
  for (int stride : {256, 1}) {
    Problem p{};
    p.rank = 1;
    for (int a = 0; a < 3; ++a) {
      p.n[a] = p.nq[a] = p.nk[a] = a == 0 ? 32768 : 1;
      p.K[a] = a == 0 ? 2048 : 1;
      p.s[a] = a == 0 ? stride : 1;
      p.causal[a] = false;
      p.ql[a] = p.kl[a] = a == 0 ? 7 : 0;
    }
    p.batch = 1;
    p.heads = 1;
    const ns::Geometry g = problem_geometry(p, 1);
    std::snprintf(what, sizeof(what), "1d-32k stride %d", stride);
    check(g, what);
    const int plain = max_distinct(g, 132, 4, 0), rot = max_distinct(g, 132, 4, 1);
    std::printf("%s: first round, most distinct key tiles in one of the first 4 steps: plain %d, rotated %d\n", what,
                plain, rot);
    CHECK(rot <= 10 && plain >= 60, "%s: distinct key tiles per step plain %d, rotated %d", what, plain, rot);
  }
  std::printf("total: %ld checks, %ld failures\n", g_checks, g_failures);
  if (g_failures == 0) std::printf("OK\n");
  return g_failures == 0 ? 0 : 1;
}
