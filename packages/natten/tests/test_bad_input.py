"""Bad input must raise ValueError / TypeError / NotImplementedError with a message naming the
argument (never AssertionError / IndexError / a crash), and a valid call afterwards still works."""

import pytest
import torch

import natten
from helpers import assert_close, randn
from oracle import attention_oracle, na_oracle

BAD = (ValueError, TypeError, NotImplementedError)


def T(shape, dtype=torch.float32, device="cpu", seed=0):
    gen = torch.Generator().manual_seed(seed + sum(shape))
    return randn(shape, gen, torch.float64).to(dtype=dtype, device=device)


def q2(**kw):
    return T((1, 6, 6, 2, 8), **kw)


def k2(H=2, D=8, **kw):
    return T((1, 6, 6, H, D), seed=1, **kw)


def v2(H=2, D=8, **kw):
    return T((1, 6, 6, H, D), seed=2, **kw)


def valid_na2d_call():
    q, k, v = q2(), k2(), v2()
    out = natten.na2d(q, k, v, kernel_size=3, stride=2, dilation=1, is_causal=(False, True))
    ref, _ = na_oracle(q.double(), k.double(), v.double(), kernel_size=3, stride=2,
                       is_causal=(False, True))
    assert_close(out, ref, atol=1e-4, rtol=1e-4, what="valid call after error")


def valid_na1d_call():
    q = T((2, 11, 2, 4))
    out = natten.na1d(q, q, q, kernel_size=4, backend="reference")
    ref, _ = na_oracle(q.double(), q.double(), q.double(), kernel_size=4)
    assert_close(out, ref, atol=1e-4, rtol=1e-4, what="valid call after error")


def valid_na3d_call():
    q = T((1, 4, 5, 3, 1, 4))
    out = natten.na3d(q, q, q, kernel_size=(2, 3, 3), backend="reference")
    ref, _ = na_oracle(q.double(), q.double(), q.double(), kernel_size=(2, 3, 3))
    assert_close(out, ref, atol=1e-4, rtol=1e-4, what="valid call after error")


def valid_attention_call():
    q = T((1, 9, 2, 4))
    out = natten.attention(q, q, q, is_causal=True)
    ref, _ = attention_oracle(q.double(), q.double(), q.double(), is_causal=True)
    assert_close(out, ref, atol=1e-4, rtol=1e-4, what="valid call after error")


def rx(*alternatives):
    """Case-insensitive regex matching any of the alternatives."""
    return "(?i)(" + "|".join(alternatives) + ")"


RANK = rx("rank", "dim", "shape", "tensor", "5-d", "4-d", "6-d")
SHAPE = rx("shape", "dim", "match", "key", "value", "query", "batch", "size")
HEADS = rx("head")
ADD = rx("additional")

