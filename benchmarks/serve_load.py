"""A bounded load test of ``wildvision serve`` on loopback, against a server it starts itself.

    python benchmarks/serve_load.py                          # 2,000 requests at concurrency 16
    python benchmarks/serve_load.py --model PACKAGE_DIR --requests 5000 --out runs/load.json

Two scenarios, each in a fresh ``wildvision serve`` process:

* ``capacity``: the server admits every client (``--max-concurrency`` = client concurrency);
  requests queue for the model inside the server. Expect only 200s.
* ``overload``: the server's bound is lower than the client concurrency
  (``--overload-bound``, default 2): the excess must get 503 + Retry-After at once, never
  another 5xx, and the admitted requests must still succeed.

For each: throughput, latency p50/p95/p99 (of 200s, and of all answers), counts by status,
server RSS (the server process and its children) after warm-up, after every tenth of the
requests and at the end (growth over the whole run and over its second half, once allocator
pools have filled), and the count of JSON access-log lines (one per request expected).
The server inherits this process's environment (e.g. ``MALLOC_ARENA_MAX``).

Requests are raw-body ``POST /v1/classify`` of real listing-size photos (../shared/data,
upscaled to 1200-1600 px, JPEG q90) cycled; generated photos if the data is absent. The
model: ``--model``, else ``wildvision-base`` if installed, else EfficientNet-Lite0 with its
ImageNet weights exported to a temporary package (as benchmarks/throughput.py does; needs the
[train] extra). The client runs on the same machine and competes with the server for CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import build_lite0_package, listing_photos, machine  # noqa: E402


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants, in MiB (Linux /proc)."""
    total = 0
    pids = [pid]
    seen = set()
    while pids:
        p = pids.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
            pids += [int(c) for c in children]
        except (OSError, ValueError):
            continue
    return total / 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def generated_photos(out: Path, n: int) -> list[str]:
    import numpy as np
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files = []
    for i in range(n):
        w, h = int(rng.integers(1200, 1600)), int(rng.integers(900, 1200))
        y, x = np.mgrid[0:h, 0:w]
        arr = np.stack([(x * (i + 1) // 7) % 256, (y * 3) % 256, ((x + y) // 5) % 256], -1)
        arr = (arr + rng.integers(0, 20, arr.shape)).clip(0, 255).astype("uint8")
        path = out / f"{i:04d}.jpg"
        Image.fromarray(arr).save(path, quality=90)
        files.append(str(path))
    return files


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    xs = sorted(values)
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


async def load(url: str, bodies: list[bytes], n: int, concurrency: int, pid: int
               ) -> dict[str, Any]:
    import httpx

    results: list[tuple[int, float, bool]] = []
    counter = iter(range(n))
    rss_series: list[float] = []  # server RSS after each tenth of the requests
    tenth = max(1, n // 10)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        for i in counter:
            body = bodies[i % len(bodies)]
            t0 = time.perf_counter()
            try:
                r = await client.post("/v1/classify", content=body,
                                      headers={"Content-Type": "image/jpeg"})
                status, retry = r.status_code, "retry-after" in r.headers
                if status == 200:
                    r.json()  # a complete, parseable answer
            except httpx.HTTPError:
                status, retry = -1, False  # connection-level failure
            results.append((status, time.perf_counter() - t0, retry))
            if len(results) % tenth == 0:
                rss_series.append(round(rss_mb(pid), 1))

    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*[worker(client) for _ in range(concurrency)])
        wall = time.perf_counter() - t0
    by_status = Counter(s for s, _, _ in results)
    ok_lat = [lat for s, lat, _ in results if s == 200]
    all_lat = [lat for _, lat, _ in results]
    ms = 1000.0
    return {
        "requests": n,
        "concurrency": concurrency,
        "wall_s": round(wall, 2),
        "throughput_rps": round(n / wall, 1),
        "ok_throughput_rps": round(by_status.get(200, 0) / wall, 1),
        "by_status": {str(k): v for k, v in sorted(by_status.items())},
        "other_5xx": sum(v for k, v in by_status.items() if k >= 500 and k != 503),
        "connection_errors": by_status.get(-1, 0),
        "503_without_retry_after": sum(1 for s, _, r in results if s == 503 and not r),
        "latency_ms_200": {f"p{int(q * 100)}": round(percentile(ok_lat, q) * ms, 1)
                           for q in (0.5, 0.95, 0.99)} if ok_lat else None,
        "latency_ms_all": {f"p{int(q * 100)}": round(percentile(all_lat, q) * ms, 1)
                           for q in (0.5, 0.95, 0.99)},
        "rss_every_tenth_mb": rss_series,
    }


def run_scenario(name: str, model: str, bodies: list[bytes], args: argparse.Namespace,
                 bound: int, work: Path) -> dict[str, Any]:
    import httpx

    port = free_port()
    log_path = work / f"server-{name}.log"
    cmd = [sys.executable, "-m", "wildvision.cli", "serve", "--model", model, "--port",
           str(port), "--max-concurrency", str(bound), "--max-pending", str(max(bound, 4 * bound)),
           "--timeout", "60"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, cwd=REPO)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"server exited: {log_path.read_text()[-2000:]}")
                try:
                    if httpx.get(url + "/readyz", timeout=5).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("server not ready after 120 s")
                time.sleep(0.2)
            rss_boot = rss_mb(proc.pid)
            warm = asyncio.run(load(url, bodies, args.warmup, min(bound, args.concurrency),
                                    proc.pid))
            rss_start = rss_mb(proc.pid)
            res = asyncio.run(load(url, bodies, args.requests, args.concurrency, proc.pid))
            rss_end = rss_mb(proc.pid)
            health = httpx.get(url + "/healthz", timeout=10).status_code
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    lines = 0
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            d = json.loads(line)
            if d.get("logger") == "wildvision.serve.access" and d.get("path") == "/v1/classify":
                lines += 1
        except (json.JSONDecodeError, AttributeError):
            continue
    res.update(
        scenario=name, server_max_concurrency=bound, warmup_requests=args.warmup,
        warmup_by_status=warm["by_status"], rss_after_boot_mb=round(rss_boot, 1),
        rss_start_mb=round(rss_start, 1), rss_end_mb=round(rss_end, 1),
        rss_growth_mb=round(rss_end - rss_start, 1),
        rss_growth_second_half_mb=(round(rss_end - res["rss_every_tenth_mb"][4], 1)
                                   if len(res["rss_every_tenth_mb"]) >= 5 else None),
        healthz_after=health,
        classify_log_lines=lines, classify_requests_sent=args.warmup + args.requests,
    )
    return res


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model package/name (see above)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--photos", type=int, default=64, help="distinct photos, cycled")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--overload-bound", type=int, default=2,
                    help="server --max-concurrency in the overload scenario")
    ap.add_argument("--threads", type=int, default=None, help="server inference threads")
    ap.add_argument("--scenarios", default="capacity,overload")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="wv-serve-load-"))
    try:
        if (args.data / "manifest.csv").is_file():
            files, _ = listing_photos(args.data, work / "photos", args.photos)
            photos = f"{args.photos} real photos from {args.data}, upscaled to 1200-1600 px"
        else:
            files = generated_photos(work / "photos", args.photos)
            photos = f"{args.photos} generated 1200-1600 px JPEGs ({args.data} not found)"
        bodies = [Path(f).read_bytes() for f in files]
        random.Random(0).shuffle(bodies)
        model = args.model
        if model is None:
            from wildvision.registry import default_model_name, installed_models

            if default_model_name() in installed_models():
                model = default_model_name()
            else:
                model = str(build_lite0_package(work / "lite0"))
        from wildvision.registry import load_model

        card = load_model(model).card
        report: dict[str, Any] = {
            "machine": machine(), "loadavg_before": loadavg(),
            "model": {"spec": model, "name": card.name, "arch": card.arch,
                      "input_size": card.preprocess.input_size},
            "inputs": photos,
            "mean_body_kb": round(statistics.mean(len(b) for b in bodies) / 1024, 1),
            "scenarios": [],
        }
        for name in args.scenarios.split(","):
            bound = args.concurrency if name == "capacity" else args.overload_bound
            print(f"scenario {name}: {args.requests} requests, client concurrency "
                  f"{args.concurrency}, server bound {bound} ...", file=sys.stderr)
            res = run_scenario(name, model, bodies, args, bound, work)
            report["scenarios"].append(res)
            print(json.dumps(res, indent=2), file=sys.stderr)
        report["loadavg_after"] = loadavg()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(report, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    bad = sum(s["other_5xx"] + s["connection_errors"] + s["503_without_retry_after"]
              for s in report["scenarios"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
