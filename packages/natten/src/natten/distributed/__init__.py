"""Context-parallel neighborhood attention over ``torch.distributed``.

See :func:`natten.distributed.na2d` and the "Distributed" page of the docs.
"""

from ._plan import ExchangeStats, ShardPlan, shard, split_sizes
from .functional import make_plan, na1d, na2d, na3d, neighborhood_attention_distributed, plan_exchange
from .modules import NeighborhoodAttention1D, NeighborhoodAttention2D, NeighborhoodAttention3D

__all__ = [
    "ExchangeStats",
    "NeighborhoodAttention1D",
    "NeighborhoodAttention2D",
    "NeighborhoodAttention3D",
    "ShardPlan",
    "make_plan",
    "na1d",
    "na2d",
    "na3d",
    "neighborhood_attention_distributed",
    "plan_exchange",
    "shard",
    "split_sizes",
]
