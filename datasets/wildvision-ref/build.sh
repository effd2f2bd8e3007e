#!/usr/bin/env bash
# Rebuild the reference dataset from ../shared/data (run from the repository root).
# `wildvision data card` shows these lines verbatim in README.md.
set -euo pipefail
wildvision data index ../shared/data --labels datasets/wildvision-ref/labels.yaml --out build/wildvision-ref-index.csv --stats-out datasets/wildvision-ref/index_stats.json
git show ba85854aaf924876b72417b4e61f912e7880ef09:datasets/wildvision-ref/manifest.csv > build/previous-manifest.csv  # the 14-source manifest (wildvision-base 1.x)
wildvision data split build/wildvision-ref-index.csv --seed 0 --ratios 0.7,0.15,0.15 --keep-splits build/previous-manifest.csv --out datasets/wildvision-ref/manifest.csv --report datasets/wildvision-ref/split.json
wildvision data check datasets/wildvision-ref/manifest.csv
python datasets/wildvision-ref/measure_phash.py
wildvision data card datasets/wildvision-ref/manifest.csv --out datasets/wildvision-ref/README.md
