"""The node-pool inventory: which pools a pod can land on, and whether each can stream.

- `model`: typed, immutable snapshot of nodes, pools and runtime classes (from API dicts)
- `rules`: why a pool can't stream; `PoolRulesConfig` is the policy's `pools` section
- `selectors`: kube-scheduler's hard node constraints as pure predicates
- `placement`: `PlacementIndex`, a `PlacementSource` over one snapshot
- `reflector`: list + watch of one resource kind (the I/O)
- `watcher`: `NodeWatcher`, the live inventory kept in memory (a `PlacementSource`)
"""

from app.nodes.model import Inventory, NodePool, inventory_from_api
from app.nodes.placement import PlacementIndex, place
from app.nodes.rules import PoolRulesConfig

__all__ = [
    "Inventory",
    "NodePool",
    "PlacementIndex",
    "PoolRulesConfig",
    "inventory_from_api",
    "place",
]
