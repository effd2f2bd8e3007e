"""Known-photo matching on real photos: recall@1 of edited copies and false matches against
unrelated photos, for PDQ alone, the model embedding alone and both, side by side, with and
without the views an index stores (wildvision.match.views: the photo without its border, and
crops).

Indexes ``--indexed`` photos drawn from ``../shared/data/manifest.csv``, makes one edited copy
of each per edit kind (scale 0.3-2x, JPEG quality 30-95, a crop keeping 60-95 % of the area, a
horizontal flip, a text overlay, a small rotation, a screenshot-style border; every copy saved
as JPEG like a re-posted listing) and queries them; ``--distractors`` other photos of the
manifest (10,000 by default; 0: all) are queries that must not match. Thresholds are chosen on
one half of the unrelated photos (the loosest with <= 0.1 % of them matching; for the combined
rule, the hash threshold first, then the similarity threshold that keeps the union within
0.1 %) and false matches are reported on the other half. The combined rule is reported with
and without the local-feature check of near candidates (wildvision.match.local: keypoints,
one rotation + scale + shift), which the index's defaults use. Some "unrelated" photos are the
same photo as an indexed one (the public sources hold recoloured, re-captioned or cropped
duplicates); ``benchmarks/match_duplicates.csv`` lists the pairs found, checked by eye. They
are left out when choosing thresholds, and false matches are reported both with them
counted as false and without them. Each photo goes through the same
decode and preprocessing as ``classify``. A check at the end runs the real
``Classifier(match_index=...)`` on some copies and compares its matches with the offline
evaluation.

    nice -n 19 python benchmarks/match_robustness.py --out runs/match_robustness

Features are cached in ``--out`` (re-running reuses them). Output: ``report.json`` and
``report.md`` in ``--out``, the table on stdout.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

import wildvision as wv
from wildvision.imaging import decode_image
from wildvision.match import MatchIndex
from wildvision.match import local as lf
from wildvision.match.index import VERIFY_FLOOR, VERIFY_TOP, model_fingerprint
from wildvision.match.pdq import MIN_QUALITY, hamming, pdq_hash
from wildvision.match.views import index_views, query_views, trim_box
from wildvision.preprocess import preprocess_image

EDITS = ("scale", "jpeg", "crop", "hflip", "text", "rotate", "border")
TARGET_FMR = 0.001
FEATURES_VERSION = 4  # bump when the features (views) change: the cache is keyed on it
HASH_CAP = 47  # the largest hash threshold the multi-index hash search finds exactly
LOCAL_VERSION = 1  # bump when the local features or their check change
LOCAL_TOP = VERIFY_TOP + 2  # candidates checked per query here (the index picks VERIFY_TOP of
# those that pass no threshold; with at most 2 passing ones among the top 5 this is the same)
DUPLICATES = Path(__file__).with_name("match_duplicates.csv")


# -- edits ---------------------------------------------------------------------------------------
def _jpeg_bytes(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=max(8, size))
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def edit(img: Image.Image, kind: str, rng: np.random.Generator) -> tuple[bytes, str]:
    """One edited copy as JPEG bytes, and what was done."""
    w, h = img.size
    if kind == "scale":
        f = float(rng.uniform(0.3, 2.0))
        out = img.resize((max(8, round(w * f)), max(8, round(h * f))),
                         Image.Resampling.BICUBIC)
        return _jpeg_bytes(out), f"x{f:.2f}"
    if kind == "jpeg":
        q = int(rng.integers(30, 96))
        return _jpeg_bytes(img, q), f"q{q}"
    if kind == "crop":
        area = float(rng.uniform(0.6, 0.95))
        aspect = float(rng.uniform(0.8, 1.25))
        cw = min(w, round(w * np.sqrt(area * aspect)))
        ch = min(h, round(h * area / (cw / w)))
        x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return _jpeg_bytes(img.crop((x0, y0, x0 + cw, y0 + ch))), f"area{cw * ch / (w * h):.2f}"
    if kind == "hflip":
        return _jpeg_bytes(ImageOps.mirror(img)), "mirror"
    if kind == "text":
        out = img.copy()
        d = ImageDraw.Draw(out)
        size = max(10, h // 12)
        y = int(rng.integers(0, max(1, h - 2 * size)))
        phone = "".join(str(int(v)) for v in rng.integers(0, 10, 9))
        d.text((w // 20, y), f"WhatsApp +{phone}", fill=(255, 255, 255), font=_font(size),
               stroke_width=2, stroke_fill=(0, 0, 0))
        d.text((w // 20, min(h - size, y + size + 4)), "DM for price", fill=(255, 40, 40),
               font=_font(size))
        return _jpeg_bytes(out), "overlay"
    if kind == "rotate":
        a = float(rng.uniform(2.0, 6.0)) * float(rng.choice([-1, 1]))
        out = img.rotate(a, resample=Image.Resampling.BILINEAR, expand=True,
                         fillcolor=(255, 255, 255))
        return _jpeg_bytes(out), f"{a:+.1f}deg"
    if kind == "border":
        top, bottom, side = round(h * 0.12), round(h * 0.35), round(w * 0.04)
        canvas = Image.new("RGB", (w + 2 * side, h + top + bottom), (250, 250, 250))
        canvas.paste(img, (side, top))
        d = ImageDraw.Draw(canvas)
        d.rectangle((0, 0, canvas.width, top // 2), fill=(20, 20, 20))  # status bar
        size = max(10, bottom // 5)
        d.text((side, top + h + 6), "Antique carving, rare", fill=(0, 0, 0), font=_font(size))
        d.text((side, top + h + 10 + size), "$ 1,250  ·  Ships worldwide", fill=(200, 0, 0),
               font=_font(size))
        return _jpeg_bytes(canvas), "screenshot"
    raise ValueError(kind)


# -- features ------------------------------------------------------------------------------------
KINDS = {"photo": 0, "trim": 1, "crop": 2}  # what each feature row is (views.py)
VARIANTS = {"no views": (0,), "trimmed views": (0, 1), "trimmed + crop views (default)": (0, 1, 2)}


def featurize(sources: Sequence[Any], clf: wv.Classifier, cache: Path, batch_size: int,
              side: str) -> dict[str, np.ndarray]:
    """Feature rows of ``sources``: the photo itself and its views (``side``: ``index`` =
    :func:`index_views`, ``query`` = :func:`query_views`), each with its embedding, PDQ hash,
    mirror-image hash and quality; ``owner`` (source number) and ``kind`` (:data:`KINDS`) per
    row. Decoded and preprocessed exactly as the classifier does; cached in ``cache``."""
    if cache.is_file():
        with np.load(cache) as z:
            return {k: z[k] for k in z.files}
    cfg = clf.card.preprocess
    n = len(sources)
    ok = np.zeros(n, bool)
    owner: list[int] = []
    kind: list[int] = []
    hashes: list[bytes] = []
    mirror: list[bytes] = []
    quality: list[int] = []
    embs: list[np.ndarray] = []
    pending: list[np.ndarray] = []

    def flush() -> None:
        if pending:
            embs.append(clf.predict_arrays(np.stack(pending))["embedding"])
            pending.clear()

    t0 = time.time()
    for i, src in enumerate(sources):
        try:
            dec = decode_image(src, max_pixels=clf.max_pixels, max_bytes=clf.max_bytes,
                               draft_size=cfg.draft_size)
        except wv.WildvisionError:
            continue
        ok[i] = True
        extra = index_views(dec.image) if side == "index" else query_views(dec.image)
        ntrim = int(trim_box(dec.image) is not None) if side == "index" else len(extra)
        kinds = [0] + [1] * ntrim + [2] * (len(extra) - ntrim)
        for img, k in zip([dec.image, *extra], kinds, strict=True):
            h, q = pdq_hash(img)
            hm, _ = pdq_hash(img, mirror=True)
            owner.append(i)
            kind.append(k)
            hashes.append(h)
            mirror.append(hm)
            quality.append(q)
            pending.append(preprocess_image(img, cfg))
        if len(pending) >= batch_size:
            flush()
        if (i + 1) % 500 == 0:
            print(f"  {cache.stem}: {i + 1}/{n} ({(i + 1) / (time.time() - t0):.1f}/s)",
                  file=sys.stderr)
    flush()
    emb = np.concatenate(embs).astype(np.float32)
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    out = {"embeddings": emb, "hashes": _rows(hashes), "mirror": _rows(mirror),
           "quality": np.array(quality, np.int16), "owner": np.array(owner, np.int64),
           "kind": np.array(kind, np.int8), "ok": ok}
    np.savez(cache, **out)
    return out


def local_index(paths: Sequence[str], clf: wv.Classifier, cache: Path) -> dict[str, np.ndarray]:
    """The index's local-feature arrays for ``paths``, as build_index stores them (an
    unreadable photo: no keypoints); cached."""
    if cache.is_file():
        with np.load(cache) as z:
            return {k: z[k] for k in z.files}
    cfg = clf.card.preprocess
    rows = []
    for src in paths:
        try:
            dec = decode_image(src, max_pixels=clf.max_pixels, max_bytes=clf.max_bytes,
                               draft_size=cfg.draft_size)
            rows.append(lf.index_row(dec.image))
        except wv.WildvisionError:
            rows.append(lf.NO_KEYPOINTS)
    out = lf.stack(rows)
    np.savez(cache, **out)
    return out


def local_checks(sources: Sequence[Any], sim: np.ndarray, loc: dict[str, np.ndarray],
                 clf: wv.Classifier, cache: Path) -> tuple[np.ndarray, float]:
    """Inliers (0: not a copy) of the local-feature check of each query against its
    :data:`LOCAL_TOP` most similar indexed photos at or above VERIFY_FLOOR (a query x indexed
    matrix, -1 where unchecked), found as MatchIndex.lookup finds them (the photo and its
    trimmed view against the indexed keypoints); and the mean milliseconds per checked
    query (keypoints of the query + the checks). Cached."""
    if cache.is_file():
        with np.load(cache) as z:
            return z["inliers"], float(z["ms"])
    cfg = clf.card.preprocess
    out = np.full(sim.shape, -1, np.int16)
    todo = np.flatnonzero(sim.max(axis=1) >= VERIFY_FLOOR)
    spent = 0.0
    for j in todo:
        top = np.argsort(-sim[j])[:LOCAL_TOP]
        top = top[sim[j, top] >= VERIFY_FLOOR]
        try:
            dec = decode_image(sources[j], max_pixels=clf.max_pixels, max_bytes=clf.max_bytes,
                               draft_size=cfg.draft_size)
        except wv.WildvisionError:
            continue
        t0 = time.perf_counter()
        greys = [lf.local_source(im) for im in (dec.image, *query_views(dec.image))]
        queries = [lf.local_features(g, lf.QUERY_KEYPOINTS) for g in greys]
        for c in top:
            ref = lf.unpack(loc["local_points"][c], loc["local_descriptors"][c],
                            loc["local_count"][c], loc["local_size"][c])
            best = 0
            for q in queries:
                v = lf.verify(q, ref)
                if lf.accepted(v, 4):
                    best = max(best, v.inliers)
            out[j, c] = best
        spent += time.perf_counter() - t0
    ms = 1000 * spent / max(1, len(todo))
    np.savez(cache, inliers=out, ms=ms)
    return out, ms


def local_pass(sim: np.ndarray, inliers: np.ndarray, passes: np.ndarray,
               min_inliers: int = lf.MIN_INLIERS) -> np.ndarray:
    """Which (query, indexed) pairs the index's local check makes matches, given the pairs
    that already pass a threshold (``passes``): of the others at or above VERIFY_FLOOR with
    keypoints, the VERIFY_TOP most similar are checked."""
    cand = ~passes & (inliers >= 0)
    s = np.where(cand, sim, -np.inf)
    order = np.argsort(-s, axis=1)[:, :VERIFY_TOP]
    rows = np.arange(len(sim))[:, None]
    chosen = np.zeros_like(cand)
    chosen[rows, order] = np.isfinite(s[rows, order])
    return chosen & (inliers >= min_inliers)


def read_duplicates(indexed: Sequence[dict[str, str]], others: Sequence[dict[str, str]]
                    ) -> np.ndarray:
    """(others, indexed) boolean matrix of the pairs in :data:`DUPLICATES`."""
    dup = np.zeros((len(others), len(indexed)), bool)
    if not DUPLICATES.is_file():
        return dup
    pos_i = {r["path"]: i for i, r in enumerate(indexed)}
    pos_o = {r["path"]: i for i, r in enumerate(others)}
    with open(DUPLICATES, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            for a, b in ((r["photo"], r["same_as"]), (r["same_as"], r["photo"])):
                if a in pos_o and b in pos_i:
                    dup[pos_o[a], pos_i[b]] = True
    return dup


def _rows(hashes: list[bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(hashes), np.uint8).reshape(-1, 32)


def hamming_matrix(a: np.ndarray, b: np.ndarray, chunk: int = 256) -> np.ndarray:
    out = np.empty((len(a), len(b)), np.int16)
    for s in range(0, len(a), chunk):
        out[s:s + chunk] = hamming(a[s:s + chunk, None, :], b[None, :, :])
    return out


def _group_reduce(m: np.ndarray, owner: np.ndarray, n: int, axis: int, op: Any,
                  fill: float) -> np.ndarray:
    """Reduce ``m`` along ``axis`` over rows of the same owner (rows sorted by owner)."""
    starts = np.searchsorted(owner, np.arange(n))
    has = np.bincount(owner, minlength=n) > 0
    red = op.reduceat(m, np.minimum(starts, len(owner) - 1), axis=axis)
    shape = [1, 1]
    shape[axis] = n
    return np.where(has.reshape(shape), red, fill)


def scores(q: dict[str, np.ndarray], idx: dict[str, np.ndarray], kinds: Sequence[int]
           ) -> tuple[np.ndarray, np.ndarray]:
    """(similarity, hash distance) of every query source against every indexed source: the
    best over both sides' rows of ``kinds`` (a query's rows: the photo and its trimmed view);
    a hash of too low quality on either side never matches (distance 999)."""
    qs = np.isin(q["kind"], kinds)
    ix = np.isin(idx["kind"], kinds)
    nq, ni = len(q["ok"]), len(idx["ok"])
    qo, io_ = q["owner"][qs], idx["owner"][ix]
    sim = q["embeddings"][qs] @ idx["embeddings"][ix].T
    sim = _group_reduce(_group_reduce(sim, qo, nq, 0, np.maximum, -2), io_, ni, 1,
                        np.maximum, -2)
    qh, qm, ih = q["hashes"][qs], q["mirror"][qs], idx["hashes"][ix]
    dist = np.minimum(hamming_matrix(qh, ih), hamming_matrix(qm, ih))
    bad = (q["quality"][qs] < MIN_QUALITY)[:, None] | (idx["quality"][ix] < MIN_QUALITY)[None]
    dist[bad] = 999
    dist = _group_reduce(_group_reduce(dist, qo, nq, 0, np.minimum, 999), io_, ni, 1,
                         np.minimum, 999)
    return sim.astype(np.float32), dist.astype(np.int16)


def best_match(sim: np.ndarray, dist: np.ndarray, method: str, t_sim: float, t_hash: int,
               inliers: np.ndarray | None = None) -> np.ndarray:
    """The reported top match per query (-1: none), ranked as MatchIndex.lookup ranks them
    (``method`` ``local``: the combined rule and the local check, from ``inliers``)."""
    if method == "hash":
        passes = dist <= t_hash
        rank = -dist.astype(np.float64)
    elif method == "embedding":
        passes = sim >= t_sim
        rank = sim.astype(np.float64)
    else:
        passes = (dist <= t_hash) | (sim >= t_sim)
        if method == "local":
            assert inliers is not None
            passes = passes | local_pass(sim, inliers, passes)
        rank = sim.astype(np.float64) - dist.astype(np.float64) * 1e-6
    rank = np.where(passes, rank, -np.inf)
    top = np.argmax(rank, axis=1)
    return np.where(np.isfinite(rank[np.arange(len(rank)), top]), top, -1)


def _loosest_sim(best: np.ndarray, k: int) -> float:
    """The lowest similarity threshold (3 decimals) that at most ``k`` of ``best`` reach."""
    b = np.sort(best)[::-1]
    if k >= len(b):
        return -1.0
    return min(1.0, round(float(np.ceil((b[k] + 1e-6) * 1000) / 1000), 3))


def choose_thresholds(sim: np.ndarray, dist: np.ndarray) -> tuple[float, int, float, int]:
    """On these unrelated photos, with at most TARGET_FMR of them matching: the loosest
    similarity threshold and hash threshold alone, and for the combined rule (hash <= t_h or
    similarity >= t_s) the hash threshold (the loosest alone, at most HASH_CAP) and the
    loosest similarity threshold that keeps the union within the budget."""
    k = int(np.floor(TARGET_FMR * len(sim)))
    t_sim = _loosest_sim(sim.max(axis=1), k)
    best_d = np.sort(dist.min(axis=1))
    t_hash = int(np.clip(int(best_d[min(k, len(best_d) - 1)]) - 1, 0, 63))
    c_hash = min(t_hash, HASH_CAP)
    by_hash = dist.min(axis=1) <= c_hash
    rest = sim.max(axis=1)[~by_hash]
    c_sim = _loosest_sim(rest, k - int(by_hash.sum())) if by_hash.sum() <= k else 1.0
    return t_sim, t_hash, c_sim, c_hash


def choose_local_similarity(sim: np.ndarray, dist: np.ndarray, inliers: np.ndarray,
                            c_hash: int) -> float:
    """The loosest similarity threshold (3 decimals, from 1.0 down) at which the combined
    rule with the local check keeps at most TARGET_FMR of these unrelated photos matching."""
    k = int(np.floor(TARGET_FMR * len(sim)))
    best = 1.0
    for t in np.round(np.arange(1.0, 0.8, -0.001), 3):
        if int(np.sum(best_match(sim, dist, "local", float(t), c_hash, inliers) >= 0)) > k:
            break
        best = float(t)
    return best


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared"
                                          / "data"))
    ap.add_argument("--indexed", type=int, default=500)
    ap.add_argument("--distractors", type=int, default=10_000,
                    help="unrelated photos (0: every other photo of the manifest)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--check", type=int, default=70, help="copies re-checked end to end")
    ap.add_argument("--out", default="runs/match_robustness")
    args = ap.parse_args(argv)

    data = Path(args.data)
    with open(data / "manifest.csv", newline="", encoding="utf-8") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: r["path"])
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(rows))
    indexed = [rows[i] for i in order[: args.indexed]]
    others = [rows[i] for i in order[args.indexed:]]
    if args.distractors:
        others = others[: args.distractors]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    clf = wv.Classifier(args.model, return_embedding=True, open_set=False,
                        threads=args.threads)
    fingerprint = model_fingerprint(clf.package)
    tag = hashlib.sha256(json.dumps([args.seed, args.indexed, args.distractors,
                                     fingerprint["embedding_sha256"], FEATURES_VERSION])
                         .encode()).hexdigest()[:10]
    print(f"{len(indexed)} indexed, {len(others)} unrelated photos; model {clf.card.name} "
          f"{clf.card.version}", file=sys.stderr)

    idx_paths = [str(data / r["path"]) for r in indexed]
    idx = featurize(idx_paths, clf, out / f"indexed-{tag}.npz", args.batch_size, "index")
    copies: list[bytes] = []
    meta: list[tuple[int, str, str]] = []
    erng = np.random.default_rng(args.seed + 1)
    for i, p in enumerate(idx_paths):
        if not idx["ok"][i]:
            continue
        img = Image.open(p)
        img = ImageOps.exif_transpose(img).convert("RGB")
        for kind in EDITS:
            data_bytes, what = edit(img, kind, erng)
            copies.append(data_bytes)
            meta.append((i, kind, what))
    qf = featurize(copies, clf, out / f"copies-{tag}.npz", args.batch_size, "query")
    df = featurize([str(data / r["path"]) for r in others], clf, out / f"others-{tag}.npz",
                   args.batch_size, "query")

    # the local check, for the default views
    default = list(VARIANTS)[-1]
    loc = local_index(idx_paths, clf, out / f"local-index-{tag}-v{LOCAL_VERSION}.npz")
    sim_q, _ = scores(qf, idx, VARIANTS[default])
    sim_d, _ = scores(df, idx, VARIANTS[default])
    inl_q, ms_q = local_checks(copies, sim_q, loc, clf,
                               out / f"local-copies-{tag}-v{LOCAL_VERSION}.npz")
    inl_d, ms_d = local_checks([str(data / r["path"]) for r in others], sim_d, loc, clf,
                               out / f"local-others-{tag}-v{LOCAL_VERSION}.npz")
    dup = read_duplicates(indexed, others)

    half = np.random.default_rng(args.seed + 2).permutation(len(others))
    cal, rep = half[: len(half) // 2], half[len(half) // 2:]
    truth = np.array([m[0] for m in meta])
    kinds = np.array([m[1] for m in meta])
    n_idx = int(idx["ok"].sum())
    report: dict[str, Any] = {
        "command": "python benchmarks/match_robustness.py " + " ".join(argv or sys.argv[1:]),
        "model": f"{clf.card.name} {clf.card.version}",
        "embedding_sha256": fingerprint["embedding_sha256"],
        "indexed": n_idx, "unreadable_indexed": int((~idx["ok"]).sum()),
        "copies": len(meta), "unrelated": len(others),
        "unrelated_for_thresholds": len(cal), "unrelated_for_report": len(rep),
        "target_false_match_rate": TARGET_FMR,
        "index_rows_per_photo": {v: round(float(np.isin(idx["kind"], ks).sum()) / n_idx, 3)
                                 for v, ks in VARIANTS.items()},
        "queries_with_a_trimmed_view": {
            "copies": round(float(np.mean(np.bincount(qf["owner"][qf["kind"] == 1],
                                                      minlength=len(meta)) > 0)), 4),
            "unrelated": round(float(np.mean(np.bincount(df["owner"][df["kind"] == 1],
                                                         minlength=len(others)) > 0)), 4)},
        "variants": {},
        "local_check": {
            "keypoints_per_indexed_photo": lf.INDEX_KEYPOINTS,
            "keypoints_per_query": lf.QUERY_KEYPOINTS, "min_inliers": lf.MIN_INLIERS,
            "min_inlier_share": lf.MIN_INLIER_SHARE, "similarity_floor": VERIFY_FLOOR,
            "checked_per_query": VERIFY_TOP,
            "copies_checked": int(np.sum((inl_q >= 0).any(axis=1))),
            "unrelated_checked": int(np.sum((inl_d >= 0).any(axis=1))),
            "ms_per_checked_copy": round(ms_q, 2), "ms_per_checked_unrelated": round(ms_d, 2),
            # every check of an unrelated photo, whatever the thresholds: how often the check
            # alone calls a pair that is not the same photograph a copy
            "unrelated_pairs_checked": int(np.sum(inl_d >= 0)),
            "unrelated_pairs_accepted_not_listed": int(np.sum((inl_d >= lf.MIN_INLIERS)
                                                              & ~dup))},
        "listed_duplicates": {"file": DUPLICATES.name, "pairs_among_unrelated": int(dup.sum()),
                              "photos": int(dup.any(axis=1).sum())},
    }
    lines = [f"| views | method | {' | '.join(EDITS)} | all | false matches (report half) | "
             "false matches (report half, listed duplicates not counted) | "
             "false matches (all unrelated) | false matches (all, listed duplicates not "
             "counted) |",
             "|---|---|" + "---:|" * (len(EDITS) + 5)]
    for variant, vkinds in VARIANTS.items():
        sim_q, dist_q = scores(qf, idx, vkinds)
        sim_d, dist_d = scores(df, idx, vkinds)
        # a listed duplicate is the same photo: not a false match to choose thresholds on
        sim_c = np.where(dup[cal], -2, sim_d[cal])
        dist_c = np.where(dup[cal], 999, dist_d[cal])
        t_sim, t_hash, c_sim, c_hash = choose_thresholds(sim_c, dist_c)
        methods = {
            "hash (PDQ <= 31, the usual default)": ("hash", t_sim, 31),
            f"hash (PDQ <= {t_hash}, chosen)": ("hash", t_sim, t_hash),
            f"embedding (cosine >= {t_sim:.3f}, chosen)": ("embedding", t_sim, t_hash),
            f"combined (PDQ <= {c_hash} or cosine >= {c_sim:.3f}, chosen)":
                ("either", c_sim, c_hash),
        }
        l_sim = None
        if variant == default:
            l_sim = choose_local_similarity(sim_c, dist_c, np.where(dup[cal], -1, inl_d[cal]),
                                            c_hash)
            methods[f"combined + local check (PDQ <= {c_hash} or cosine >= {l_sim:.3f} or "
                    f">= {lf.MIN_INLIERS} inliers, chosen)"] = ("local", l_sim, c_hash)
        res: dict[str, Any] = {"chosen": {"similarity_threshold": t_sim,
                                          "hash_threshold": t_hash,
                                          "combined_similarity_threshold": c_sim,
                                          "combined_hash_threshold": c_hash,
                                          "local_similarity_threshold": l_sim},
                               "methods": {}}
        for name, (method, ts, th) in methods.items():
            top_q = best_match(sim_q, dist_q, method, ts, th, inl_q)
            top_d = best_match(sim_d, dist_d, method, ts, th, inl_d)
            is_dup = (top_d >= 0) & dup[np.arange(len(top_d)), np.maximum(top_d, 0)]
            per = {k: float(np.mean(top_q[kinds == k] == truth[kinds == k])) for k in EDITS}
            worst = np.argsort(-np.where(top_d[rep] >= 0, sim_d[rep].max(axis=1), -9))[:5]
            m = res["methods"][name] = {
                "recall_at_1": per,
                "recall_at_1_all": float(np.mean(top_q == truth)),
                "false_match_rate_report_half": float(np.mean(top_d[rep] >= 0)),
                "false_matches_report_half": int(np.sum(top_d[rep] >= 0)),
                "false_match_rate_all_unrelated": float(np.mean(top_d >= 0)),
                "false_matches_all_unrelated": int(np.sum(top_d >= 0)),
                "false_matches_all_unrelated_without_listed_duplicates":
                    int(np.sum((top_d >= 0) & ~is_dup)),
                "matched_listed_duplicates": int(np.sum(is_dup)),
                "false_matches_report_half_without_listed_duplicates":
                    int(np.sum((top_d[rep] >= 0) & ~is_dup[rep])),
                "example_false_matches": [
                    {"photo": others[rep[j]]["path"], "matched": indexed[top_d[rep[j]]]["path"],
                     "similarity": round(float(sim_d[rep[j], top_d[rep[j]]]), 4),
                     "hash_distance": int(dist_d[rep[j], top_d[rep[j]]]),
                     "inliers": int(inl_d[rep[j], top_d[rep[j]]]) if variant == default
                     else None}
                    for j in worst if top_d[rep[j]] >= 0],
                "all_false_matches": [
                    {"photo": others[j]["path"], "matched": indexed[top_d[j]]["path"],
                     "similarity": round(float(sim_d[j, top_d[j]]), 4),
                     "hash_distance": int(dist_d[j, top_d[j]]),
                     "listed_duplicate": bool(is_dup[j])}
                    for j in np.flatnonzero(top_d >= 0)],
            }
            cells = " | ".join(f"{m['recall_at_1'][k]:.3f}" for k in EDITS)
            nd = m["false_matches_all_unrelated_without_listed_duplicates"]
            nr = m["false_matches_report_half_without_listed_duplicates"]
            lines.append(
                f"| {variant} | {name} | {cells} | {m['recall_at_1_all']:.3f} | "
                f"{m['false_matches_report_half']}/{len(rep)} "
                f"({100 * m['false_match_rate_report_half']:.2f}%) | "
                f"{nr}/{len(rep)} ({100 * nr / len(rep):.2f}%) | "
                f"{m['false_matches_all_unrelated']}/{len(others)} "
                f"({100 * m['false_match_rate_all_unrelated']:.2f}%) | "
                f"{nd}/{len(others)} ({100 * nd / len(others):.2f}%) |")
        report["variants"][variant] = res

    # End to end: the real Classifier with a MatchIndex (photos, views and local features) on
    # some copies agrees with the offline evaluation of the default variant and local check.
    ch = report["variants"][default]["chosen"]
    c_sim, c_hash = ch["local_similarity_threshold"], ch["combined_hash_threshold"]
    head = {**fingerprint, "embedding_dim": idx["embeddings"].shape[1], "views": "crops",
            "local_keypoints": lf.INDEX_KEYPOINTS}
    index = MatchIndex(head, engine="exact", similarity_threshold=c_sim,
                       hash_threshold=c_hash)
    main_rows = np.flatnonzero(idx["kind"] == 0)
    view_rows = np.flatnonzero(idx["kind"] != 0)
    pos = np.full(len(idx["ok"]), -1, np.int64)
    pos[idx["owner"][main_rows]] = np.arange(len(main_rows))
    index.add([str(i) for i in idx["owner"][main_rows]], ["x"] * len(main_rows),
              ["benign"] * len(main_rows), idx["hashes"][main_rows],
              idx["quality"][main_rows].astype(np.uint8), idx["embeddings"][main_rows],
              {"view_owner": pos[idx["owner"][view_rows]],
               "view_hashes": idx["hashes"][view_rows],
               "view_quality": idx["quality"][view_rows].astype(np.uint8),
               "view_embeddings": idx["embeddings"][view_rows]},
              {k: v[idx["owner"][main_rows]] for k, v in loc.items()})
    arrays = {"hashes": index.hashes, "quality": index.quality, "embeddings": index.embeddings,
              **index.views()}
    report["index_bytes_per_photo"] = {
        "file_arrays": round(sum(a.nbytes for a in arrays.values()) / len(index)),
        "local_features": round(sum(a.nbytes for a in index.local().values()) / len(index)),
        "faiss_exact_float32": round(4 * index.embedding_dim * (len(index) + index.view_count)
                                     / len(index))}
    pick = np.random.default_rng(args.seed + 3).choice(len(copies), min(args.check,
                                                                         len(copies)), False)
    live = wv.Classifier(args.model, open_set=False, match_index=index,
                         threads=args.threads)
    sim_q, dist_q = scores(qf, idx, VARIANTS[default])
    offline = best_match(sim_q, dist_q, "local", c_sim, c_hash, inl_q)
    agree = 0
    for j, r in zip(pick, live.iter_classify([copies[j] for j in pick]), strict=True):
        got = int(r.matches[0].reference) if r.ok and r.matches else -1  # type: ignore[union-attr]
        agree += got == int(offline[j])
    report["end_to_end_check"] = {"copies": len(pick), "same_top_match": agree}

    # What the keypoint check costs in classification: the same photos (these copies and as
    # many unrelated photos) classified with the check on and off, alternately, best of 3.
    traffic: list[Any] = [copies[j] for j in pick] + [
        str(data / others[j]["path"]) for j in rep[: len(pick)]]
    plain_index = index.copy()
    plain_index.verify = False
    runs = {"keypoint check on": live,
            "keypoint check off": wv.Classifier(args.model, open_set=False,
                                                match_index=plain_index, threads=args.threads)}
    best = {k: float("inf") for k in runs}
    for _ in range(3):
        for name, c in runs.items():
            t0 = time.perf_counter()
            for _r in c.iter_classify(traffic):
                pass
            best[name] = min(best[name], time.perf_counter() - t0)
    report["classify_cost"] = {
        "photos": len(traffic),
        **{f"ms_per_photo_{k.replace(' ', '_')}": round(1000 * v / len(traffic), 1)
           for k, v in best.items()},
        "ratio_on_to_off": round(best["keypoint check on"] / best["keypoint check off"], 3)}

    table = "\n".join(lines)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(
        f"{report['command']}\n\nmodel {report['model']}; recall@1 per edit kind; "
        f"{report['indexed']} indexed photos, {len(meta)} copies, {len(others)} unrelated "
        f"photos (thresholds chosen on {len(cal)}, false matches reported on the other "
        f"{len(rep)})\n\n{table}\n")
    print(table)
    print(json.dumps({k: report[k] for k in ("local_check", "listed_duplicates",
                                             "index_rows_per_photo",
                                             "queries_with_a_trimmed_view",
                                             "index_bytes_per_photo", "end_to_end_check",
                                             "classify_cost")}))
    print(json.dumps({v: r["chosen"] for v, r in report["variants"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
