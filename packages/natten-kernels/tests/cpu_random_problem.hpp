// Random problem parts shared by the SM90 CPU tests (sm90_work_context_test.cpp,
// sm90_dkdv_order_test.cpp): rank and axes, query / key slabs and tile shapes for a Problem with
// fields rank, n / K / s / causal (per axis), q0 / nq / k0 / nk (slabs) and ql / kl (tile shapes,
// log2).
#pragma once

#include <algorithm>
#include <random>

#include "natten/window.cuh"
#include "sm80/tile_scheduler.cuh"

// The axes, slabs and tile shapes of a random problem; each test adds its batch and head fields.
struct ProblemAxes {
  int rank;
  int n[3], K[3], s[3];
  bool causal[3];
  int q0[3], nq[3], k0[3], nk[3];
  int ql[3], kl[3];
};

// Rank 1-3 and per axis: extent in [2, max_ext[rank - 1]], kernel in [2, extent], stride 1 (one
// time in three) or in [1, kernel], causal one time in three; axes past the rank are 1 / 1 / 1.
template <class Problem>
void random_axes(Problem& p, std::mt19937& rng, const int max_ext[3]) {
  auto uni = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  p.rank = uni(1, 3);
  for (int a = 0; a < 3; ++a) {
    if (a >= p.rank) {
      p.n[a] = p.K[a] = p.s[a] = 1;
      p.causal[a] = false;
      continue;
    }
    p.n[a] = uni(2, max_ext[p.rank - 1]);
    p.K[a] = uni(2, p.n[a]);
    p.s[a] = uni(0, 2) == 0 ? 1 : uni(1, p.K[a]);
    p.causal[a] = uni(0, 2) == 0;
  }
}

// Query and key slabs: a random query slab per axis, the key slab the smallest one holding every
// key it attends, grown by a random margin inside the grid (the host's rule: the key slab holds
// every attended key). Without a region: both slabs are the whole grid.
template <class Problem>
void random_slabs(Problem& p, std::mt19937& rng, bool region) {
  auto uni = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  for (int a = 0; a < 3; ++a) {
    if (!region) {
      p.q0[a] = p.k0[a] = 0;
      p.nq[a] = p.nk[a] = p.n[a];
      continue;
    }
    const int qb = uni(0, p.n[a] - 1), qe = uni(qb + 1, p.n[a]);
    int lo, hi;
    natten::window::slab_key_range(p.n[a], p.K[a], p.s[a], 1, p.causal[a], qb, qe, lo, hi);
    lo = std::max(0, lo - uni(0, 2));
    hi = std::min(p.n[a], hi + uni(0, 2));
    p.q0[a] = qb;
    p.nq[a] = qe - qb;
    p.k0[a] = lo;
    p.nk[a] = hi - lo;
  }
}

// Query and key tile shapes: 2^0 .. 2^7 tokens each, split at random over the first `rank` axes.
template <class Problem>
void random_tiles(Problem& p, std::mt19937& rng) {
  auto uni = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  for (int pass = 0; pass < 2; ++pass) {
    int* l = pass == 0 ? p.ql : p.kl;
    int left = uni(0, 7);
    for (int a = 0; a < 3; ++a) l[a] = 0;
    for (int a = 0; a < p.rank; ++a) {
      l[a] = a == p.rank - 1 ? left : uni(0, left);
      left -= l[a];
    }
  }
}

// The dilation-1 geometry of a Problem with `heads` heads (finalized: query tiles, groups, work).
template <class Problem>
natten::sm80::Geometry problem_geometry(const Problem& p, int64_t heads) {
  natten::sm80::Geometry g{};
  for (int a = 0; a < 3; ++a) {
    g.extent[a] = p.n[a];
    g.q_extent[a] = p.nq[a];
    g.kv_extent[a] = p.nk[a];
    g.q_origin[a] = p.q0[a];
    g.kv_origin[a] = p.k0[a];
    g.kernel[a] = p.K[a];
    g.stride[a] = p.s[a];
    g.dilation[a] = 1;
    g.causal[a] = p.causal[a] ? 1 : 0;
    g.q_log2[a] = p.ql[a];
    g.kv_log2[a] = p.kl[a];
  }
  g.batch = p.batch;
  g.heads = heads;
  natten::sm80::geometry_finalize(g);
  return g;
}
