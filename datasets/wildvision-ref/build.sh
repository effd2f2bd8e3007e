#!/usr/bin/env bash
# Rebuild the reference dataset from ../shared/data (run from the repository root).
# `wildvision data card` shows these lines verbatim in README.md.
set -euo pipefail
wildvision data index ../shared/data --labels datasets/wildvision-ref/labels.yaml --out build/wildvision-ref-index.csv --stats-out datasets/wildvision-ref/index_stats.json
wildvision data split build/wildvision-ref-index.csv --seed 0 --ratios 0.7,0.15,0.15 --out datasets/wildvision-ref/manifest.csv --report datasets/wildvision-ref/split.json
wildvision data check datasets/wildvision-ref/manifest.csv
python datasets/wildvision-ref/measure_phash.py
wildvision data card datasets/wildvision-ref/manifest.csv --out datasets/wildvision-ref/README.md
