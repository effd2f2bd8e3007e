"""Are the heatmaps faithful? A deletion test on the reference test photos.

    python benchmarks/explain_faithfulness.py --model wildvision-base \
        --data datasets/wildvision-ref/manifest.csv --split test \
        --out runs/explain/faithfulness.json

For every test photo of a flaggable group ``g``, the model input is computed once (the one
preprocessing), the group ``g`` is explained (:mod:`wildvision.explain`, the map on the
feature grid the model sees), and the top ``k`` % of the feature-grid cells by heatmap value are
deleted: set to grey (``--fill grey``, the normalisation's mean) or blurred (``--fill blur``).
The same number of cells chosen at random is deleted as the baseline (``--draws`` draws per
photo). The drop of the calibrated ``P(g)`` (and of its log-odds, which still moves when ``P(g)`` is
near 1) is averaged over the photos of each group; ``heatmap_wins`` is the share of photos
where the heatmap's log-odds drop beats the random masks' mean. A faithful heatmap removes
more of the evidence than random cells of the same area.
``--variant label`` explains with the classic CAM of the group's most probable label instead
of the group's log-odds (the default), for comparison.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import ImageFilter

from wildvision.data.manifest import read_manifest
from wildvision.explain import activation_maps, group_direction
from wildvision.head import head_weights
from wildvision.imaging import decode_image
from wildvision.predict import Classifier
from wildvision.preprocess import normalize, resize_crop
from wildvision.taxonomy import FLAGGABLE_GROUPS


def cell_mask(cells: np.ndarray, grid: tuple[int, int], size: int) -> np.ndarray:
    """Boolean ``size x size`` input mask of the chosen feature-grid cells (flat indices)."""
    fh, fw = grid
    m = np.zeros(fh * fw, bool)
    m[cells] = True
    m = m.reshape(fh, fw)
    ys = np.minimum((np.arange(size) * fh) // size, fh - 1)
    xs = np.minimum((np.arange(size) * fw) // size, fw - 1)
    return m[ys][:, xs]  # type: ignore[no-any-return]


def log_odds(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(q) - np.log1p(-q)  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="wildvision-base")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--data", default="datasets/wildvision-ref/manifest.csv")
    ap.add_argument("--split", default="test")
    ap.add_argument("--fractions", default="0.1,0.2", help="deleted fractions of the image")
    ap.add_argument("--draws", type=int, default=3, help="random masks per photo")
    ap.add_argument("--fill", choices=("grey", "blur"), default="grey")
    ap.add_argument("--variant", choices=("group", "label"), default="group")
    ap.add_argument("--limit", type=int, default=0, help="photos per group (0: all)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="JSON report")
    a = ap.parse_args(argv)

    clf = Classifier(a.model, precision=a.precision, open_set=False)
    card = clf.card
    cfg = card.preprocess
    head = head_weights(clf.package, a.precision)
    label_group = np.array([card.label_groups[lab] for lab in card.labels])
    groups = [g for g in card.groups if g in FLAGGABLE_GROUPS]
    fractions = [float(f) for f in a.fractions.split(",")]
    rng = np.random.default_rng(a.seed)
    m = read_manifest(a.data)
    report: dict[str, object] = {
        "model": card.name, "version": card.version, "precision": a.precision,
        "split": a.split, "fill": a.fill, "variant": a.variant, "draws": a.draws,
        "fractions": fractions, "groups": {},
    }
    t_start = time.perf_counter()
    for g in groups:
        gi = clf._groups.index(g)
        rows = [r for r in m if r.split == a.split and r.readable and r.group == g]
        if a.limit:
            rows = rows[: a.limit]
        if not rows:
            continue
        drops: dict[str, list[float]] = {f"{k}:{f}": [] for f in fractions
                                         for k in ("heatmap", "random", "lo_heatmap",
                                                   "lo_random")}
        base_p: list[float] = []
        for r in rows:
            dec = decode_image(m.abs_path(r), draft_size=cfg.draft_size)
            img = resize_crop(dec.image, cfg)
            x = normalize(np.asarray(img), cfg)
            filler = (normalize(np.asarray(img.filter(ImageFilter.GaussianBlur(12))), cfg)
                      if a.fill == "blur" else np.zeros_like(x))
            out = clf.predict_arrays(x[None])
            p0 = float(out["group_probabilities"][0, gi])
            probs = out["probabilities"]
            if a.variant == "group":
                d = group_direction(head.weight, probs, label_group == g)
            else:
                in_g = np.where(label_group == g, probs[0], -1.0)
                d = head.weight[[int(np.argmax(in_g))]]
            cam = activation_maps(out["features"], d)[0]
            grid = cam.shape
            n_cells = cam.size
            order = np.argsort(-cam.ravel(), kind="stable")
            batch = []
            for f in fractions:
                k = max(1, round(f * n_cells))
                masks = [cell_mask(order[:k], grid, cfg.input_size)]
                masks += [cell_mask(rng.choice(n_cells, k, replace=False), grid, cfg.input_size)
                          for _ in range(a.draws)]
                for mk in masks:
                    batch.append(np.where(mk[None], filler, x))
            pg = clf.predict_arrays(np.stack(batch))["group_probabilities"][:, gi]
            lo0, lo = log_odds(np.float64(p0)), log_odds(pg.astype(np.float64))
            base_p.append(p0)
            per = 1 + a.draws
            for j, f in enumerate(fractions):
                drops[f"heatmap:{f}"].append(p0 - float(pg[j * per]))
                drops[f"random:{f}"].append(p0 - float(np.mean(pg[j * per + 1:(j + 1) * per])))
                drops[f"lo_heatmap:{f}"].append(float(lo0 - lo[j * per]))
                drops[f"lo_random:{f}"].append(
                    float(lo0 - np.mean(lo[j * per + 1:(j + 1) * per])))
        res: dict[str, object] = {"photos": len(rows), "mean_p": float(np.mean(base_p))}
        for f in fractions:
            h = np.asarray(drops[f"heatmap:{f}"])
            rnd = np.asarray(drops[f"random:{f}"])
            lh = np.asarray(drops[f"lo_heatmap:{f}"])
            lr = np.asarray(drops[f"lo_random:{f}"])
            res[str(f)] = {
                "heatmap_drop": round(float(h.mean()), 4),
                "random_drop": round(float(rnd.mean()), 4),
                "heatmap_log_odds_drop": round(float(lh.mean()), 3),
                "random_log_odds_drop": round(float(lr.mean()), 3),
                "heatmap_wins": round(float(np.mean(lh > lr)), 4),
            }
        report["groups"][g] = res  # type: ignore[index]
        print(g, json.dumps(res), file=sys.stderr)
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    text = json.dumps(report, indent=2)
    print(text)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