# name -> (callable raising, regex for message, follow-up valid call)
NA_CASES = {
    # ---- ranks
    "na2d_rank4": (lambda: natten.na2d(T((1, 6, 2, 8)), T((1, 6, 2, 8)), T((1, 6, 2, 8)), kernel_size=3), RANK),
    "na2d_rank6": (lambda: natten.na2d(T((1, 4, 4, 4, 2, 8)), T((1, 4, 4, 4, 2, 8)), T((1, 4, 4, 4, 2, 8)), kernel_size=3), RANK),
    "na1d_rank5": (lambda: natten.na1d(q2(), k2(), v2(), kernel_size=3), RANK),
    "na3d_rank5": (lambda: natten.na3d(q2(), k2(), v2(), kernel_size=3), RANK),
    "na2d_rank3": (lambda: natten.na2d(T((6, 2, 8)), T((6, 2, 8)), T((6, 2, 8)), kernel_size=3), RANK),
    "na2d_k_rank_differs": (lambda: natten.na2d(q2(), T((1, 36, 2, 8)), v2(), kernel_size=3), rx("rank", "dim", "shape", "tensor", "match", "key", "size")),
    # ---- q/k/v shapes
    "k_spatial_mismatch": (lambda: natten.na2d(q2(), T((1, 6, 5, 2, 8)), v2(), kernel_size=3), SHAPE),
    "v_spatial_mismatch": (lambda: natten.na2d(q2(), k2(), T((1, 5, 6, 2, 8)), kernel_size=3), SHAPE),
    "batch_mismatch": (lambda: natten.na2d(q2(), T((2, 6, 6, 2, 8)), T((2, 6, 6, 2, 8)), kernel_size=3), SHAPE),
    "qk_head_dim_mismatch": (lambda: natten.na2d(q2(), k2(D=4), v2(), kernel_size=3), SHAPE),
    "kv_heads_mismatch": (lambda: natten.na2d(q2(), k2(H=2), v2(H=1), kernel_size=3), r"(?i)(head|shape|match)"),
    "heads_not_divisible": (lambda: natten.na2d(T((1, 6, 6, 3, 8)), k2(H=2), v2(H=2), kernel_size=3), HEADS),
    "kv_more_heads_than_q": (lambda: natten.na2d(T((1, 6, 6, 2, 8)), k2(H=4), v2(H=4), kernel_size=3), HEADS),
    # ---- kernel_size
    "kernel_larger_than_axis": (lambda: natten.na2d(q2(), k2(), v2(), kernel_size=7), r"kernel"),
    "kernel_larger_than_one_axis": (lambda: natten.na2d(T((1, 6, 4, 2, 8)), T((1, 6, 4, 2, 8)), T((1, 6, 4, 2, 8)), kernel_size=(3, 5)), r"kernel"),
    "kernel_1": (lambda: natten.na2d(q2(), k2(), v2(), kernel_size=1), r"kernel_size"),
    "kernel_0": (lambda: natten.na2d(q2(), k2(), v2(), kernel_size=(3, 0)), r"kernel_size"),
    "kernel_negative": (lambda: natten.na2d(q2(), k2(), v2(), kernel_size=-3), r"kernel_size"),
    "kernel_float": (lambda: natten.na2d(q2(), k2(), v2(), kernel_size=3.5), r"kernel_size"),
    "kernel_str": (lambda: natten.na2d(q2(), k2(), v2(), kernel_size="3"), r"kernel_size"),
    "kernel_tuple_with_float": (lambda: natten.na2d(q2(), k2(), v2(), kernel_size=(3, 3.5)), r"kernel_size"),
    "kernel_none": (lambda: natten.na2d(q2(), k2(), v2(), kernel_size=None), r"kernel_size"),
    "kernel_tuple_too_long": (lambda: natten.na2d(q2(), k2(), v2(), kernel_size=(3, 3, 3)), r"kernel_size"),
    "kernel_tuple_too_short": (lambda: natten.na2d(q2(), k2(), v2(), kernel_size=(3,)), r"kernel_size"),
    "kernel_tuple_na1d_len2": (lambda: natten.na1d(T((1, 9, 2, 4)), T((1, 9, 2, 4)), T((1, 9, 2, 4)), kernel_size=(3, 3)), r"kernel_size"),
    # ---- stride
    "stride_0": (lambda: natten.na2d(q2(), k2(), v2(), kernel_size=3, stride=0), r"stride"),
    "stride_negative": (lambda: natten.na2d(q2(), k2(), v2(), kernel_size=3, stride=(1, -1)), r"stride"),
    "stride_gt_kernel": (lambda: natten.na2d(q2(), k2(), v2(), kernel_size=3, stride=4), r"stride"),
    "stride_gt_kernel_one_axis": (lambda: natten.na2d(q2(), k2(), v2(), kernel_size=(3, 2), stride=(3, 3)), r"stride"),
    "stride_float": (lambda: natten.na2d(q2(), k2(), v2(), kernel_size=3, stride=1.5), r"stride"),
    "stride_str": (lambda: natten.na2d(q2(), k2(), v2(), kernel_size=3, stride="2"), r"stride"),
    "stride_tuple_len": (lambda: natten.na2d(q2(), k2(), v2(), kernel_size=3, stride=(1, 1, 1)), r"stride"),
    # ---- dilation
    "dilation_0": (lambda: natten.na2d(q2(), k2(), v2(), kernel_size=3, dilation=0), r"dilation"),
    "dilation_negative": (lambda: natten.na2d(q2(), k2(), v2(), kernel_size=3, dilation=(-1, 1)), r"dilation"),
    "kernel_times_dilation_gt_axis": (lambda: natten.na2d(q2(), k2(), v2(), kernel_size=3, dilation=3), r"(dilation|kernel)"),
    "kernel_times_dilation_gt_axis_one": (lambda: natten.na2d(q2(), k2(), v2(), kernel_size=(2, 4), dilation=(3, 2)), r"(dilation|kernel)"),
    "dilation_float": (lambda: natten.na2d(q2(), k2(), v2(), kernel_size=3, dilation=1.5), r"dilation"),
    "dilation_str": (lambda: natten.na2d(q2(), k2(), v2(), kernel_size=3, dilation="2"), r"dilation"),
    "dilation_tuple_len": (lambda: natten.na2d(q2(), k2(), v2(), kernel_size=3, dilation=(1,)), r"dilation"),
    # ---- is_causal
    "is_causal_tuple_len": (lambda: natten.na2d(q2(), k2(), v2(), kernel_size=3, is_causal=(True, False, True)), r"is_causal"),
    # ---- dtype / device
    "dtype_mismatch_k": (lambda: natten.na2d(q2(), k2(dtype=torch.float64), v2(), kernel_size=3), r"(?i)dtype"),
    "dtype_mismatch_v": (lambda: natten.na2d(q2(), k2(), v2(dtype=torch.float16), kernel_size=3), r"(?i)dtype"),
    "int_tensors": (lambda: natten.na2d(q2().long(), k2().long(), v2().long(), kernel_size=3), r"(?i)(dtype|float)"),
    "int32_tensors": (lambda: natten.na2d(q2().int(), k2().int(), v2().int(), kernel_size=3), r"(?i)(dtype|float)"),
    "bool_tensors": (lambda: natten.na2d(q2() > 0, k2() > 0, v2() > 0, kernel_size=3), r"(?i)(dtype|float)"),
    "device_mismatch": (lambda: natten.na2d(q2(), k2().to("meta"), v2(), kernel_size=3), r"(?i)device"),
    # ---- additional kv
    "additional_keys_without_values": (lambda: natten.na2d(q2(), k2(), v2(), kernel_size=3, additional_keys=T((1, 4, 2, 8))), ADD),
    "additional_values_without_keys": (lambda: natten.na2d(q2(), k2(), v2(), kernel_size=3, additional_values=T((1, 4, 2, 8))), ADD),
    "additional_heads_mismatch": (lambda: natten.na2d(q2(), k2(), v2(), kernel_size=3, additional_keys=T((1, 4, 1, 8)), additional_values=T((1, 4, 1, 8))), rx("additional", "head")),
    "additional_head_dim_mismatch": (lambda: natten.na2d(q2(), k2(), v2(), kernel_size=3, additional_keys=T((1, 4, 2, 4)), additional_values=T((1, 4, 2, 8))), rx("additional", "dim")),
    "additional_value_dim_mismatch": (lambda: natten.na2d(q2(), k2(), v2(), kernel_size=3, additional_keys=T((1, 4, 2, 8)), additional_values=T((1, 4, 2, 4))), rx("additional", "dim")),
    "additional_len_mismatch": (lambda: natten.na2d(q2(), k2(), v2(), kernel_size=3, additional_keys=T((1, 4, 2, 8)), additional_values=T((1, 5, 2, 8))), rx("additional", "shape")),
    "additional_batch_mismatch": (lambda: natten.na2d(q2(), k2(), v2(), kernel_size=3, additional_keys=T((2, 4, 2, 8)), additional_values=T((2, 4, 2, 8))), rx("additional", "batch")),
    "additional_rank": (lambda: natten.na2d(q2(), k2(), v2(), kernel_size=3, additional_keys=T((1, 2, 2, 2, 8)), additional_values=T((1, 2, 2, 2, 8))), rx("additional", "rank", "dim")),
    "additional_dtype": (lambda: natten.na2d(q2(), k2(), v2(), kernel_size=3, additional_keys=T((1, 4, 2, 8), dtype=torch.float64), additional_values=T((1, 4, 2, 8), dtype=torch.float64)), rx("additional", "dtype")),
    # ---- backend / scale
    "unknown_backend": (lambda: natten.na2d(q2(), k2(), v2(), kernel_size=3, backend="no-such-backend"), r"(?i)backend"),
    "unknown_backend_2": (lambda: natten.na2d(q2(), k2(), v2(), kernel_size=3, backend="banana-fna"), r"(?i)backend"),
    "scale_str": (lambda: natten.na2d(q2(), k2(), v2(), kernel_size=3, scale="x"), r"(?i)scale"),
    "scale_list": (lambda: natten.na2d(q2(), k2(), v2(), kernel_size=3, scale=[0.5]), r"(?i)scale"),
}


