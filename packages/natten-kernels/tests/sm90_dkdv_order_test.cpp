// CPU check of the SM90 dK / dV kernel's work order (csrc/kernels/sm90/bwd_dkdv_order.hpp): the
// host's separable visit counts and sort against brute force (every key tile's walk from
// decode_kv_work, make_key_tile and make_query_tiles_for_key, the functions the kernel walks with,
// then a stable sort by visits, most first) on random dilation-1 problems (rank 1-3, odd extents,
// even and odd kernels, stride, per-axis causal, query / key slabs, tile shapes, batch and kv
// heads) and on the benchmark suite's 1-D rows; the per-thread cache (hits, eviction, distinct
// geometries); and the rule that decides when the order is used (dkdv_order_tiles).
//
// Build: g++ -std=c++17 -O2 -x c++ -Icsrc/include -Icsrc/kernels tests/sm90_dkdv_order_test.cpp
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "natten/window.cuh"
#include "sm90/bwd_dkdv_order.hpp"

namespace nw = natten::window;
namespace ns = natten::sm80;
namespace n9 = natten::sm90;

#include "cpu_check.hpp"
#include "cpu_random_problem.hpp"

struct Problem : ProblemAxes {
  int batch, heads_kv;
};

static void make(const Problem& p, ns::Geometry& g, ns::KvGeometry& kg) {
  g = problem_geometry(p, p.heads_kv);
  kg = ns::KvGeometry{};
  ns::kv_geometry_finalize(g, p.heads_kv, kg);
}

// Brute force: tile order of one (batch, kv head), as the kernel's own walk counts visits.
static std::vector<int> brute_order(const ns::Geometry& g, const ns::KvGeometry& kg, int n) {
  std::vector<int64_t> visits(n);
  std::vector<int> idx(n);
  for (int s = 0; s < n; ++s) {
    const ns::KvWorkTile w = ns::decode_kv_work(g, kg, s);
    ns::KeyTile kt;
    visits[s] = ns::make_key_tile(g, w, kt) ? ns::make_query_tiles_for_key(g, kt).total : 0;
    idx[s] = s;
  }
  std::stable_sort(idx.begin(), idx.end(), [&](int x, int y) { return visits[x] > visits[y]; });
  return idx;
}

static long g_ordered = 0;
static void check(const Problem& p, const char* what) {
  ns::Geometry g;
  ns::KvGeometry kg;
  make(p, g, kg);
  int n = 1;
  for (int a = 0; a < 3; ++a) n *= kg.splits[a] * kg.groups[a];
  if (n < 1 || n > n9::kDkdvOrderMaxTiles) return;
  const std::vector<int> want = brute_order(g, kg, n);
  uint16_t got[n9::kDkdvOrderMaxTiles], cached[n9::kDkdvOrderMaxTiles];
  n9::dkdv_work_order(g, kg, n, got);
  n9::dkdv_work_order_cached(g, kg, n, cached);
  std::vector<int> seen(n, 0);
  for (int s = 0; s < n; ++s) {
    CHECK(got[s] == want[s], "%s: n=%d rank %d: order[%d] = %d, brute force %d", what, n, s, s, int(got[s]), want[s]);
    CHECK(cached[s] == got[s], "%s: cached order[%d] = %d, computed %d", what, s, int(cached[s]), int(got[s]));
    if (got[s] < n) ++seen[got[s]];
  }
  for (int s = 0; s < n; ++s) CHECK(seen[s] == 1, "%s: tile %d appears %d times", what, s, seen[s]);
  ++g_ordered;
}

static void check_rule() {
  ns::KvGeometry kg{};
  for (int a = 0; a < 3; ++a) kg.kv_tiles[a] = kg.splits[a] = kg.groups[a] = 1;
  kg.kv_tiles[0] = kg.splits[0] = 256;
  kg.heads_kv = 1;
  const struct {
    int64_t num_work, grid;
    int want;
  } cases[] = {{256, 132, 256}, {256, 256, 0}, {256, 300, 0}, {528, 132, 256}, {529, 132, 0}, {133, 132, 256}};
  for (const auto& c : cases) {
    kg.num_work = c.num_work;
    CHECK(n9::dkdv_order_tiles(kg, c.grid) == c.want, "rule: work %lld on %lld CTAs: %d, want %d",
          (long long)c.num_work, (long long)c.grid, n9::dkdv_order_tiles(kg, c.grid), c.want);
  }
  kg.num_work = 256;
  kg.groups[1] = 2;  // dilation > 1: not ordered
  CHECK(n9::dkdv_order_tiles(kg, 132) == 0, "rule: two dilation groups ordered");
  kg.groups[1] = 1;
  kg.splits[0] = kg.kv_tiles[0] = 1025;  // more key tiles than the order holds
  kg.num_work = 1025;
  CHECK(n9::dkdv_order_tiles(kg, 300) == 0, "rule: 1025 tiles ordered");
  kg.splits[0] = kg.kv_tiles[0] = 1;  // one key tile per (batch, kv head)
  kg.heads_kv = kg.num_work = 200;
  CHECK(n9::dkdv_order_tiles(kg, 132) == 0, "rule: one tile per (batch, kv head) ordered");
}

int main(int argc, char** argv) {
  const int kMaxExtent[3] = {3000, 60, 16};  // per rank
  std::mt19937 rng(20261128);
  auto uni = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  const int problems = argc > 1 ? std::atoi(argv[1]) : 3000;
  for (int it = 0; it < problems; ++it) {
    Problem p{};
    random_axes(p, rng, kMaxExtent);
    random_slabs(p, rng, uni(0, 2) == 0);
    random_tiles(p, rng);
    p.batch = uni(1, 2);
    p.heads_kv = uni(1, 3);
    check(p, "random");
  }
  std::printf("random problems: %d (%ld ordered), %ld checks, %ld failures\n", problems, g_ordered, g_checks,
              g_failures);

  // The suite's 1-D rows with the dK / dV kernel's tiles (64-token query, 128-token key tiles),
  // causal and other variants: 12 geometries, more than the cache's 8 entries, revisited.
  const int rows[][3] = {{2048, 1, 0}, {2048, 256, 0}, {2048, 1, 1},  {1000, 7, 0},  {3001, 64, 1}, {2048, 16, 0},
                         {4096, 1, 0}, {4096, 512, 1}, {513, 1, 0},   {999, 999, 0}, {2048, 2, 1},  {777, 5, 0}};
  for (int round = 0; round < 2; ++round) {
    for (const auto& r : rows) {
      Problem p{};
      p.rank = 1;
      p.n[0] = 32768;
      p.K[0] = r[0];
      p.s[0] = r[1];
      p.causal[0] = r[2] != 0;
      for (int a = 1; a < 3; ++a) {
        p.n[a] = p.K[a] = p.s[a] = 1;
        p.causal[a] = false;
      }
      random_slabs(p, rng, false);
      p.ql[0] = 6;
      p.kl[0] = 7;
      p.batch = 1;
      p.heads_kv = 1;
      check(p, "1-D suite row");
    }
  }
  check_rule();
  std::printf("%ld checks, %ld failures\n", g_checks, g_failures);
  if (g_failures == 0) std::printf("OK\n");
  return g_failures == 0 ? 0 : 1;
}
