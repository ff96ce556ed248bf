// CPU check of the SM90 dK / dV kernel's visit-table layout (csrc/kernels/sm90/bwd_visit_tables.hpp:
// table_entry_offset, the entry -> token map the tables kernel writes by) against the layout's
// definition (entry_of below: row (batch, head, query tile row-major over the tiles per axis), column
// = the token's place in the tile, last axis fastest) on random dilation-1 problems (rank 1-3, odd
// extents, query slabs of a larger grid, every split of the 64-token query tile over the axes, batch
// and heads): every entry's token maps back to the entry, every token of the query slab has exactly
// one entry, and the other entries (padding of partial tiles) exist exactly when a tile is partial.
//
// Build: g++ -std=c++17 -O2 -x c++ -Icsrc/include -Icsrc/kernels tests/sm90_visit_tables_test.cpp
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "natten/window.cuh"
#include "sm90/bwd_visit_tables.hpp"

namespace ns = natten::sm80;
namespace n9 = natten::sm90;

#include "cpu_check.hpp"
#include "cpu_random_problem.hpp"

struct Problem : ProblemAxes {
  int batch, heads;
};

// The layout's definition: the entry of query token x (query slab coordinates) of (b, h).
static int64_t entry_of(const ns::Geometry& g, int64_t q_tiles_total, int64_t b, int64_t h, const int x[3]) {
  int64_t tile = 0, col = 0;
  for (int a = 0; a < 3; ++a) {
    const int size = 1 << g.q_log2[a];
    tile = tile * g.q_tiles[a] + x[a] / size;
    col = col * size + x[a] % size;
  }
  return ((b * g.heads + h) * q_tiles_total + tile) * 64 + col;
}

static void check(const Problem& p, const char* what) {
  const ns::Geometry g = problem_geometry(p, p.heads);
  int64_t q_tiles_total = 1, tokens = 1;
  for (int a = 0; a < 3; ++a) {
    q_tiles_total *= g.q_tiles[a];
    tokens *= g.q_extent[a];
  }
  // a compact [B, H, X, Y, Z] tensor over the query slab (as the delta workspace)
  const int64_t ss[3] = {int64_t(g.q_extent[1]) * g.q_extent[2], g.q_extent[2], 1};
  const int64_t sh = tokens, sb = tokens * p.heads;
  const int64_t entries = int64_t(p.batch) * p.heads * q_tiles_total * 64;
  std::vector<int> hits(size_t(entries), 0);
  int64_t valid = 0;
  for (int64_t i = 0; i < entries; ++i) {
    int64_t off = -1;
    if (!n9::table_entry_offset(g, q_tiles_total, i, sb, sh, ss, off)) continue;
    ++valid;
    int64_t r = off;
    const int64_t b = r / sb;
    r %= sb;
    const int64_t h = r / sh;
    r %= sh;
    const int x[3] = {int(r / ss[0]), int(r % ss[0] / ss[1]), int(r % ss[1])};
    CHECK(entry_of(g, q_tiles_total, b, h, x) == i, "%s: entry %lld -> token (%lld, %lld, %d %d %d)",
          what, (long long)i, (long long)b, (long long)h, x[0], x[1], x[2]);
  }
  CHECK(valid == int64_t(p.batch) * p.heads * tokens, "%s: %lld valid entries for %lld tokens", what,
        (long long)valid, (long long)(int64_t(p.batch) * p.heads * tokens));
  bool partial = false;
  for (int a = 0; a < 3; ++a) partial = partial || g.q_extent[a] % (1 << g.q_log2[a]) != 0;
  CHECK(partial == (valid < entries), "%s: partial tiles %d with %lld of %lld entries valid", what, int(partial),
        (long long)valid, (long long)entries);
  for (int64_t b = 0; b < p.batch; ++b)
    for (int64_t h = 0; h < p.heads; ++h)
      for (int x0 = 0; x0 < g.q_extent[0]; ++x0)
        for (int x1 = 0; x1 < g.q_extent[1]; ++x1)
          for (int x2 = 0; x2 < g.q_extent[2]; ++x2) {
            const int x[3] = {x0, x1, x2};
            const int64_t e = entry_of(g, q_tiles_total, b, h, x);
            const bool in = e >= 0 && e < entries;
            CHECK(in, "%s: token (%lld, %lld, %d %d %d) -> entry %lld of %lld", what, (long long)b, (long long)h,
                  x0, x1, x2, (long long)e, (long long)entries);
            if (!in) continue;
            ++hits[size_t(e)];
            int64_t off = -1;
            const bool ok = n9::table_entry_offset(g, q_tiles_total, e, sb, sh, ss, off);
            CHECK(ok && off == b * sb + h * sh + x0 * ss[0] + x1 * ss[1] + x2 * ss[2],
                  "%s: token (%lld, %lld, %d %d %d) -> entry %lld -> offset %lld", what, (long long)b, (long long)h,
                  x0, x1, x2, (long long)e, (long long)off);
          }
  for (int64_t e = 0; e < entries; ++e) CHECK(hits[size_t(e)] <= 1, "%s: entry %lld hit %d times", what, (long long)e,
                                              hits[size_t(e)]);
}

int main() {
  std::mt19937 rng(20261128);
  auto uni = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  const int max_ext[3] = {300, 40, 14};
  char what[160];
  int problems = 0;
  for (int it = 0; it < 2000; ++it) {
    Problem p{};
    random_axes(p, rng, max_ext);
    random_slabs(p, rng, uni(0, 2) == 0);
    // the dK / dV kernel's 64-token query tile, split at random over the rank's axes
    int left = 6;
    for (int a = 0; a < 3; ++a) p.ql[a] = p.kl[a] = 0;
    for (int a = 0; a < p.rank; ++a) {
      p.ql[a] = a == p.rank - 1 ? left : uni(0, left);
      left -= p.ql[a];
    }
    p.kl[p.rank - 1] = 7;
    p.batch = uni(1, 3);
    p.heads = uni(1, 3);
    std::snprintf(what, sizeof(what), "problem %d: rank %d q slab %d %d %d tiles 2^%d 2^%d 2^%d b %d h %d", it,
                  p.rank, p.nq[0], p.nq[1], p.nq[2], p.ql[0], p.ql[1], p.ql[2], p.batch, p.heads);
    check(p, what);
    ++problems;
  }
  std::printf("%d problems, %ld checks, %ld failures\n", problems, g_checks, g_failures);
  if (g_failures == 0) std::printf("OK\n");
  return g_failures == 0 ? 0 : 1;
}