@pytest.mark.parametrize("name", list(NA_CASES))
def test_na_bad_input(name):
    fn, pattern = NA_CASES[name]
    with pytest.raises(BAD, match=pattern):
        fn()
    valid_na2d_call()
    valid_na1d_call()


def test_na_bad_input_with_reference_backend_explicit():
    # same validation when the reference backend is requested explicitly
    with pytest.raises(BAD, match="stride"):
        natten.na2d(q2(), k2(), v2(), kernel_size=3, stride=4, backend="reference")
    with pytest.raises(BAD, match="kernel"):
        natten.na3d(T((1, 4, 4, 4, 1, 4)), T((1, 4, 4, 4, 1, 4)), T((1, 4, 4, 4, 1, 4)),
                    kernel_size=(2, 5, 2), backend="reference")
    with pytest.raises(BAD, match=r"(dilation|kernel)"):
        natten.na1d(T((1, 9, 1, 4)), T((1, 9, 1, 4)), T((1, 9, 1, 4)), kernel_size=5, dilation=2,
                    backend="reference")
    valid_na3d_call()


def test_error_message_names_axis_and_values():
    # SEMANTICS.md: "a ValueError that names the argument, the axis and the values"
    with pytest.raises(ValueError) as ei:
        natten.na2d(q2(), k2(), v2(), kernel_size=(3, 2), stride=(3, 5))
    msg = str(ei.value)
    assert "stride" in msg and "5" in msg, msg
    with pytest.raises(ValueError) as ei:
        natten.na2d(T((1, 6, 4, 2, 8)), T((1, 6, 4, 2, 8)), T((1, 6, 4, 2, 8)), kernel_size=(3, 5))
    msg = str(ei.value)
    assert "kernel" in msg and "5" in msg and "4" in msg, msg


