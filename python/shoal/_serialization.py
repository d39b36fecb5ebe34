"""How Python values become shoal objects, and back.

A value is pickled with protocol 5 (cloudpickle, so lambdas and classes
defined in ``__main__`` travel too). Buffers that pickle 5 hands out of band
(numpy arrays, ``bytes`` inside ``PickleBuffer``) are not copied into the
pickle stream: they follow it, each aligned to 64 bytes, and unpickling reads
them as views of the received bytes, so a numpy array comes back without
another copy (read-only, as Ray's are).

Frame (little-endian): ``b"SHP5"``, u32 buffer count, u64 pickle length,
u64 length of each buffer, then the pickle and the aligned buffers.

An ``ObjectRef`` inside a value is written as a persistent id (its object id
and owner); whoever reads the value holds it again through its own client,
which borrows it from the owner.
"""

from __future__ import annotations

import io
import pickle
import struct
from typing import Any, Callable, List, Optional, Tuple

import cloudpickle

from . import _native

MAGIC = b"SHP5"
ALIGN = 64
_HEAD = struct.Struct("<4sIQ")
_LEN = struct.Struct("<Q")
_REF_TAG = "shoal.ObjectRef"

# Formats of the runtime (proto/proto/common.proto, Format).
FORMAT_JSON = 0
FORMAT_RAW = 1
FORMAT_ERROR = 2
FORMAT_MSGPACK = 3
FORMAT_PICKLE5 = 4


class _Pickler(cloudpickle.Pickler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.refs: List[Any] = []

    def persistent_id(self, obj: Any) -> Optional[tuple]:
        if type(obj) is _native.ObjectRef:
            self.refs.append(obj)
            return (_REF_TAG, obj.hex(), obj.owner_address)
        return None


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: Any, buffers: List[memoryview], adopt: Callable[[str, str], Any]):
        super().__init__(file, buffers=buffers)
        self._adopt = adopt

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) == 3 and pid[0] == _REF_TAG:
            return self._adopt(pid[1], pid[2])
        raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")


def _pad(n: int) -> int:
    return (-n) % ALIGN


def serialize(value: Any) -> Tuple[bytes, List[Any]]:
    """Pickles ``value`` into one frame; returns it with the ObjectRefs
    found inside (which whoever holds the value must hold too)."""
    buffers: List[pickle.PickleBuffer] = []
    out = io.BytesIO()
    pickler = _Pickler(out, protocol=5, buffer_callback=buffers.append)
    pickler.dump(value)
    body = out.getbuffer()
    raws = [b.raw() for b in buffers]
    header = bytearray(_HEAD.pack(MAGIC, len(raws), body.nbytes))
    for r in raws:
        header += _LEN.pack(r.nbytes)
    parts: List[Any] = [header, body]
    offset = len(header) + body.nbytes
    for r in raws:
        pad = _pad(offset)
        if pad:
            parts.append(b"\0" * pad)
            offset += pad
        parts.append(r)
        offset += r.nbytes
    return b"".join(parts), pickler.refs


def deserialize(data: bytes, adopt: Callable[[str, str], Any]) -> Any:
    """Reads a frame made by :func:`serialize`; ``adopt(id, owner)`` makes
    the ``ObjectRef``s found inside."""
    view = memoryview(data)
    if len(view) < _HEAD.size:
        raise pickle.UnpicklingError("the object is too short to be a pickled shoal value")
    magic, count, body_len = _HEAD.unpack_from(view, 0)
    if magic != MAGIC:
        raise pickle.UnpicklingError("the object is not a pickled shoal value")
    pos = _HEAD.size
    lengths = []
    for _ in range(count):
        (n,) = _LEN.unpack_from(view, pos)
        lengths.append(n)
        pos += _LEN.size
    body = view[pos : pos + body_len]
    pos += body_len
    buffers = []
    for n in lengths:
        pos += _pad(pos)
        buffers.append(view[pos : pos + n])
        pos += n
    if pos > len(view):
        raise pickle.UnpicklingError("the object ends before its buffers do")
    return _Unpickler(io.BytesIO(body), buffers, adopt).load()


def decode(fmt: int, data: bytes, adopt: Callable[[str, str], Any]) -> Any:
    """A value in any of the runtime's formats: pickled Python values, JSON
    (results of builtins and REST jobs) and raw bytes."""
    if fmt == FORMAT_PICKLE5:
        return deserialize(data, adopt)
    if fmt == FORMAT_JSON:
        import json

        return json.loads(bytes(data))
    if fmt == FORMAT_RAW:
        return bytes(data)
    raise TypeError(f"objects of format {fmt} cannot be read from Python")


def dumps_function(fn: Any) -> bytes:
    """A function pickled by value (cloudpickle)."""
    return cloudpickle.dumps(fn, protocol=5)
