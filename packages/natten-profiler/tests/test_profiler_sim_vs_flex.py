"""The simulator's tile counts equal what a kernel built with the same tiles visits: natten's
flex-fna block masks (tile pairs it visits, and those it runs without mask arithmetic)."""

import random

import pytest

from natten.backends import flex
from natten.window import WindowSpec
from natten_profiler.simulator import simulate


def _cases(n: int, seed: int = 2026):
    rng = random.Random(seed)
    for _ in range(n):
        rank = rng.choice([1, 2, 3])
        shape = tuple(rng.randint(3, {1: 60, 2: 20, 3: 10}[rank]) for _ in range(rank))
        ks = tuple(rng.randint(2, s) for s in shape)
        dl = tuple(rng.randint(1, max(1, s // k)) if rng.random() < 0.3 else 1 for s, k in zip(shape, ks))
        st = tuple(rng.randint(1, k) if rng.random() < 0.5 else 1 for k in ks)
        ca = tuple(rng.random() < 0.3 for _ in ks)
        qt = tuple(rng.choice([1, 2, 4, 8]) for _ in shape)
        kt = tuple(rng.choice([1, 2, 4, 8]) for _ in shape)
        yield shape, ks, st, dl, ca, qt, kt


@pytest.mark.parametrize("case", list(_cases(60)), ids=lambda c: f"{c[0]}-k{c[1]}-s{c[2]}-d{c[3]}-c{c[4]}-t{c[5]}/{c[6]}")
def test_simulator_counts_equal_flex_block_masks(case):
    shape, ks, st, dl, ca, qt, kt = case
    sim = simulate(shape, ks, st, dl, ca, q_tile=qt, kv_tile=kt)
    m = tuple(-(-n // d) for n, d in zip(shape, dl))
    q_ext = tuple(-(-m[a] // qt[a]) * qt[a] for a in range(len(shape)))
    kv_ext = tuple(-(-m[a] // kt[a]) * kt[a] for a in range(len(shape)))
    any_, full = flex._na_block_relations(m, shape, ks, st, dl, ca, qt, q_ext, kt, kv_ext)
    # flex pads every dilation group to the largest group's tile grid; padded tiles hold no query
    # and are never visited, so the totals compare directly.
    even_groups = all(n % d == 0 for n, d in zip(shape, dl))
    if even_groups:
        assert sim.visited_tiles == int(any_.sum())
    else:
        # flex pads every dilation group to the largest group's extent and gives each padded
        # query row one key (so no row is empty); those padded tiles are visited by flex only.
        assert sim.visited_tiles <= int(any_.sum())
    # "Full" differs only at the grid's end: the simulator (like the fused kernels, whose loads are
    # predicated) calls a tile full when every *real* key in it is attended, while FlexAttention must
    # mask the padding tokens of a partial tile. Without partial tiles the two agree.
    if even_groups:
        assert sim.full_tiles >= int(full.sum())
    groups_exact = all(
        (-(-(n - g) // d)) % t == 0 and (-(-(n - g) // d)) % u == 0
        for n, d, t, u in zip(shape, dl, qt, kt) for g in range(d)
    )
    if groups_exact and even_groups:
        assert sim.full_tiles == int(full.sum())
    assert WindowSpec(shape, ks, st, dl, ca).num_pairs() == sim.attended_pairs
