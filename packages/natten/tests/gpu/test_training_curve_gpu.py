"""Model-level check on the GPU: a NeighborhoodAttention2D block trained for a few hundred steps on
synthetic data with a fast backend tracks the reference backend's loss curve (hopper-fna: its
Hopper forward with cutlass-fna's backward kernels; the block's dilation 2 axis folds into the batch).

Both runs start from the same weights and see the same batches; the model runs under bf16
autocast (the fused/flex kernels take half precision), the reference backend computes in float32.
Training is chaotic, so the curves are compared smoothed: every 25-step window mean within 5% of
the reference's, and both must have learned (final loss well below the initial one).
"""

import functools

import pytest
import torch
from torch import nn

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)

import natten  # noqa: E402
from natten import modules  # noqa: E402

STEPS = 300
WINDOW = 25


class Block(nn.Module):
    def __init__(self, dim: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = natten.NeighborhoodAttention2D(dim, heads, kernel_size=(5, 7), dilation=(1, 2))
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _train(backend: str, monkeypatch) -> torch.Tensor:
    monkeypatch.setattr(
        modules, "neighborhood_attention_generic",
        functools.partial(natten.functional.neighborhood_attention_generic, backend=backend),
    )
    torch.manual_seed(0)
    model = Block().cuda()
    teacher = Block().cuda()  # a fixed random target function with spatial mixing
    for p in teacher.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    g = torch.Generator(device="cuda").manual_seed(1)
    losses = []
    for _ in range(STEPS):
        x = torch.randn(4, 24, 30, 64, device="cuda", generator=g)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            y = teacher(x).float()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = nn.functional.mse_loss(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return torch.stack(losses).float().cpu()


@pytest.mark.parametrize("backend", ["cutlass-fna", "flex-fna", "hopper-fna"])
def test_training_tracks_reference(backend, monkeypatch):
    if backend == "hopper-fna" and torch.cuda.get_device_capability() != (9, 0):
        # its Hopper forward (with cutlass-fna's backward kernels) needs compute capability 9.0
        pytest.skip("hopper-fna needs an H100 / H200")
    ref = _train("reference", monkeypatch)
    got = _train(backend, monkeypatch)
    assert torch.isfinite(got).all(), f"{backend}: non-finite loss"
    r = ref.reshape(-1, WINDOW).mean(1)
    o = got.reshape(-1, WINDOW).mean(1)
    assert r[-1] < 0.5 * r[0] and o[-1] < 0.5 * o[0], f"did not learn: ref {r.tolist()}, {backend} {o.tolist()}"
    rel = ((o - r).abs() / r).max().item()
    print(f"{backend}: window means {[round(x, 4) for x in o.tolist()]} vs reference "
          f"{[round(x, 4) for x in r.tolist()]}; max relative gap {rel:.3f}")
    assert rel < 0.05, f"{backend} loss curve departs from the reference by {rel:.1%}"
