"""Type stubs of the Rust extension under the `shoal` package."""

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

INLINE_LIMIT: int

class NativeError(Exception):
    """args: (kind, message), kind being shoal's error kind by name."""

class ObjectRef:
    owner_address: str
    def hex(self) -> str: ...
    def task_id(self) -> str: ...
    def __hash__(self) -> int: ...
    def __eq__(self, other: object) -> bool: ...

Strategy = Optional[Tuple[str, Optional[str], bool]]
GetResult = Tuple[str, int, Any]

class Client:
    job_id: int
    node_id: str
    address: str
    @staticmethod
    def connect(address: str, job_id: Optional[int] = None, worker_id: Optional[str] = None, name: str = "") -> "Client": ...
    def submit(
        self,
        function_id: str,
        name: str,
        args: Sequence[Any],
        num_returns: int,
        resources: Sequence[Tuple[str, float]],
        max_retries: int,
        retry_exceptions: bool,
        strategy: Strategy = None,
    ) -> List[ObjectRef]: ...
    def put(self, data: bytes) -> ObjectRef: ...
    def get(self, refs: Sequence[ObjectRef], timeout: Optional[float] = None) -> List[GetResult]: ...
    def wait(self, refs: Sequence[ObjectRef], num_returns: int, timeout: Optional[float] = None) -> List[bool]: ...
    def cancel(self, ref: ObjectRef, force: bool, recursive: bool) -> None: ...
    def borrow(self, object_id: str, owner: str) -> ObjectRef: ...
    def flush(self) -> None: ...
    def kv_put(self, key: str, value: bytes, overwrite: bool) -> bool: ...
    def kv_get(self, key: str) -> Optional[bytes]: ...
    def nodes(self) -> List[Dict[str, Any]]: ...

class LocalCluster:
    raylet_address: str
    gcs_address: str
    http_address: str
    node_id: str
    @staticmethod
    def start(
        resources: Sequence[Tuple[str, float]],
        object_store_memory: int,
        python_worker: Sequence[str],
        native_worker: Sequence[str],
        dir: str,
        prestart_workers: int = 0,
    ) -> "LocalCluster": ...
    def shutdown(self) -> None: ...

def run_worker(execute: Callable[..., tuple]) -> None: ...
def run_native_worker() -> None: ...
