"""Known-photo search at scale: exact against approximate, on synthetic vectors and hashes.

Builds :class:`wildvision.match.MatchIndex` es of ``--size`` entries (default 1,000,000) of
``--dim``-dimensional embeddings (default 1280, the default model's) and random PDQ hashes,
with the ``exact`` engine (FAISS ``IndexFlatIP`` + brute-force binary index) and the ``ivf``
engine (IVF with 8-bit scalar quantisation + multi-index hashing, what ``auto`` uses from
``APPROX_MIN`` entries), and reports side by side, in one process:

- build time (engine construction, including IVF training) and the memory it adds (RSS);
- query time per photo (``MatchIndex.lookup`` of one photo: embedding search, Hamming search
  of the hash and its mirror, exact re-scoring of the candidates), and of the embedding search
  (FAISS) and the hash search (multi-index hash tables, or FAISS's brute-force binary index for
  the exact engine) alone;
- recall of the approximate engine against the exact one: the same top match for near-copy
  queries (a database vector plus noise, a hash with up to 20 flipped bits), and the overlap of
  the top 10 for unrelated queries.

The embeddings are a mixture of ``--clusters`` Gaussian clusters (photos of one kind are
similar), unit-normalised; random vectors in 1280 dimensions would be all but orthogonal and
flatter the exact search's competitor. ``--views V`` stores V extra views per photo (as
``build_index(views="crops")`` does: about 5.4 per photo), each a noisy copy of its photo's
embedding with a random hash; the searches then run over photos x (1 + V) rows. Threads:
``--threads`` (default 2) for FAISS.

    python benchmarks/match_speed.py                       # 1M photos, no views: ~8 GB RAM
    python benchmarks/match_speed.py --size 150000 --views 5   # 900k rows: ~7 GB RAM
    python benchmarks/match_speed.py --size 20000          # a quick check
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from wildvision.match import MatchIndex
from wildvision.match.index import APPROX_HASH_FLIPS


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic(n: int, dim: int, clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, dim)).astype(np.float32)
    emb = np.empty((n, dim), np.float16)
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        x = centers[rng.integers(0, clusters, m)] + rng.normal(scale=1.0, size=(m, dim)
                                                               ).astype(np.float32)
        emb[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    hashes = rng.integers(0, 256, (n, 32), dtype=np.uint8)
    return emb, hashes


def flip_bits(h: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    out = h.copy()
    for b in rng.choice(256, size=k, replace=False):
        out[b // 8] ^= np.uint8(1 << (7 - b % 8))
    return out


def load_real(folder: str) -> dict[str, Any]:
    """The photos (not their views) of match_robustness.py's cached features: the indexed
    ones, and the edited copies with the indexed photo each came from."""
    def photos(name: str) -> dict[str, np.ndarray]:
        [path] = Path(folder).glob(f"{name}-*.npz")
        with np.load(path) as z:
            keep = z["kind"] == 0
            return {k: z[k][keep] for k in ("embeddings", "hashes", "mirror", "quality",
                                               "owner")}
    idx, cp = photos("indexed"), photos("copies")
    # match_robustness.py makes 7 copies (one per edit kind) of each readable indexed photo,
    # in order: copy j comes from the (j // 7)-th indexed photo row
    truth = cp["owner"] // 7
    keys = [(h.tobytes(), m.tobytes(), int(q))
            for h, m, q in zip(cp["hashes"], cp["mirror"], cp["quality"], strict=True)]
    return {"emb": idx["embeddings"].astype(np.float16), "hashes": idx["hashes"],
            "queries": cp["embeddings"].astype(np.float32), "keys": keys, "truth": truth}


def time_lookups(index: MatchIndex, keys: list[Any], q: np.ndarray) -> tuple[float, list[Any]]:
    out = []
    t0 = time.perf_counter()
    for i in range(len(keys)):
        out.append(index.lookup([keys[i]], q[i:i + 1])[0])
    return (time.perf_counter() - t0) / len(keys), out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--clusters", type=int, default=2000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--nprobe", default="8,16,32",
                    help="IVF lists searched per query, comma-separated (each measured)")
    ap.add_argument("--build-threads", type=int, default=None,
                    help="FAISS threads while building (default: --threads)")
    ap.add_argument("--views", type=int, default=0, help="extra views per photo")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--real", default=None, metavar="DIR",
                    help="a benchmarks/match_robustness.py --out folder: its indexed photos "
                         "(real embeddings and hashes) replace the first synthetic rows, "
                         "and its edited copies are queries too")
    args = ap.parse_args(argv)

    import faiss

    nprobes = [int(v) for v in args.nprobe.split(",")]
    faiss.omp_set_num_threads(args.build_threads or args.threads)
    rng = np.random.default_rng(args.seed + 1)
    base = rss_mb()
    t0 = time.perf_counter()
    emb, hashes = synthetic(args.size, args.dim, args.clusters, args.seed)
    gen_s = time.perf_counter() - t0
    real = load_real(args.real) if args.real else None
    if real is not None:  # real photos' rows first, the synthetic ones around them
        nr = len(real["emb"])
        emb[:nr], hashes[:nr] = real["emb"], real["hashes"]
        pick = np.random.default_rng(args.seed + 2).choice(
            len(real["truth"]), min(args.queries, len(real["truth"])), replace=False)
        real = {**real, "queries": real["queries"][pick],
                "keys": [real["keys"][i] for i in pick], "truth": real["truth"][pick]}
    refs = np.char.add("r", np.arange(args.size).astype(str)).tolist()
    head = {"embedding_dim": args.dim}
    labels, quality = ["x"] * args.size, np.full(args.size, 100, np.uint8)
    views = None
    if args.views:
        nv = args.size * args.views
        owner = np.repeat(np.arange(args.size), args.views)
        vemb = np.empty((nv, args.dim), np.float16)
        for s in range(0, nv, 100_000):
            x = emb[owner[s:s + 100_000]].astype(np.float32)
            x += rng.normal(scale=0.03, size=x.shape).astype(np.float32)
            vemb[s:s + len(x)] = x / np.linalg.norm(x, axis=1, keepdims=True)
        views = {"view_owner": owner,
                 "view_hashes": rng.integers(0, 256, (nv, 32), dtype=np.uint8),
                 "view_quality": np.full(nv, 100, np.uint8), "view_embeddings": vemb}
    exact, approx = (MatchIndex(head, references=refs, labels=labels, groups=labels,
                                hashes=hashes, quality=quality, embeddings=emb, views=views,
                                engine=engine, nprobe=nprobes[0])  # they share their arrays
                     for engine in ("exact", "ivf"))
    data_mb = rss_mb() - base

    # queries: near copies of database entries, and unrelated photos
    probe = rng.choice(args.size, args.queries, replace=False)
    near = emb[probe].astype(np.float32) + rng.normal(scale=0.02, size=(args.queries, args.dim)
                                                      ).astype(np.float32)
    near_keys = [(flip_bits(hashes[i], int(rng.integers(0, 21)), rng).tobytes(),
                  rng.integers(0, 256, 32, dtype=np.uint8).tobytes(), 100) for i in probe]
    far_hash_keys = [(flip_bits(hashes[i], int(rng.integers(32, 48)), rng).tobytes(),
                      rng.integers(0, 256, 32, dtype=np.uint8).tobytes(), 100) for i in probe]
    far = rng.normal(size=(args.queries, args.dim)).astype(np.float32)
    far_keys = [(rng.integers(0, 256, 32, dtype=np.uint8).tobytes(),) * 2 + (100,)
                for _ in range(args.queries)]

    report: dict[str, Any] = {
        "command": "python benchmarks/match_speed.py " + " ".join(argv or sys.argv[1:]),
        "size": args.size, "views_per_photo": args.views,
        "rows": args.size * (1 + args.views), "dim": args.dim, "threads": args.threads,
        "faiss": faiss.__version__, "data_generation_s": round(gen_s, 1),
        "index_arrays_mb": round(data_mb, 1),
        "engines": {},
    }
    results: dict[str, Any] = {}
    runs = [("exact", exact, 0)] + [(f"ivf-nprobe{p}", approx, p) for p in nprobes]
    for name, index, nprobe in runs:
        before = rss_mb()
        t0 = time.perf_counter()
        faiss.omp_set_num_threads(args.build_threads or args.threads)
        eng = index._get_engines()
        faiss.omp_set_num_threads(args.threads)
        build_s = time.perf_counter() - t0
        added = rss_mb() - before
        if nprobe:
            index.nprobe = eng.emb.nprobe = nprobe
        # warm-up, then timed single-photo lookups
        index.lookup([near_keys[0]], near[:1])
        t_near, got_near = time_lookups(index, near_keys, near)
        t_far, _ = time_lookups(index, far_keys, far)
        qn = near / np.linalg.norm(near, axis=1, keepdims=True)
        t0 = time.perf_counter()
        for i in range(args.queries):
            eng.emb.search(qn[i:i + 1], 10)
        t_emb = (time.perf_counter() - t0) / args.queries
        # the hash and its mirror image, as a lookup searches them
        qh = np.frombuffer(b"".join(k[0] + k[1] for k in near_keys), np.uint8).reshape(-1, 32)
        t0 = time.perf_counter()
        for i in range(args.queries):
            if eng.hash_tables is not None:
                eng.hash_tables.range_search(qh[2 * i:2 * i + 2], index.hash_threshold,
                                             flips=APPROX_HASH_FLIPS)
            else:
                eng.hashes.range_search(qh[2 * i:2 * i + 2], index.hash_threshold + 1)
        t_hash = (time.perf_counter() - t0) / args.queries
        # hash-only lookups of copies 32-47 bits away: exact finds every one, the approximate
        # tables those sharing a chunk within a bit with the query
        hash_far = index.lookup(far_hash_keys, None)
        _, top10_far = eng.emb.search(far / np.linalg.norm(far, axis=1, keepdims=True), 10)
        results[name] = {"near": got_near, "far10": top10_far}
        if real is not None:
            t_real, got_real = time_lookups(index, real["keys"], real["queries"])
            results[name]["real"] = got_real
            results[name]["real_ms"] = round(1000 * t_real, 3)
        rec_hash = float(np.mean([bool(g) and g[0].reference == f"r{t}"
                                  for g, t in zip(hash_far, probe, strict=True)]))
        report["engines"][name] = {
            "kind": eng.emb_kind,
            "build_s": round(build_s, 2),
            "engine_rss_mb": round(added, 1),
            "engine_bytes_per_photo": round(added * 1024 * 1024 / args.size, 1),
            "lookup_ms_near_copy": round(1000 * t_near, 3),
            "lookup_ms_unrelated": round(1000 * t_far, 3),
            "faiss_embedding_search_ms": round(1000 * t_emb, 3),
            "hash_search_ms": round(1000 * t_hash, 3),
            "hash_only_found_32_to_47_bits": rec_hash,
        }
        if name == "exact":
            index._engines = None  # free it before the next engine is built
            del eng
    truth = [f"r{i}" for i in probe]
    ex = results["exact"]
    for name, _, nprobe in runs:
        got = results[name]["near"]
        rec = report["engines"][name]
        rec["near_copy_top1_correct"] = float(np.mean(
            [bool(g) and g[0].reference == t for g, t in zip(got, truth, strict=True)]))
        if nprobe:
            rec["same_top_match_as_exact_near_copies"] = float(np.mean(
                [bool(a) == bool(b) and (not a or a[0].reference == b[0].reference)
                 for a, b in zip(ex["near"], got, strict=True)]))
            rec["top10_overlap_with_exact_unrelated"] = float(np.mean(
                [len(set(a) & set(b)) / 10 for a, b in zip(ex["far10"], results[name]["far10"],
                                                             strict=True)]))
            for k in ("build_s", "engine_rss_mb", "engine_bytes_per_photo"):  # built once
                rec[k] = report["engines"][runs[1][0]][k]
        if real is not None:
            rec["lookup_ms_real_copies"] = results[name]["real_ms"]
            rec["real_copies_top1_correct"] = float(np.mean(
                [bool(g) and g[0].reference == f"r{t}"
                 for g, t in zip(results[name]["real"], real["truth"], strict=True)]))
            if nprobe:
                rec["real_copies_same_top_match_as_exact"] = float(np.mean(
                    [bool(a) == bool(b) and (not a or a[0].reference == b[0].reference)
                     for a, b in zip(ex["real"], results[name]["real"], strict=True)]))
    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
