"""Stream the items of a pickled dict without building the dict.

RecFlow's day pickles map ~250,000 request ids to numpy arrays (or to dicts of arrays); loaded
whole they become millions of Python objects and several GB.  :func:`iter_pickled_items` walks
the pickle's opcodes itself and hands out the top-level dict's ``(key, value)`` pairs batch by
batch (pickle writes dict items in batches of up to 1,000), building each value with the same
restricted set of globals as :func:`safe_load_pickle` (plain containers, numpy arrays, RecFlow's
defaultdict factories): nothing else is ever constructed, and nothing is kept once a batch has
been handed out.

Every opcode of protocols 0-5 that plain containers and numpy arrays use is supported; opcodes
that need extension registries, persistent ids or out-of-band buffers are refused (a
:class:`DataError`, like the standard loader's refusal).  Objects referenced from the memo
across batches (strings, dtypes, small values) are kept; arrays, containers and long strings
are dropped from the memo after their batch.  A pickle that refers back to one of those in a
later batch (never written by ``pickle.dump`` of distinct arrays) raises :class:`SharedObject`,
and callers fall back to loading the file whole.
"""
from __future__ import annotations

import _compat_pickle
import codecs
import os
import struct
from typing import Any, Iterator

import numpy as np

from .errors import DataError
from .safe_pickle import _allowed, open_pickle

#: bytes read from the file at a time
CHUNK = 1 << 22
#: memo entries kept across batches: these types (and short str/bytes)
_KEEP_TYPES = (int, float, bool, type(None), np.dtype, type, complex)
_SHORT = 256


class SharedObject(Exception):
    """The pickle refers back to an object of an earlier batch that was not kept."""


class _Mark:
    __slots__ = ()


_MARK = _Mark()
_S_I = struct.Struct("<i")
_S_H = struct.Struct("<H")
_S_I4 = struct.Struct("<I")
_S_Q = struct.Struct("<Q")
_S_D = struct.Struct(">d")
_SIZES = {2: _S_H, 4: _S_I4, 8: _S_Q}


def _keep(obj: Any) -> bool:
    if isinstance(obj, (str, bytes)):
        return len(obj) <= _SHORT
    if isinstance(obj, tuple):
        return len(obj) <= 8 and all(_keep(x) for x in obj)
    return isinstance(obj, _KEEP_TYPES) or callable(obj) and not isinstance(obj, np.ndarray)


def _find_class(module: str, name: str, path: str):
    try:
        return _allowed()[(module, name)]
    except KeyError:
        raise DataError(
            f"{path}: refusing to unpickle {module}.{name}: RecFlow pickles may only hold plain "
            "containers, numpy arrays and the utils.defaultdict_tuple/defaultdict_str factories "
            "(a pickle that names anything else could run arbitrary code)") from None


def _build(inst: Any, state: Any) -> None:
    setstate = getattr(inst, "__setstate__", None)
    if setstate is not None and not isinstance(inst, dict):
        setstate(state)
        return
    slotstate = None
    if isinstance(state, tuple) and len(state) == 2:
        state, slotstate = state
    if state:
        inst.__dict__.update(state)
    if slotstate:
        for k, v in slotstate.items():
            setattr(inst, k, v)


def iter_pickled_items(path: str | os.PathLike) -> Iterator[list[tuple[Any, Any]]]:
    """Yield batches (lists) of the top-level dict's ``(key, value)`` pairs, in file order.

    Raises :class:`DataError` naming ``path`` for a missing, corrupt, truncated or unsafe file
    or one whose top-level object is not a dict, and :class:`SharedObject` (see module doc).
    """
    path = os.fspath(path)
    with open_pickle(path, buffering=0) as f:
        try:
            yield from _run(f, path)
        except (DataError, SharedObject):
            raise
        except EOFError:
            raise DataError(f"{path}: truncated pickle (unexpected end of file)") from None
        except Exception as e:  # bad opcodes, wrong arguments, MemoryError, ...
            raise DataError(f"{path}: corrupt pickle ({type(e).__name__}: {e})") from None


