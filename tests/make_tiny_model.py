"""Build the tiny test model package in tests/data/tiny-model.

A real wildvision package (ONNX + safetensors + card.json + README.md), exported through the
same code as trained models (wildvision.torch_model), with timm's ~100k-parameter
``test_efficientnet``. It never sees a photo and knows nothing about wildlife: it is fitted to a
**colour rule**, so that its outputs depend on the image and tests can tell images apart and
see all three decisions (flag / review / pass).

The rule: with ``c`` the mean RGB colour (0..1) of the 64 px model input (after the resize and
centre crop) and ``p_k`` the prototype colour of label ``k`` in ``PROTOTYPES``, the label
probabilities are ``softmax_k(-||c - p_k||^2 / TAU)``: the top label is the prototype nearest
the image's mean colour, confident near a prototype and spread out between prototypes. The
network (seeded initialisation) is trained for a few hundred steps on generated images
(``training_images``: textured colour fields, some blended with photo-like patterns) with the
rule's probabilities as soft targets. ``--measure`` prints how closely it follows the rule (top
label): 95% of 100 new textured colour fields, 83% of 100 of the tests' photo-like images
(their rectangles of other colours are harder), and the prototype colours themselves.

Strong prototype colours are flagged (ivory-white, dark brown, brown, red, orange, grey: the
protected groups) or pass (green, blue, purple: benign); colours between a protected and a
benign prototype get ``review``. Seeded: a rebuild gives the same outputs up to float noise.

    python tests/make_tiny_model.py            # needs the [torch] extra and onnx; no photos
    python tests/make_tiny_model.py --measure  # how much its outputs vary (no torch)
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from wildvision.preprocess import PreprocessConfig, preprocess, resize_crop

LABELS = (
    "ivory_carving", "rhino_horn_raw", "pangolin_scales", "tiger_skin",
    "live_tiger", "live_elephant", "domestic_cat", "ceramics", "clothing",
)
INPUT_SIZE = 64
PREPROCESS = PreprocessConfig(input_size=INPUT_SIZE, crop_pct=0.875)
# The colour rule: the prototype mean colour (RGB, 0..255) of each label. Arbitrary: it says
# nothing about what these products look like, it only spreads the labels over colour space.
PROTOTYPES: dict[str, tuple[int, int, int]] = {
    "ivory_carving": (240, 230, 200),   # ivory-white
    "rhino_horn_raw": (50, 40, 35),     # dark brown, near black
    "pangolin_scales": (140, 95, 45),   # brown
    "tiger_skin": (210, 30, 30),        # red
    "live_tiger": (245, 150, 20),       # orange
    "live_elephant": (128, 128, 128),   # mid grey
    "domestic_cat": (40, 170, 60),      # green
    "ceramics": (40, 80, 220),          # blue
    "clothing": (170, 50, 180),         # purple
}
TAU = 0.02  # softmax temperature of the rule, in squared RGB distance (0..1 units)
N_IMAGES = 2048  # generated training images
STEPS, BATCH, LR = 400, 64, 3e-3  # AdamW with a one-cycle schedule


_RULE = "; ".join(f"{lab} RGB {PROTOTYPES[lab]}" for lab in LABELS)
DESCRIPTION = (
    "Test model (tests/make_tiny_model.py), fitted on generated images (never a photo) to a "
    "colour rule: its outputs mean nothing about wildlife. Its top label is mostly the label "
    "whose prototype colour is nearest the image's mean colour "
    f"({_RULE}). It lets the tests run without real weights and see different images get "
    "different outputs (python tests/make_tiny_model.py --measure)."
)


def colour_rule_logits(mean_rgb: np.ndarray) -> np.ndarray:
    """The rule the head is fitted to: ``(n, 3)`` mean colours (0..255) -> ``(n, 9)`` logits."""
    c = np.asarray(mean_rgb, np.float64) / 255.0
    p = np.asarray([PROTOTYPES[lab] for lab in LABELS], np.float64) / 255.0
    return -((c[:, None, :] - p[None, :, :]) ** 2).sum(-1) / TAU


def colour_rule_label(img: Image.Image) -> str:
    """The label the rule gives ``img``: the prototype nearest its mean colour after the model's
    resize and crop (only the tiny model's preprocessing, 64 px, centre crop 0.875)."""
    crop = np.asarray(resize_crop(img.convert("RGB"), PREPROCESS), np.float64)
    return LABELS[int(np.argmax(colour_rule_logits(crop.reshape(-1, 3).mean(0)[None])[0]))]


def colour_photo(rgb: tuple[int, int, int], size: tuple[int, int] = (96, 80), seed: int = 0,
                 *, texture: float = 25.0) -> Image.Image:
    """A deterministic image whose mean colour is about ``rgb``: a colour field with smooth
    gradients, a few shapes of nearby colours and noise (``texture`` sets their strength)."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.empty((h, w, 3), np.float32)
    img[:] = np.asarray(rgb, np.float32)
    for c in range(3):
        fx, fy, ph = rng.uniform(0.5, 3.0), rng.uniform(0.5, 3.0), rng.uniform(0, 6.3)
        img[..., c] += texture * np.sin(fx * x / w * 6.3 + ph) * np.cos(fy * y / h * 6.3)
    for _ in range(3):
        x0, y0 = int(rng.integers(0, w - 1)), int(rng.integers(0, h - 1))
        x1 = x0 + int(rng.integers(1, max(w // 3, 2)))
        y1 = y0 + int(rng.integers(1, max(h // 3, 2)))
        img[y0:y1, x0:x1] += rng.normal(0, texture, 3).astype(np.float32)
    img += rng.normal(0, texture / 6, img.shape).astype(np.float32)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def _photo_like(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """Grey-centred colour patterns (like tests/conftest.py's ``photo_like``), float HxWx3."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        fx, fy, ph = rng.uniform(0.5, 3.0), rng.uniform(0.5, 3.0), rng.uniform(0, 6.3)
        img[..., c] = 127 + 90 * np.sin(fx * x / w * 6.3 + ph) * np.cos(fy * y / h * 6.3)
    for _ in range(3):
        x0, y0 = rng.integers(0, w - 1), rng.integers(0, h - 1)
        x1, y1 = x0 + rng.integers(1, max(w // 2, 2)), y0 + rng.integers(1, max(h // 2, 2))
        img[y0:y1, x0:x1] = rng.uniform(0, 255, 3)
    return img


def training_images(n: int = N_IMAGES, seed: int = 0) -> list[Image.Image]:
    """``n`` generated images covering colour space: textured colour fields (half of them near a
    prototype), photo-like patterns and blends of the two."""
    rng = np.random.default_rng(seed)
    protos = np.asarray([PROTOTYPES[lab] for lab in LABELS], np.float32)
    images = []
    for i in range(n):
        kind = i % 4
        if kind == 0:  # a prototype colour, jittered
            rgb = protos[rng.integers(len(protos))] + rng.normal(0, 12, 3)
        else:  # anywhere in the colour cube
            rgb = rng.uniform(0, 255, 3)
        w, h = int(rng.integers(64, 129)), int(rng.integers(64, 129))
        field = np.asarray(colour_photo(tuple(int(v) for v in np.clip(rgb, 0, 255)), (w, h),
                                        seed=int(rng.integers(2**31)),
                                        texture=float(rng.uniform(0, 40))), np.float32)
        if kind == 3:  # photo-like pattern blended with the colour field
            alpha = rng.uniform(0.0, 1.0)
            field = alpha * _photo_like(w, h, rng) + (1 - alpha) * field
        images.append(Image.fromarray(np.clip(field, 0, 255).astype(np.uint8), "RGB"))
    return images


def build(out: Path) -> Path:
    import torch

    from wildvision.modelcard_md import write_card
    from wildvision.modelpack import ModelCard, Thresholds
    from wildvision.taxonomy import group_of
    from wildvision.torch_model import WildvisionNet, export_onnx, save_state_file

    torch.manual_seed(0)
    model = WildvisionNet("test_efficientnet", len(LABELS))
    cfg = PREPROCESS
    images = training_images()
    x = torch.from_numpy(preprocess(images, cfg))
    mean_rgb = np.stack([np.asarray(resize_crop(im, cfg), np.float64).reshape(-1, 3).mean(0)
                         for im in images])
    target = torch.from_numpy(colour_rule_logits(mean_rgb)).float().softmax(1)
    # Fit the whole network to the rule's probabilities (soft-target cross-entropy), which also
    # sets the BatchNorm statistics to those of the generated images.
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=STEPS)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for step in range(STEPS):
        idx = torch.randint(len(x), (BATCH,), generator=gen)
        loss = -(target[idx] * model(x[idx])[0].log_softmax(1)).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == STEPS - 1:
            print(f"step {step}: loss {loss.item():.3f}")
    model.eval()

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    save_state_file(model, out / "model.safetensors")
    export_onnx(model, out / "model.onnx", INPUT_SIZE)
    card = ModelCard(
        name="tiny-test",
        version="0.0.1",
        arch="test_efficientnet",
        description=DESCRIPTION,
        license="Apache-2.0",
        labels=LABELS,
        label_groups={lab: group_of(lab) for lab in LABELS},
        preprocess=cfg,
        temperature=1.0,
        thresholds={
            "ivory": Thresholds(0.5, 0.2),
            "rhino_horn": Thresholds(0.5, 0.2),
            "pangolin": Thresholds(0.5, 0.2),
            "tiger_parts": Thresholds(0.5, 0.2),
            "live_protected_animal": Thresholds(0.5, 0.2),
        },
        outputs=("logits", "embedding", "features"),
        extra={"intended_use": "Tests only."},
    )
    write_card(out, card)
    return out


def measure(model_dir: Path, n: int = 100) -> None:
    """Print how much the package's outputs vary: over ``n`` photo-like images (the tests'
    ``photo_files``) and ``n`` textured fields of random colours: distinct top labels, the
    decisions, the largest spread of a group probability, and agreement with the colour rule."""
    from collections import Counter

    from wildvision.predict import Classifier

    from conftest import photo_like  # tests/conftest.py (needs pytest)

    clf = Classifier(model_dir)
    rng = np.random.default_rng(12345)
    sets = {
        "photo-like": [photo_like(60 + (i * 7) % 70, 50 + (i * 11) % 60, seed=100 + i)
                       for i in range(n)],
        "random colour": [colour_photo((int(rng.integers(256)), int(rng.integers(256)),
                                        int(rng.integers(256))), seed=i) for i in range(n)],
    }
    for name, images in sets.items():
        preds = clf.classify_many(images)
        tops = Counter(p.top_labels[0].label for p in preds)
        decisions = Counter(p.decision for p in preds)
        groups = np.array([[g.probability for g in p.groups] for p in preds])
        agree = np.mean([p.top_labels[0].label == colour_rule_label(im)
                         for p, im in zip(preds, images, strict=True)])
        print(f"{name} ({n} images): {len(tops)} distinct top labels; decisions "
              f"{dict(sorted(decisions.items()))}; largest group-probability spread "
              f"{np.max(groups.max(0) - groups.min(0)):.3f}; top label = colour rule for "
              f"{agree:.0%}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "data" / "tiny-model")
    ap.add_argument("--measure", action="store_true",
                    help="do not build: print how the outputs of the package in --out vary")
    args = ap.parse_args()
    if args.measure:
        measure(args.out)
    else:
        print(build(args.out))
