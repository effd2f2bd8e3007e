"""The review page: ``wildvision review RESULTS.jsonl`` writes one self-contained HTML file
(thumbnails and heatmap overlays embedded, no server, no network) where a moderator confirms,
rejects or relabels each flagged photo with the keyboard, and exports the decisions
(:mod:`wildvision.data.reviews` turns them into a training manifest).

Core install only (Pillow for thumbnails).
"""

from __future__ import annotations

from .page import ReviewPage as ReviewPage
from .page import build_review_page as build_review_page

__all__ = ["ReviewPage", "build_review_page"]
