"""cutlass-fna with query/key slabs of a larger grid, on the CPU: the torch op's schema and fake
(meta) implementation, and the arguments the backend hands to the op. The kernel itself is
checked on the GPU (tests/gpu/test_cutlass_fna_gpu.py) and the C library's slab validation by
natten-kernels' tests and test_libnatten_real.py."""

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from natten import ops
from natten.backends import cutlass
from natten.window import Region, WindowSpec


def _slab_spec() -> WindowSpec:
    region = Region(q_origin=(6, 0), q_shape=(5, 7), kv_origin=(4, 0), kv_shape=(9, 7))
    return WindowSpec((20, 7), (5, 5), (1, 1), (1, 1), (False, False), region)


def test_fake_op_shapes_follow_the_query_slab():
    with FakeTensorMode():
        q = torch.empty(2, 5, 7, 4, 32, dtype=torch.float16)
        k = torch.empty(2, 9, 7, 2, 32, dtype=torch.float16)
        v = torch.empty(2, 9, 7, 2, 64, dtype=torch.float16)
        out, lse = ops.fna_forward(q, k, v, [5, 5], [1, 1], [1, 1], [False, False], 0.125, [], [],
                                   [20, 7], [6, 0], [4, 0])
        assert tuple(out.shape) == (2, 5, 7, 4, 64) and out.dtype == torch.float16
        assert tuple(lse.shape) == (2, 5, 7, 4) and lse.dtype == torch.float32
        # The slab arguments default to [] (the whole grid): the 1.0 call form still works.
        out, lse = ops.fna_forward(q, q, q, [3, 3], [1, 1], [1, 1], [False, False], 0.125, [], [])
        assert tuple(out.shape) == (2, 5, 7, 4, 32)


def test_region_args():
    assert cutlass._region_args(_slab_spec()) == ([20, 7], [6, 0], [4, 0])
    whole = WindowSpec((5, 7), (3, 3), (1, 1), (1, 1), (False, False))
    assert cutlass._region_args(whole) == ([], [], [])
    assert cutlass._region_args(None) == ([], [], [])


def test_fna_passes_the_slab_to_the_op(monkeypatch):
    seen = {}

    def fake_op(query, key, value, *args):
        seen["args"] = args
        return query, query

    monkeypatch.setattr(ops, "fna_forward_eager", fake_op)
    q = torch.zeros(1, 5, 7, 2, 16, dtype=torch.float16)
    k = torch.zeros(1, 9, 7, 2, 16, dtype=torch.float16)
    cutlass.fna(q, k, k, _slab_spec(), 0.25)
    ks, st, dl, ca, scale, qt, kt, glob, qo, ko = seen["args"]
    assert (ks, st, dl, ca, scale, qt, kt) == ([5, 5], [1, 1], [1, 1], [False, False], 0.25, [], [])
    assert (glob, qo, ko) == ([20, 7], [6, 0], [4, 0])
