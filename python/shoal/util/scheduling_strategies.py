"""Scheduling strategies, as in `ray.util.scheduling_strategies`."""

from __future__ import annotations


class NodeAffinitySchedulingStrategy:
    """Run the task on the node with id ``node_id`` (hex, as ``nodes()`` and
    ``get_runtime_context().get_node_id()`` give it). With ``soft=True`` the
    task may run elsewhere when that node cannot take it; otherwise it fails
    when that node can never fit it."""

    def __init__(self, node_id: str, soft: bool, **_ignored: object) -> None:
        if not isinstance(node_id, str) or not node_id:
            raise ValueError("node_id must be a node id in hex")
        self.node_id = node_id
        self.soft = bool(soft)

    def __repr__(self) -> str:
        return f"NodeAffinitySchedulingStrategy(node_id={self.node_id!r}, soft={self.soft})"


__all__ = ["NodeAffinitySchedulingStrategy"]
