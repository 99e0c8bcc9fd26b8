"""Write a RecFlow-style day pickle item by item, in bounded memory.

``pickle.dump`` needs the whole dict in memory: at RecFlow's day size that is 251,000 requests
of arrays, several GB.  :class:`DictPickleWriter` writes the same pickle incrementally: the
top-level dict's items go out in ``SETITEMS`` batches as they are produced.  Values are numpy
arrays, or dicts of str -> numpy array (request_id_dict).  The encoding is protocol 4 as
``pickle.dump`` writes numpy arrays (``numpy.core.multiarray._reconstruct`` + ``BUILD`` with the
array state), under the module name numpy 1.x wrote, which every numpy since reads.  Any
unpickler loads it (tests compare with ``pickle.load``); so does the streaming reader.
"""
from __future__ import annotations

import struct
from typing import BinaryIO, Iterable

import numpy as np

_PROTO4 = b"\x80\x04"
MARK, STOP, EMPTY_DICT, SETITEMS, MEMOIZE = b"(", b".", b"}", b"u", b"\x94"
TUPLE, TUPLE1, TUPLE3, REDUCE, BUILD = b"t", b"\x85", b"\x87", b"R", b"b"
NONE, NEWTRUE, NEWFALSE, STACK_GLOBAL = b"N", b"\x88", b"\x89", b"\x93"
#: dict items per SETITEMS batch (pickle.dump's own batch size)
BATCH = 1000


class DictPickleWriter:
    """``with DictPickleWriter(f) as w: w.add(key, value) ...`` writes ``{key: value, ...}``."""

    def __init__(self, f: BinaryIO):
        self.f = f
        self.memo: dict[object, int] = {}
        self.pending: list[tuple[int, object]] = []
        self.buf = bytearray(_PROTO4 + EMPTY_DICT)
        self._memoize("<top>")

    # -- memo -----------------------------------------------------------------------------
    def _memoize(self, key: object) -> None:
        self.memo[key] = len(self.memo)
        self.buf += MEMOIZE

    def _get(self, key: object) -> bool:
        i = self.memo.get(key)
        if i is None:
            return False
        self.buf += b"h" + bytes([i]) if i < 256 else b"j" + struct.pack("<I", i)
        return True

    # -- scalars ---------------------------------------------------------------------------
    def _int(self, v: int) -> None:
        b = self.buf
        if 0 <= v < 256:
            b += b"K" + bytes([v])
        elif 0 <= v < 65536:
            b += b"M" + struct.pack("<H", v)
        elif -(1 << 31) <= v < (1 << 31):
            b += b"J" + struct.pack("<i", v)
        else:
            raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
            b += b"\x8a" + bytes([len(raw)]) + raw

    def _str(self, s: str, memoize: bool = False) -> None:
        if memoize and self._get(("str", s)):
            return
        raw = s.encode("utf-8")
        self.buf += (b"\x8c" + bytes([len(raw)]) if len(raw) < 256
                     else b"X" + struct.pack("<I", len(raw))) + raw
        if memoize:
            self._memoize(("str", s))

    def _bytes(self, raw: bytes) -> None:
        n = len(raw)
        self.buf += (b"C" + bytes([n]) if n < 256 else
                     b"B" + struct.pack("<I", n) if n < (1 << 32) else
                     b"\x8e" + struct.pack("<Q", n))
        self.buf += raw

    def _small(self, v: object) -> None:
        """None, bool, int, str, or a tuple of those (the dtype state)."""
        if v is None:
            self.buf += NONE
        elif v is True or v is False:
            self.buf += NEWTRUE if v else NEWFALSE
        elif isinstance(v, int):
            self._int(v)
        elif isinstance(v, str):
            self._str(v, memoize=True)
        elif isinstance(v, tuple):
            self.buf += MARK
            for x in v:
                self._small(x)
            self.buf += TUPLE
        else:
            raise TypeError(f"cannot encode {type(v).__name__}")

    def _global(self, module: str, name: str) -> None:
        if self._get(("global", module, name)):
            return
        self._str(module, memoize=True)
        self._str(name, memoize=True)
        self.buf += STACK_GLOBAL
        self._memoize(("global", module, name))

    # -- numpy -----------------------------------------------------------------------------
    def _dtype(self, dt: np.dtype) -> None:
        key = ("dtype", dt.str)
        if self._get(key):
            return
        _, args, state = dt.__reduce__()
        self._global("numpy", "dtype")
        self._small(tuple(args))
        self.buf += REDUCE
        self._small(state)
        self.buf += BUILD
        self._memoize(key)

    def _array(self, a: np.ndarray) -> None:
        if a.dtype.hasobject:
            raise TypeError("object arrays are not written")
        a = np.ascontiguousarray(a)
        self._global("numpy.core.multiarray", "_reconstruct")
        self._global("numpy", "ndarray")
        self.buf += b"K\x00" + TUPLE1
        if not self._get(("bytes", b"b")):
            self._bytes(b"b")
            self._memoize(("bytes", b"b"))
        self.buf += TUPLE3 + REDUCE + MARK + b"K\x01"
        self.buf += MARK
        for n in a.shape:
            self._int(int(n))
        self.buf += TUPLE
        self._dtype(a.dtype)
        self.buf += NEWFALSE
        self._bytes(a.tobytes())
        self.buf += TUPLE + BUILD

    def _value(self, v: object) -> None:
        if isinstance(v, np.ndarray):
            self._array(v)
        elif isinstance(v, dict):
            self.buf += EMPTY_DICT
            if v:
                self.buf += MARK
                for k, x in v.items():
                    self._str(k, memoize=True)
                    self._value(x)
                self.buf += SETITEMS
        else:
            raise TypeError(f"cannot encode a value of type {type(v).__name__}")

    # -- items -----------------------------------------------------------------------------
    def add(self, key: int, value: object) -> None:
        self.pending.append((int(key), value))
        if len(self.pending) >= BATCH:
            self._flush_items()

    def add_many(self, items: Iterable[tuple[int, object]]) -> None:
        for k, v in items:
            self.add(k, v)

    def _flush_items(self) -> None:
        if self.pending:
            self.buf += MARK
            for k, v in self.pending:
                self._int(k)
                self._value(v)
            self.buf += SETITEMS
            self.pending.clear()
        self.f.write(self.buf)
        self.buf = bytearray()

    def close(self) -> None:
        self._flush_items()
        self.f.write(STOP)

    def __enter__(self) -> "DictPickleWriter":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
