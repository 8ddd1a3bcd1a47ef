"""A table of node pools and whether each can stream (`streamgate pools`, the demo)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from app.core.messages import no_streaming_pools
from app.core.nodes.model import Inventory, inventory_from_api
from app.core.nodes.placement import PlacementIndex
from app.core.pools import PoolFit


def inventory_from_file(path: Path, *, pool_labels: Sequence[str]) -> Inventory:
    """Nodes and RuntimeClasses from `kubectl get nodes,runtimeclasses -o yaml|json` output
    (a List, or a stream of documents)."""
    items: list[Any] = []
    for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        if isinstance(doc, dict):
            items.extend(doc.get("items", []) if doc.get("kind", "").endswith("List") else [doc])
    nodes = [i for i in items if isinstance(i, dict) and i.get("kind") == "Node"]
    classes = [i for i in items if isinstance(i, dict) and i.get("kind") == "RuntimeClass"]
    return inventory_from_api(nodes, classes, pool_labels=pool_labels)


def pool_table(index: PlacementIndex) -> str:
    fits: dict[str, PoolFit] = {fit.name: fit for fit in index.pool_status()}
    rows = [("POOL", "NODES", "ARCH", "OS", "OS SKU", "STREAMS", "WHY NOT")]
    for pool in index.inventory.pools:
        fit = fits.get(pool.name)
        rows.append(
            (
                pool.name,
                str(pool.node_count),
                ",".join(pool.architectures) or "-",
                ",".join(pool.operating_systems) or "-",
                ",".join(pool.os_skus) or "-",
                fit.streaming.value if fit else "-",
                ", ".join(fit.reasons) if fit else "",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    table = "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )
    if index.inventory.pools and not index.streaming_enabled:
        table += "\n\n" + no_streaming_pools(index.pool_status())
    return table
