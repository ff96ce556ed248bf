"""The best-configurations file: schema, save/load round trip, lookup rules."""

import json

import pytest
import torch

from natten_profiler import best_configs as bc


def sig(**kw):
    base = dict(
        input_size=(30, 48, 80), kernel_size=(18, 24, 24), stride=1, dilation=1, is_causal=False,
        heads=24, head_dim=128, dtype=torch.float16, device_type="cuda", batch_size=1,
        backprop=False, additional_kv=0, device_name="NVIDIA H100 80GB HBM3",
    )
    base.update(kw)
    return bc.make_signature(**base)


def entry(signature, backend="hopper-fna", q=(2, 8, 8), kv=(2, 8, 8), **kw):
    e = {"signature": signature, "backend": backend, "q_tile_shape": list(q),
         "kv_tile_shape": list(kv)}
    e.update(kw)
    return e


def test_make_signature_normalizes():
    s = sig()
    assert s["stride"] == [1, 1, 1] and s["dilation"] == [1, 1, 1]
    assert s["is_causal"] == [False, False, False]
    assert s["dtype"] == "float16" and s["heads_kv"] == 24 and s["head_dim_v"] == 128
    assert bc.normalize_signature(dict(s, dtype="fp16", device_type="cuda:1")) == s
    json.dumps(s)  # JSON-serialisable


def test_save_load_round_trip(tmp_path):
    path = tmp_path / "best.json"
    s = sig()
    bc.save_entry(path, entry(s, runtime_ms=1.5))
    data = json.loads(path.read_text())
    assert data["version"] == 1 and len(data["entries"]) == 1
    assert set(data["entries"][0]) >= {"signature", "backend", "q_tile_shape", "kv_tile_shape"}
    loaded = bc.load(path)
    hit = loaded.lookup(s)
    assert hit["backend"] == "hopper-fna"
    assert hit["q_tile_shape"] == (2, 8, 8) and hit["kv_tile_shape"] == (2, 8, 8)
    assert hit["runtime_ms"] == 1.5
    # Same signature replaces, another one appends.
    bc.save_entry(path, entry(s, backend="cutlass-fna", q=(4, 4, 8), kv=(4, 4, 8)))
    bc.save_entry(path, entry(sig(stride=(16, 8, 8))))
    loaded = bc.load(path)
    assert len(loaded.entries) == 2
    assert loaded.lookup(s)["backend"] == "cutlass-fna"
    assert bc.lookup(s, str(path))["q_tile_shape"] == (4, 4, 8)


def test_lookup_rules():
    cfg = bc.BestConfigs()
    cfg.add(entry(sig(batch_size=1), backend="a"))
    cfg.add(entry(sig(batch_size=8), backend="b"))
    cfg.add(entry(sig(backprop=True, batch_size=8), backend="c"))
    # Required keys must match exactly.
    assert cfg.lookup(sig(heads=12)) is None
    assert cfg.lookup(sig(dtype="bf16")) is None
    assert cfg.lookup(sig(kernel_size=(18, 24, 16))) is None
    # Optional keys: fewest mismatches wins.
    assert cfg.lookup(sig(batch_size=1))["backend"] == "a"
    assert cfg.lookup(sig(batch_size=8))["backend"] == "b"
    assert cfg.lookup(sig(batch_size=8, backprop=True))["backend"] == "c"
    # An unknown batch size still finds a config; ties go to the later entry.
    assert cfg.lookup(sig(batch_size=4))["backend"] == "b"
    # A signature without optional keys matches on the required ones.
    s = {k: v for k, v in sig().items() if k in bc.REQUIRED_KEYS}
    assert cfg.lookup(s) is not None


def test_lookup_from_environment(tmp_path, monkeypatch):
    s = sig()
    monkeypatch.delenv(bc.ENV_VAR, raising=False)
    assert bc.lookup(s) is None
    path = tmp_path / "cfg.json"
    monkeypatch.setenv(bc.ENV_VAR, str(path))
    assert bc.lookup(s) is None  # the file does not exist yet
    bc.save_entry(path, entry(s))
    assert bc.lookup(s)["backend"] == "hopper-fna"
    bc.save_entry(path, entry(s, backend="blackwell-fna"))
    assert bc.lookup(s)["backend"] == "blackwell-fna"  # re-read after a change


def test_signature_from_tensors_matches_make_signature():
    q = torch.empty(2, 16, 12, 4, 32)
    k = torch.empty(2, 16, 12, 2, 32)
    v = torch.empty(2, 16, 12, 2, 16)
    s = bc.signature_from_tensors(q, k, v, (5, 3), stride=1, dilation=(1, 2), is_causal=(True, False))
    assert s == bc.make_signature(
        (16, 12), (5, 3), 1, (1, 2), (True, False), heads=4, heads_kv=2, head_dim=32,
        head_dim_v=16, dtype="fp32", device_type="cpu", batch_size=2, backprop=False,
    )


@pytest.mark.parametrize(
    "data,match",
    [
        ({"version": 2, "entries": []}, "version"),
        ({"version": 1}, "entries"),
        ({"version": 1, "entries": [{"backend": "x"}]}, "signature"),
        ({"version": 1, "entries": [{"signature": {"input_size": [4]}, "backend": "x"}]},
         "required"),
        ([], "JSON object"),
    ],
)
def test_invalid_files_are_rejected(tmp_path, data, match):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(bc.BestConfigsError, match=match):
        bc.load(path)


def test_invalid_json(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(bc.BestConfigsError, match="not valid JSON"):
        bc.load(path)