@pytest.mark.parametrize("backend", ["cutlass-fna", "hopper-fna", "blackwell-fna"])
def test_backend_that_cannot_run_on_cpu(backend):
    with pytest.raises((ValueError, NotImplementedError, RuntimeError)) as ei:
        natten.na2d(q2(), k2(), v2(), kernel_size=3, backend=backend)
    msg = str(ei.value)
    assert backend in msg, f"message should name the requested backend: {msg}"
    assert "reference" in msg, f"message should say which backends can run: {msg}"
    valid_na2d_call()


@pytest.mark.parametrize("backend", ["cutlass-fmha", "hopper-fmha", "blackwell-fmha"])
def test_fmha_backend_that_cannot_run_on_cpu(backend):
    q = T((1, 9, 2, 4))
    with pytest.raises((ValueError, NotImplementedError, RuntimeError)) as ei:
        natten.attention(q, q, q, backend=backend)
    msg = str(ei.value)
    assert backend in msg, f"message should name the requested backend: {msg}"
    assert "reference" in msg, f"message should say which backends can run: {msg}"
    valid_attention_call()


def test_get_compatible_backends_cpu():
    q, k, v = q2(), k2(), v2()
    backs = natten.backends.get_compatible_backends(q, k, v)
    assert isinstance(backs, (list, tuple))
    assert "reference" in backs
    for b in ("cutlass-fna", "hopper-fna", "blackwell-fna"):
        assert b not in backs
    # every backend listed as compatible actually runs and agrees with the oracle
    ref, _ = na_oracle(q.double(), k.double(), v.double(), kernel_size=3)
    for b in backs:
        out = natten.na2d(q, k, v, kernel_size=3, backend=b)
        assert_close(out, ref, atol=1e-4, rtol=1e-4, what=f"backend {b}")


# ------------------------------------------------------------------------------------------------
# attention
# ------------------------------------------------------------------------------------------------
A = lambda *s, **kw: T(s, **kw)
I32 = lambda xs: torch.tensor(xs, dtype=torch.int32)