def _run(f, path: str) -> Iterator[list[tuple[Any, Any]]]:  # noqa: C901 - one opcode loop
    data = b""
    pos = 0
    end = 0
    stack: list[Any] = []
    marks: list[int] = []
    memo: dict[int, Any] = {}
    fresh: list[int] = []                 # memo indices set since the last batch
    dropped: set[int] = set()
    n_memo = 0
    top: Any = None                       # the top-level dict, once created
    proto = 0
    saw_top_items = False

    def fill(need: int) -> None:
        nonlocal data, pos, end
        chunk = f.read(max(CHUNK, need))
        data = data[pos:] + chunk
        pos = 0
        end = len(data)
        if end < need:
            raise EOFError

    def more() -> None:
        """Read further (for newline-terminated arguments); EOFError at the end of the file."""
        nonlocal data, pos, end
        chunk = f.read(max(CHUNK, end - pos))
        if not chunk:
            raise EOFError
        data = data[pos:] + chunk
        pos = 0
        end = len(data)

    def line_end(skip: int = 0) -> int:
        """Index of the newline ending the argument at ``pos`` (``skip`` lines further)."""
        while True:
            nl = data.find(b"\n", pos)
            for _ in range(skip):
                nl = data.find(b"\n", nl + 1) if nl >= 0 else -1
            if nl >= 0:
                return nl
            more()

    def payload(width: int) -> bytes:
        """The bytes of an argument prefixed by its length (1, 2, 4 or 8 bytes, unsigned)."""
        nonlocal pos
        n = data[pos] if width == 1 else _SIZES[width].unpack_from(data, pos)[0]
        pos += width
        if end - pos < n:
            fill(n)
        out = data[pos:pos + n]
        pos += n
        return out

    def memo_get(i: int) -> Any:
        try:
            return memo[i]
        except KeyError:
            if i in dropped:
                raise SharedObject(f"{path}: memo entry {i} of an earlier batch is referenced "
                                   "again") from None
            raise DataError(f"{path}: corrupt pickle (memo key {i} not found)") from None

    def memo_put(i: int, obj: Any) -> None:
        nonlocal n_memo
        memo[i] = obj
        fresh.append(i)
        if i >= n_memo:
            n_memo = i + 1

    def pop_mark() -> list[Any]:
        m = marks.pop()
        items = stack[m:]
        del stack[m:]
        return items

    def prune() -> None:
        for i in fresh:
            obj = memo.get(i)
            if obj is not None and not _keep(obj):
                del memo[i]
                dropped.add(i)
        fresh.clear()

    def set_items(target: Any, items: list[Any]):
        """SETITEM(S): returns the pairs to hand out when ``target`` is the top-level dict."""
        pairs = list(zip(items[::2], items[1::2]))
        if target is top:
            return pairs
        if type(target) is dict:
            target.update(pairs)
        else:
            for k, v in pairs:
                target[k] = v
        return None

    while True:
        if end - pos < 16:                                # every fixed-size argument fits
            data = data[pos:] + f.read(CHUNK)
            pos = 0
            end = len(data)
            if end == 0:
                raise EOFError
        op = data[pos]
        pos += 1
        if op == 0x94:                                    # MEMOIZE
            memo_put(n_memo, stack[-1])
        elif op == 0x68:                                  # BINGET
            stack.append(memo_get(data[pos]))
            pos += 1
        elif op == 0x4B:                                  # BININT1
            stack.append(data[pos])
            pos += 1
        elif op == 0x8C:                                  # SHORT_BINUNICODE
            stack.append(str(payload(1), "utf-8", "surrogatepass"))
        elif op == 0x28:                                  # MARK
            marks.append(len(stack))
        elif op == 0x85:                                  # TUPLE1
            stack[-1] = (stack[-1],)
        elif op == 0x86:                                  # TUPLE2
            b = stack.pop()
            stack[-1] = (stack[-1], b)
        elif op == 0x87:                                  # TUPLE3
            c = stack.pop()
            b = stack.pop()
            stack[-1] = (stack[-1], b, c)
        elif op == 0x74:                                  # TUPLE
            stack.append(tuple(pop_mark()))
        elif op == 0x52:                                  # REDUCE
            args = stack.pop()
            stack[-1] = stack[-1](*args)
            if top is None and len(stack) == 1 and isinstance(stack[0], dict):
                top = stack[0]                            # e.g. a defaultdict
        elif op == 0x62:                                  # BUILD
            state = stack.pop()
            _build(stack[-1], state)
        elif op == 0x89:                                  # NEWFALSE
            stack.append(False)
        elif op == 0x88:                                  # NEWTRUE
            stack.append(True)
        elif op in (0x43, 0x42, 0x8E, 0x96):              # SHORT_BINBYTES, BINBYTES(8), BYTEARRAY8
            b = payload(1 if op == 0x43 else 4 if op == 0x42 else 8)
            stack.append(bytearray(b) if op == 0x96 else b)
        elif op == 0x4A:                                  # BININT
            stack.append(_S_I.unpack_from(data, pos)[0])
            pos += 4
        elif op == 0x4D:                                  # BININT2
            stack.append(_S_H.unpack_from(data, pos)[0])
            pos += 2
        elif op == 0x8A:                                  # LONG1
            stack.append(int.from_bytes(payload(1), "little", signed=True))
        elif op == 0x4E:                                  # NONE
            stack.append(None)
        elif op == 0x7D:                                  # EMPTY_DICT
            stack.append({})
            if top is None and len(stack) == 1:
                top = stack[0]
        elif op == 0x75 or op == 0x73:                    # SETITEMS, SETITEM
            if op == 0x75:
                items = pop_mark()
            else:
                items = stack[-2:]
                del stack[-2:]
            if len(items) % 2:
                raise DataError(f"{path}: corrupt pickle (odd number of dict items)")
            out = set_items(stack[-1], items)
            if out is not None:
                saw_top_items = True
                del items
                yield out
                del out
                prune()
        elif op == 0x95:                                  # FRAME (a hint only)
            pos += 8
        elif op == 0x93:                                  # STACK_GLOBAL
            name = stack.pop()
            module = stack.pop()
            if not isinstance(name, str) or not isinstance(module, str):
                raise DataError(f"{path}: corrupt pickle (STACK_GLOBAL requires str)")
            stack.append(_find_class(module, name, path))
        elif op == 0x63:                                  # GLOBAL
            nl2 = line_end(1)
            nl = data.find(b"\n", pos)
            module = data[pos:nl].decode("utf-8")
            name = data[nl + 1:nl2].decode("utf-8")
            pos = nl2 + 1
            if proto < 3:                                 # Python 2 names, as pickle maps them
                if (module, name) in _compat_pickle.NAME_MAPPING:
                    module, name = _compat_pickle.NAME_MAPPING[(module, name)]
                elif module in _compat_pickle.IMPORT_MAPPING:
                    module = _compat_pickle.IMPORT_MAPPING[module]
            stack.append(_find_class(module, name, path))
        elif op == 0x71:                                  # BINPUT
            memo_put(data[pos], stack[-1])
            pos += 1
        elif op == 0x72:                                  # LONG_BINPUT
            memo_put(_S_I4.unpack_from(data, pos)[0], stack[-1])
            pos += 4
        elif op == 0x6A:                                  # LONG_BINGET
            stack.append(memo_get(_S_I4.unpack_from(data, pos)[0]))
            pos += 4
        elif op == 0x58 or op == 0x8D:                    # BINUNICODE, BINUNICODE8
            stack.append(str(payload(4 if op == 0x58 else 8), "utf-8", "surrogatepass"))
        elif op == 0x5D:                                  # EMPTY_LIST
            stack.append([])
        elif op == 0x61:                                  # APPEND
            v = stack.pop()
            stack[-1].append(v)
        elif op == 0x65:                                  # APPENDS
            items = pop_mark()
            stack[-1].extend(items)
        elif op == 0x29:                                  # EMPTY_TUPLE
            stack.append(())
        elif op == 0x8F:                                  # EMPTY_SET
            stack.append(set())
        elif op == 0x90:                                  # ADDITEMS
            items = pop_mark()
            stack[-1].update(items)
        elif op == 0x91:                                  # FROZENSET
            stack.append(frozenset(pop_mark()))
        elif op == 0x6C:                                  # LIST
            stack.append(list(pop_mark()))
        elif op == 0x64:                                  # DICT
            items = pop_mark()
            d = dict(zip(items[::2], items[1::2]))
            stack.append(d)
            if top is None and len(stack) == 1:
                top = d
                if d:
                    saw_top_items = True
                    yield list(d.items())
                    d.clear()
        elif op == 0x81:                                  # NEWOBJ
            args = stack.pop()
            cls = stack.pop()
            stack.append(cls.__new__(cls, *args))
            if top is None and len(stack) == 1 and isinstance(stack[0], dict):
                top = stack[0]
        elif op == 0x92:                                  # NEWOBJ_EX
            kwargs = stack.pop()
            args = stack.pop()
            cls = stack.pop()
            stack.append(cls.__new__(cls, *args, **kwargs))
        elif op == 0x30:                                  # POP
            if marks and marks[-1] == len(stack):
                marks.pop()
            else:
                stack.pop()
        elif op == 0x31:                                  # POP_MARK
            pop_mark()
        elif op == 0x32:                                  # DUP
            stack.append(stack[-1])
        elif op == 0x47:                                  # BINFLOAT
            stack.append(_S_D.unpack_from(data, pos)[0])
            pos += 8
        elif op in (0x8B, 0x54):                          # LONG4, BINSTRING: signed sizes
            if _S_I.unpack_from(data, pos)[0] < 0:
                raise DataError(f"{path}: corrupt pickle (negative size)")
            b = payload(4)
            stack.append(int.from_bytes(b, "little", signed=True) if op == 0x8B else b.decode("ascii"))
        elif op == 0x55:                                  # SHORT_BINSTRING (py2 str)
            stack.append(payload(1).decode("ascii"))
        elif op in (0x49, 0x4C, 0x46, 0x56, 0x53, 0x70, 0x67):  # text opcodes of protocol 0
            nl = line_end()
            line = data[pos:nl]
            pos = nl + 1
            if op == 0x49:                                # INT (incl. the bool forms)
                stack.append({b"01": True, b"00": False}.get(line) if line in (b"01", b"00")
                             else int(line))
            elif op == 0x4C:                              # LONG
                stack.append(int(line.rstrip(b"L")))
            elif op == 0x46:                              # FLOAT
                stack.append(float(line))
            elif op == 0x56:                              # UNICODE
                stack.append(str(line, "raw-unicode-escape"))
            elif op == 0x53:                              # STRING
                if len(line) < 2 or line[:1] != line[-1:] or line[:1] not in (b"'", b'"'):
                    raise DataError(f"{path}: corrupt pickle (bad STRING quoting)")
                stack.append(codecs.escape_decode(line[1:-1])[0].decode("ascii"))
            elif op == 0x70:                              # PUT
                memo_put(int(line), stack[-1])
            else:                                         # GET
                stack.append(memo_get(int(line)))
        elif op == 0x80:                                  # PROTO
            proto = data[pos]
            if proto > 5:
                raise DataError(f"{path}: corrupt pickle (unsupported protocol {proto})")
            pos += 1
        elif op == 0x2E:                                  # STOP
            if len(stack) != 1 or marks:
                raise DataError(f"{path}: corrupt pickle (STOP with an unbalanced stack)")
            result = stack.pop()
            if result is not top:
                if isinstance(result, dict) and not saw_top_items:   # e.g. built by REDUCE
                    yield list(result.items())
                    return
                raise DataError(f"{path}: expected a dict at the top level, found "
                                f"{type(result).__name__}")
            return
        else:
            raise DataError(f"{path}: corrupt pickle or unsupported opcode 0x{op:02x} at byte "
                            f"{f.tell() - end + pos - 1} (persistent ids, extension codes and "
                            "out-of-band buffers are not accepted)")
