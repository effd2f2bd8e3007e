"""Multi-index hashing for PDQ hashes, in numpy: Hamming range search over a million hashes in
well under a millisecond per query hash.

Norouzi, Punjani and Fleet's multi-index hashing (the scheme Meta's ``mih-query`` tool uses for
PDQ): a 256-bit hash is cut into 16 chunks of 16 bits; two hashes within Hamming distance
``r`` agree, by the pigeonhole principle, on some chunk up to ``r // 16`` bits. Each chunk has
a table (the row ids sorted by that chunk, and where each of the 65,536 chunk values starts),
so the candidates of a query are the rows in the buckets of its chunks and of their 1-bit
variants (``flips=1``: every hash within distance 31 is found) or 2-bit variants (``flips=2``:
within 47); each candidate's full distance is then computed and kept when within ``radius``.

Why not FAISS's ``IndexBinaryMultiHash``: on 1,000,000 random hashes it took 2 ms per query
hash with one bit flipped and about 20 ms with two (hash-map lookups and a set per query);
this layout, sorted arrays and vectorised bucket gathers, takes a fraction of a millisecond
with one flip (``benchmarks/match_speed.py`` measures it). Memory: 4 bytes per row and table
(64 bytes per hash) plus 8 MB of bucket starts.
"""

from __future__ import annotations

import itertools

import numpy as np
from numpy.typing import NDArray

from .pdq import hamming

__all__ = ["HashTables"]

TABLES = 16
CHUNK_BITS = 16


def _flip_masks(flips: int) -> NDArray[np.int64]:
    masks = [0]
    for f in range(1, flips + 1):
        for bits in itertools.combinations(range(CHUNK_BITS), f):
            masks.append(sum(1 << b for b in bits))
    return np.array(masks, np.int64)


class HashTables:
    """Multi-index hash tables over ``hashes`` (N, 32) uint8, rows numbered 0..N-1."""

    def __init__(self, hashes: NDArray[np.uint8]) -> None:
        h = np.ascontiguousarray(hashes, dtype=np.uint8)
        if h.ndim != 2 or h.shape[1] != 2 * TABLES:
            raise ValueError(f"hashes must be (N, {2 * TABLES}) uint8, not {h.shape}")
        self.hashes = h
        chunks = h.view(">u2")  # (N, 16): chunk t = bytes 2t, 2t+1
        self.order = np.empty((TABLES, len(h)), np.int32 if len(h) < 2**31 else np.int64)
        self.starts = np.empty((TABLES, 2**CHUNK_BITS + 1), np.int64)
        values = np.arange(2**CHUNK_BITS + 1)
        for t in range(TABLES):
            o = np.argsort(chunks[:, t], kind="stable")
            self.order[t] = o
            self.starts[t] = np.searchsorted(chunks[o, t], values)
        self._masks = {f: _flip_masks(f) for f in (0, 1, 2, 3)}

    def __len__(self) -> int:
        return len(self.hashes)

    @staticmethod
    def flips_for(radius: int) -> int:
        """Bits flipped per chunk so that every hash within ``radius`` is found."""
        return max(0, radius // TABLES)

    def range_search(self, queries: NDArray[np.uint8], radius: int, flips: int = 3
                     ) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
        """Rows within Hamming distance ``radius`` of each query hash (M, 32): arrays of
        (query number, row, distance), each pair once. Bits are flipped per chunk as
        ``radius`` needs, at most ``flips``; fewer than it needs make the search approximate:
        only hashes within ``16 * (flips + 1) - 1`` are sure to be found, farther ones when
        they share a chunk up to ``flips`` bits with the query."""
        q = np.ascontiguousarray(queries, dtype=np.uint8).reshape(-1, 2 * TABLES)
        empty = np.zeros(0, np.int64)
        if not len(q) or not len(self):
            return empty, empty, empty
        f = min(3, flips, self.flips_for(radius))
        probe = q.view(">u2").astype(np.int64)[:, :, None] ^ self._masks[f][None, None, :]
        table = np.broadcast_to(np.arange(TABLES)[None, :, None], probe.shape).ravel()
        qnum = np.broadcast_to(np.arange(len(q))[:, None, None], probe.shape).ravel()
        pr = probe.ravel()
        lo = self.starts[table, pr]
        cnt = self.starts[table, pr + 1] - lo
        nz = cnt > 0
        lo, cnt, table, qnum = lo[nz], cnt[nz], table[nz], qnum[nz]
        total = int(cnt.sum())
        if not total:
            return empty, empty, empty
        pos = np.repeat(lo - (np.cumsum(cnt) - cnt), cnt) + np.arange(total)
        rows = self.order[np.repeat(table, cnt), pos].astype(np.int64)
        qq = np.repeat(qnum, cnt)
        d = hamming(self.hashes[rows], q[qq])
        keep = d <= radius
        qq, rows, d = qq[keep], rows[keep], d[keep]
        # a hash close on several chunks is found in several tables: once each
        key = np.unique(qq * len(self) + rows, return_index=True)[1]
        return qq[key], rows[key], d[key].astype(np.int64)

