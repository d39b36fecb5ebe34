"""shoal: a distributed task runtime with Ray's task API.

    import shoal as ray

    ray.init()                      # a local cluster inside this process

    @ray.remote
    def square(x):
        return x * x

    print(ray.get([square.remote(i) for i in range(4)]))   # [0, 1, 4, 9]

``init(address="auto")`` connects to a cluster started with ``shoal up``
or running on Kubernetes instead. See docs/python.md.
"""

from . import exceptions
from ._api import (
    INLINE_LIMIT,
    ObjectRef,
    RemoteFunction,
    RuntimeContext,
    available_resources,
    cancel,
    cluster_resources,
    get,
    get_runtime_context,
    init,
    is_initialized,
    nodes,
    put,
    remote,
    shutdown,
    wait,
)
from .util.scheduling_strategies import NodeAffinitySchedulingStrategy

__version__ = "0.1.0"

__all__ = [
    "INLINE_LIMIT",
    "NodeAffinitySchedulingStrategy",
    "ObjectRef",
    "RemoteFunction",
    "RuntimeContext",
    "available_resources",
    "cancel",
    "cluster_resources",
    "exceptions",
    "get",
    "get_runtime_context",
    "init",
    "is_initialized",
    "nodes",
    "put",
    "remote",
    "shutdown",
    "wait",
]
