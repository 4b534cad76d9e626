"""Redis's CRC64 (Jones): the polynomial 0xad93d23594c935a9, reflected, init 0, no final xor (check value:
crc64("123456789") == 0xe9c6d914c4b8d9ca), which every RDB file and every DUMP payload ends with.

A byte-at-a-time Python loop runs at ~10 MB/s, far too slow for multi-GB RDBs, so `Crc64` splits each block into
16,384 interleaved lanes, runs them side by side in numpy with a 16-bit table (two bytes per step), and folds the
lane CRCs together with precomputed "append n zero bytes" operators (CRC linearity). ~400-500 MB/s on one core;
see bench/bench_redis_snapshot.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

_POLY_REFLECTED = 0x95AC9329AC4BC9B5  # 0xad93d23594c935a9 bit-reversed


def _byte_table() -> list[int]:
    table = []
    for b in range(256):
        c = b
        for _ in range(8):
            c = (c >> 1) ^ _POLY_REFLECTED if c & 1 else c >> 1
        table.append(c)
    return table


_T8_LIST = _byte_table()


@dataclass(frozen=True)
class _Tables:
    """numpy and the lane tables, built on the first large CRC: every run loads this module (the code location
    imports the Redis domain), most never compute a CRC64, and numpy costs ~50 ms and ~15 MB."""

    np: object
    t8: np.ndarray
    ff: np.uint64
    t16: np.ndarray
    byte_shifts: np.ndarray
    basis: np.ndarray


@cache
def _tables() -> _Tables:
    import numpy

    t8 = numpy.array(_T8_LIST, dtype=numpy.uint64)
    ff = numpy.uint64(0xFF)
    i16 = numpy.arange(65536, dtype=numpy.uint64)
    t16 = t8[(t8[i16 & ff] ^ (i16 >> numpy.uint64(8))) & ff] ^ (t8[i16 & ff] >> numpy.uint64(8))
    shifts = numpy.arange(8, dtype=numpy.uint64) * numpy.uint64(8)
    basis = (numpy.arange(256, dtype=numpy.uint64)[None, :] << shifts[:, None]).ravel()
    return _Tables(numpy, t8, ff, t16, shifts, basis)


_ZERO_OPS: dict[int, np.ndarray] = {}

LANES = 16384
UNIT = LANES * 2  # bytes: every lane gets an even number of bytes (16-bit steps)


def crc64_py(data: bytes | memoryview, crc: int = 0) -> int:
    """Byte-at-a-time reference (small inputs and tails)."""
    table = _T8_LIST
    for b in bytes(data):
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


def _apply(op: np.ndarray, states: np.ndarray) -> np.ndarray:
    """Apply a linear 'append zero bytes' operator (8 tables of 256) to an array of CRC states."""
    t = _tables()
    out = op[0][states & t.ff]
    for k in range(1, 8):
        out ^= op[k][(states >> t.byte_shifts[k]) & t.ff]
    return out


def _zero_op(n: int) -> np.ndarray:
    """Operator mapping a CRC state to the state after n more zero bytes (built by squaring)."""
    op = _ZERO_OPS.get(n)
    if op is None:
        if n == 1:
            t = _tables()
            op = (t.t8[t.basis & t.ff] ^ (t.basis >> t.np.uint64(8))).reshape(8, 256)
        elif n % 2:
            op = _apply(_zero_op(1), _zero_op(n - 1).ravel()).reshape(8, 256)
        else:
            half = _zero_op(n // 2)
            op = _apply(half, half.ravel()).reshape(8, 256)
        _ZERO_OPS[n] = op
    return op


def _crc64_lanes(block: memoryview, crc: int, lanes: int) -> int:
    """CRC of `block` (a multiple of 2*lanes bytes) continuing from `crc`."""
    t = _tables()
    np, per_lane = t.np, len(block) // lanes
    words = np.frombuffer(block, dtype="<u2").reshape(lanes, per_lane // 2).T.copy()
    state = np.zeros(lanes, dtype=np.uint64)
    state[0] = crc
    mask, sixteen = np.uint64(0xFFFF), np.uint64(16)
    idx = np.empty(lanes, dtype=np.uint64)
    looked = np.empty(lanes, dtype=np.uint64)
    for row in words:
        np.bitwise_xor(state, row, out=idx)
        np.bitwise_and(idx, mask, out=idx)
        np.right_shift(state, sixteen, out=state)
        np.take(t.t16, idx, out=looked)
        np.bitwise_xor(state, looked, out=state)
    length = per_lane  # fold neighbours: crc(A || B) = zeros(len B) applied to crc(A), xor crc(B)
    while len(state) > 1:
        state = _apply(_zero_op(length), state[0::2]) ^ state[1::2]
        length *= 2
    return int(state[0])


def crc64(data: bytes | memoryview, crc: int = 0) -> int:
    """Redis's crc64 of `data`, continuing from `crc`."""
    c = Crc64(crc)
    c.update(data)
    return c.value


class Crc64:
    """Streaming Redis CRC64. Feed any chunk sizes; big chunks (>= 32 KiB) run at numpy speed."""

    def __init__(self, crc: int = 0):
        self._crc = crc
        self._carry = bytearray()

    def update(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if self._carry:
            self._carry += data
            buf = memoryview(bytes(self._carry))
            self._carry.clear()
        else:
            buf = memoryview(data).cast("B")
        usable = len(buf) - len(buf) % UNIT
        if usable:
            self._crc = _crc64_lanes(buf[:usable], self._crc, LANES)
        if usable < len(buf):
            self._carry += buf[usable:]

    @property
    def value(self) -> int:
        crc, rest = self._crc, memoryview(bytes(self._carry))
        small = len(rest) - len(rest) % 512
        if small:
            crc = _crc64_lanes(rest[:small], crc, 256)
        return crc64_py(rest[small:], crc)
