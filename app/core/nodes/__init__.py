"""The node-pool inventory: which pools a pod can land on, and whether each can stream.

- `model`: typed, immutable snapshot of nodes, pools and runtime classes (from API dicts)
- `rules`: why a pool can't stream; `PoolRulesConfig` is the policy's `pools` section
- `selectors`: kube-scheduler's hard node constraints as pure predicates
- `placement`: `PlacementIndex`, a `PlacementSource` over one snapshot

The live inventory (list + watch of nodes, `NodeWatcher`) is in `app.cluster.nodes`.
"""

from app.core.nodes.model import Inventory, NodePool, inventory_from_api
from app.core.nodes.placement import PlacementIndex, place
from app.core.nodes.rules import PoolRulesConfig

__all__ = [
    "Inventory",
    "NodePool",
    "PlacementIndex",
    "PoolRulesConfig",
    "inventory_from_api",
    "place",
]