ATT_CASES = {
    "rank5": (lambda: natten.attention(q2(), k2(), v2()), RANK),
    "rank3": (lambda: natten.attention(A(9, 2, 4), A(9, 2, 4), A(9, 2, 4)), RANK),
    "head_dim_mismatch": (lambda: natten.attention(A(1, 9, 2, 4), A(1, 9, 2, 8), A(1, 9, 2, 8)), SHAPE),
    "kv_len_mismatch": (lambda: natten.attention(A(1, 9, 2, 4), A(1, 9, 2, 4), A(1, 8, 2, 4)), SHAPE),
    "batch_mismatch": (lambda: natten.attention(A(1, 9, 2, 4), A(2, 9, 2, 4), A(2, 9, 2, 4)), SHAPE),
    "heads_not_divisible": (lambda: natten.attention(A(1, 9, 3, 4), A(1, 9, 2, 4), A(1, 9, 2, 4)), HEADS),
    "kv_heads_mismatch": (lambda: natten.attention(A(1, 9, 2, 4), A(1, 9, 2, 4), A(1, 9, 1, 4)), r"(?i)(head|shape|match)"),
    "dtype_mismatch": (lambda: natten.attention(A(1, 9, 2, 4), A(1, 9, 2, 4, dtype=torch.float64), A(1, 9, 2, 4)), r"(?i)dtype"),
    "int_tensors": (lambda: natten.attention(A(1, 9, 2, 4).long(), A(1, 9, 2, 4).long(), A(1, 9, 2, 4).long()), r"(?i)(dtype|float)"),
    "device_mismatch": (lambda: natten.attention(A(1, 9, 2, 4), A(1, 9, 2, 4, device="meta"), A(1, 9, 2, 4)), r"(?i)device"),
    "unknown_backend": (lambda: natten.attention(A(1, 9, 2, 4), A(1, 9, 2, 4), A(1, 9, 2, 4), backend="nope"), r"(?i)backend"),
    "scale_str": (lambda: natten.attention(A(1, 9, 2, 4), A(1, 9, 2, 4), A(1, 9, 2, 4), scale="x"), r"(?i)scale"),
    "varlen_batch_gt_1": (lambda: natten.attention(A(2, 9, 2, 4), A(2, 9, 2, 4), A(2, 9, 2, 4), seqlens_Q=I32([4, 5]), seqlens_KV=I32([4, 5])), r"(?i)(batch|varlen|seqlen)"),
    "varlen_count_mismatch": (lambda: natten.attention(A(1, 9, 2, 4), A(1, 9, 2, 4), A(1, 9, 2, 4), seqlens_Q=I32([4, 5]), seqlens_KV=I32([9])), r"(?i)(seqlen|varlen|match|size|shape)"),
}


@pytest.mark.parametrize("name", list(ATT_CASES))
def test_attention_bad_input(name):
    fn, pattern = ATT_CASES[name]
    with pytest.raises(BAD, match=pattern):
        fn()
    valid_attention_call()


# ------------------------------------------------------------------------------------------------
# merge_attentions and modules
# ------------------------------------------------------------------------------------------------


def _merge_parts():
    return [T((1, 5, 2, 4)), T((1, 5, 2, 4), seed=3)], [T((1, 5, 2)), T((1, 5, 2), seed=3)]


MERGE_CASES = {
    "single_input": (lambda o, l: natten.merge_attentions(o[:1], l[:1]), rx("two", "2", "least")),
    "count_mismatch": (lambda o, l: natten.merge_attentions(o, l[:1]), rx("number", "count", "match", "lse", "len")),
    "output_shapes": (lambda o, l: natten.merge_attentions([o[0], T((1, 6, 2, 4))], l), rx("shape")),
    "lse_shape": (lambda o, l: natten.merge_attentions(o, [l[0], T((1, 5, 3))]), rx("lse", "shape", "logsumexp")),
}


@pytest.mark.parametrize("name", list(MERGE_CASES))
def test_merge_bad_input(name):
    fn, pattern = MERGE_CASES[name]
    o, l = _merge_parts()
    with pytest.raises(BAD, match=pattern):
        fn(o, l)
    out, lse = natten.merge_attentions(o, l, torch_compile=False)
    w = torch.softmax(torch.stack(l), 0).unsqueeze(-1)
    assert_close(out, (w * torch.stack(o)).sum(0), atol=1e-5, rtol=1e-5, what="valid merge")


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_module_bad_input(rank):
    cls = {1: natten.NeighborhoodAttention1D, 2: natten.NeighborhoodAttention2D,
           3: natten.NeighborhoodAttention3D}[rank]
    with pytest.raises(BAD, match=rx("embed_dim", "head", "divisible")):
        cls(30, 4, kernel_size=3)
    m = cls(16, 4, kernel_size=3)
    x = torch.randn(1, *([5] * rank), 16)
    with pytest.raises(BAD, match=rx("rank", "dim", "shape")):
        m(torch.randn(1, *([5] * (rank + 1)), 16))
    with pytest.raises(BAD, match=rx("embed", "dim", "shape", "channel")):
        m(torch.randn(1, *([5] * rank), 12))
    with pytest.raises(BAD, match=rx("kernel")):
        m(torch.randn(1, *([2] * rank), 16))
    assert m(x).shape == x.shape
