"""The model package format: card.json parsing, sha256 verification, refusal of pickles."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from wildvision.errors import ConfigError, ModelIntegrityError
from wildvision.modelcard_md import render_card, write_card
from wildvision.modelpack import (
    CARD_FORMAT,
    ModelCard,
    ModelPackage,
    Thresholds,
    load_package,
    sha256_file,
)
from wildvision.preprocess import PreprocessConfig
from wildvision.taxonomy import GROUP_NAMES


@pytest.fixture
def pkg_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "tiny-copy"
    shutil.copytree(tiny_model_dir, dst)
    return dst


def _edit_card(pkg: Path, change: Callable[[dict[str, Any]], None]) -> None:
    path = pkg / "card.json"
    card = json.loads(path.read_text(encoding="utf-8"))
    change(card)
    path.write_text(json.dumps(card), encoding="utf-8")


def test_tiny_model_loads_and_verifies(tiny_model_dir: Path) -> None:
    pkg = load_package(tiny_model_dir)
    card = pkg.card
    assert (card.name, card.version) == ("tiny-test", "0.0.1")
    assert len(card.labels) == 9
    assert card.groups == GROUP_NAMES  # all six groups, in taxonomy order
    assert card.preprocess.input_size == 64
    assert set(card.files) == {"model.onnx", "model.safetensors"}
    for name, digest in card.files.items():
        assert sha256_file(tiny_model_dir / name) == digest
    assert pkg.precisions == ("fp32",)
    assert pkg.onnx_file() == tiny_model_dir / "model.onnx"
    with pytest.raises(ModelIntegrityError, match=r"no file 'model\.int8\.onnx'"):
        pkg.onnx_file("int8")
    with pytest.raises(ConfigError, match="precision"):
        pkg.onnx_file("fp16")
    assert card.threshold("ivory") == Thresholds(0.5, 0.2)


def test_threshold_defaults_and_validation(tiny_model_dir: Path) -> None:
    card = load_package(tiny_model_dir).card.with_updates(thresholds={})
    assert card.threshold("ivory") == Thresholds(flag=0.5, review=0.3)
    assert card.threshold("benign") == Thresholds(1.0, 1.0)  # never flags
    t = Thresholds(flag=0.8, review=0.4)
    assert [t.decide(p) for p in (0.9, 0.8, 0.5, 0.4, 0.1)] == [
        "flag", "flag", "review", "review", "pass"
    ]
    for flag, review in ((0.3, 0.5), (1.2, 0.5), (0.5, -0.1), (float("nan"), 0.1)):
        with pytest.raises(ConfigError):
            Thresholds(flag=flag, review=review)


def test_tampered_weights_fail_the_hash_check(pkg_copy: Path) -> None:
    onnx = pkg_copy / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0x01
    onnx.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="sha256 mismatch") as info:
        load_package(pkg_copy)
    assert "model.onnx" in str(info.value)
    assert load_package(pkg_copy, verify=False).card.name == "tiny-test"


def test_missing_weight_file(pkg_copy: Path) -> None:
    (pkg_copy / "model.safetensors").unlink()
    with pytest.raises(ModelIntegrityError,
                       match=r"model\.safetensors listed in card\.json is missing"):
        load_package(pkg_copy)


def test_not_a_package(tmp_path: Path) -> None:
    with pytest.raises(ModelIntegrityError, match=r"no card\.json"):
        load_package(tmp_path)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "unreadable card"),
        ("[1, 2]", "must be a JSON object"),
    ],
)
def test_unparseable_card(pkg_copy: Path, text: str, match: str) -> None:
    (pkg_copy / "card.json").write_text(text, encoding="utf-8")
    with pytest.raises(ModelIntegrityError, match=match):
        load_package(pkg_copy)


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda card: card.__setitem__(key, value)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda c: c.pop("labels"), "missing required key 'labels'"),
        (lambda c: c.pop("name"), "missing required key 'name'"),
        (_set("labels", ["ivory_carving", "ivory_carving"]), "unique"),
        (_set("labels", []), "unique, non-empty"),
        (lambda c: c["label_groups"].pop("clothing"), "labels without a group"),
        (lambda c: c["label_groups"].__setitem__("clothing", "fashion"), "unknown groups"),
        (lambda c: c["label_groups"].__setitem__("clothing", "ivory"),
         "'clothing' is in group 'benign' in the taxonomy"),
        (_set("temperature", 0), "temperature"),
        (_set("temperature", "hot"), "invalid value"),
        (_set("thresholds", {"ivory": {"flag": 0.2, "review": 0.6}}), "review <= flag"),
        (_set("thresholds", {"ivory": {"flag": 0.9}}), "missing required key 'review'"),
        (lambda c: c["preprocess"].__setitem__("antialias", True), "unknown preprocess keys"),
        (lambda c: c["preprocess"].__setitem__("input_size", 2), "input_size"),
        (lambda c: c.pop("files"), "lists no model.onnx"),
        (_set("card_format", CARD_FORMAT + 1), "newer than this wildvision reads"),
    ],
)
def test_bad_card_is_refused(pkg_copy: Path, change: Callable[[dict[str, Any]], None],
                             match: str) -> None:
    _edit_card(pkg_copy, change)
    with pytest.raises(ModelIntegrityError, match=match):
        load_package(pkg_copy)


@pytest.mark.parametrize("name", ["model.pt", "model.pkl", "weights.ckpt", "../model.onnx",
                                  "sub/model.onnx", "model.bin"])
def test_pickles_and_paths_are_refused(pkg_copy: Path, name: str) -> None:
    (pkg_copy / "model.pt").write_bytes(b"\x80\x04not really a pickle")

    def add(card: dict[str, Any]) -> None:
        card["files"][name] = "0" * 64

    _edit_card(pkg_copy, add)
    with pytest.raises(ModelIntegrityError,
                       match=r"not a plain \.onnx/\.safetensors/\.npz") as info:
        load_package(pkg_copy, verify=False)
    assert name in str(info.value)


def test_unknown_top_level_keys_are_kept(pkg_copy: Path) -> None:
    _edit_card(pkg_copy, _set("future_field", {"a": 1}))
    card = load_package(pkg_copy).card
    assert card.extra["future_field"] == {"a": 1}
    assert card.to_dict()["future_field"] == {"a": 1}


def test_card_round_trip(tiny_model_dir: Path) -> None:
    card = load_package(tiny_model_dir).card
    again = ModelCard.from_dict(json.loads(json.dumps(card.to_dict())))
    assert again == card
    assert again.to_dict() == card.to_dict()


def test_write_card_hashes_and_renders(tiny_model_dir: Path, tmp_path: Path) -> None:
    pkg_dir = tmp_path / "new-model"
    pkg_dir.mkdir()
    shutil.copy(tiny_model_dir / "model.onnx", pkg_dir / "model.onnx")
    (pkg_dir / "notes.txt").write_text("not a weight file")
    labels = ("ivory_carving", "domestic_cat")
    card = ModelCard(
        name="new-model",
        version="1.2.3",
        labels=labels,
        label_groups={"ivory_carving": "ivory", "domestic_cat": "benign"},
        preprocess=PreprocessConfig(input_size=64),
        temperature=1.5,
        thresholds={"ivory": Thresholds(0.9, 0.4)},
        description="A test card.",
        metrics={"test": {"command": "wildvision bench --split test", "macro_f1": 0.5,
                          "per_class": {"ivory_carving": 0.1}}},
        extra={"intended_use": "Unit tests.", "limitations": "None known."},
    )
    written = write_card(pkg_dir, card)
    assert written.files == {"model.onnx": sha256_file(pkg_dir / "model.onnx")}
    loaded = load_package(pkg_dir)
    assert loaded.card == written
    readme = (pkg_dir / "README.md").read_text(encoding="utf-8")
    assert readme == render_card(written)
    assert readme.startswith("# new-model 1.2.3")
    for text in ("Unit tests.", "None known.", "| ivory | 0.9000 | 0.4000 |",
                 "wildvision bench --split test", written.files["model.onnx"],
                 "Temperature (calibration): 1.5000", "| ivory_carving | ivory | I/II |"):
        assert text in readme, text
    assert isinstance(loaded, ModelPackage)


def _bench_block(macro: float, ivory_r95: float | None) -> dict[str, object]:
    """A metrics block in the shape ``wildvision.bench.card_metrics`` writes into cards."""
    groups: dict[str, object] = {"live_protected_animal": {
        "support": 10, "average_precision": {"value": 0.99, "ci95": [0.98, 1.0]},
        "flag_precision": {"value": 1.0, "ci95": [1.0, 1.0]},
        "flag_recall": {"value": 0.9, "ci95": [0.8, 1.0]}, "flag_threshold": 0.5,
        "recall_at_precision_0.95": 0.9}}
    if ivory_r95 is not None:
        groups["ivory"] = {"support": 5, "flag_precision": {"value": 0.8, "ci95": [0.5, 1.0]},
                           "flag_recall": {"value": 0.6, "ci95": [0.2, 1.0]},
                           "argmax_f1": ivory_r95 + 0.1, "argmax_f1_ci95": [0.5, 0.95],
                           "recall_at_precision_0.95": ivory_r95}
    return {"source": "wildvision bench", "command": "wildvision bench -m X --split test",
            "data": {"manifest": "m.csv", "manifest_sha256": "ab" * 32, "split": "test",
                     "suite": None, "images": 15, "evaluated": 15, "failed": 0},
            "model": {"name": "m", "version": "1", "card_sha256": "cd" * 32},
            "git_commit": "0" * 40, "generated": "2026-11-29T00:00:00+00:00",
            "headline": {"macro_f1_group": {"value": macro, "ci95": [macro - 0.1, macro + 0.01]}},
            "groups": groups}


def test_card_renders_bench_tables_and_baseline_comparison() -> None:
    card = ModelCard(
        name="m", version="1", labels=("ivory_carving", "domestic_cat"),
        label_groups={"ivory_carving": "ivory", "domestic_cat": "benign"},
        preprocess=PreprocessConfig(input_size=64),
        metrics={"reference_test": _bench_block(0.9, 0.7),
                 "baseline_zero_shot": _bench_block(0.6, None),
                 "previous_v0": _bench_block(0.8, 0.6)},
        extra={"metric_blocks": {"baseline_zero_shot": "(a) no training"},
               "model_choice": "Chosen because it is small."},
    )
    md = render_card(card)
    # the comparison: one column per block, reference last, intervals kept
    assert "- `baseline_zero_shot`: (a) no training" in md
    assert ("| macro_f1_group | 0.6000 [0.5000, 0.6100] | 0.8000 [0.7000, 0.8100] | "
            "0.9000 [0.8000, 0.9100] |" in md)  # a previous_* version sits beside the baselines
    # a group the baseline has no label in shows as a dash, not as 0
    assert "| ivory: recall_at_precision_0.95 | — | 0.6000 | 0.7000 |" in md
    # an argmax F1 is shown with the interval that card_metrics keeps beside it
    assert "| ivory: argmax_f1 | — | 0.7000 [0.5000, 0.9500] | 0.8000 [0.5000, 0.9500] |" in md
    # the per-block section is a table with provenance, not a JSON dump
    assert "| macro_f1_group | 0.9000 | [0.8000, 0.9100] |" in md
    assert "15 of 15 images evaluated, 0 failed" in md
    assert "## Model choice\n\nChosen because it is small." in md
    assert '{"value"' not in md


def test_thresholds_parse_overrides() -> None:
    from wildvision.modelpack import Thresholds

    assert Thresholds.parse(["ivory=0.9:0.5", "pangolin_scales=0.8"]) == {
        "ivory": {"flag": 0.9, "review": 0.5}, "pangolin_scales": {"flag": 0.8}}
    assert Thresholds.parse(["ivory=0.9", "ivory=0.7"]) == {"ivory": {"flag": 0.7}}
    for bad in ("ivory", "ivory=x", "ivory=0.9:y"):
        with pytest.raises(ConfigError, match="GROUP=FLAG"):
            Thresholds.parse([bad])


# -- ONNX external data and verify-then-load ----------------------------------------------


def _externalize(pkg: Path, location: str = "weights.bin") -> None:
    """Rewrite pkg/model.onnx to keep its weights in ``location`` (ONNX external data)."""
    import onnx

    model = onnx.load(str(pkg / "model.onnx"))
    onnx.save_model(model, str(pkg / "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location=location, size_threshold=0)
    assert (pkg / location).stat().st_size > 100_000


def _logits(model: Any, batch: np.ndarray) -> np.ndarray:
    from wildvision.runtime import create_backend

    return create_backend(load_package(model)).run(batch)["logits"]


def test_external_data_the_card_does_not_list_is_refused(pkg_copy: Path) -> None:
    """model.onnx with its weights in an unlisted weights.bin loaded, and zeroing that file
    changed the predictions with no integrity error."""
    _externalize(pkg_copy)
    _edit_card(pkg_copy, lambda c: c["files"].update(
        {"model.onnx": sha256_file(pkg_copy / "model.onnx")}))
    with pytest.raises(ModelIntegrityError, match=r"external data that card\.json does not list"):
        _logits(pkg_copy, np.zeros((1, 3, 64, 64), np.float32))
    (pkg_copy / "weights.bin").write_bytes(bytes((pkg_copy / "weights.bin").stat().st_size))
    with pytest.raises(ModelIntegrityError):
        _logits(pkg_copy, np.zeros((1, 3, 64, 64), np.float32))


def test_listed_external_data_is_verified_and_loaded_from_memory(
        pkg_copy: Path, tiny_model_dir: Path) -> None:
    batch = np.random.default_rng(0).random((2, 3, 64, 64), dtype=np.float32)
    expected = _logits(tiny_model_dir, batch)
    _externalize(pkg_copy, "weights.data")
    card = write_card(pkg_copy, load_package(pkg_copy, verify=False).card)
    assert "weights.data" in card.files
    np.testing.assert_allclose(_logits(pkg_copy, batch), expected, rtol=1e-5, atol=1e-6)
    pkg = load_package(pkg_copy)
    size = (pkg_copy / "weights.data").stat().st_size
    (pkg_copy / "weights.data").write_bytes(bytes(size))  # zeroed after verification
    from wildvision.runtime import create_backend

    with pytest.raises(ModelIntegrityError, match=r"weights\.data: sha256 mismatch"):
        create_backend(pkg)
    with pytest.raises(ModelIntegrityError, match="sha256 mismatch"):
        load_package(pkg_copy)


def test_model_swapped_after_verification_is_not_loaded(pkg_copy: Path) -> None:
    """What ONNX Runtime loads is the bytes that were hashed, not the file read again."""
    from wildvision.runtime import create_backend

    pkg = load_package(pkg_copy)
    shutil.copy(pkg_copy / "model.onnx", pkg_copy / "original.onnx")
    import onnx

    model = onnx.load(str(pkg_copy / "model.onnx"))
    model.graph.initializer[0].raw_data = bytes(len(model.graph.initializer[0].raw_data))
    onnx.save_model(model, str(pkg_copy / "model.onnx"))  # a valid model, other weights
    with pytest.raises(ModelIntegrityError, match=r"model\.onnx: sha256 mismatch"):
        create_backend(pkg)


# -- malformed cards: typed errors ---------------------------------------------------------


@pytest.mark.parametrize("raw", [
    b'{"name": "caf\xe9"}',  # Latin-1, not UTF-8
    b"[" * 200_000 + b"]" * 200_000,  # nested past the recursion limit
    b"\xef\xbb\xbf" + b"{}",  # a UTF-8 byte-order mark
], ids=["invalid-utf8", "deep-nesting", "bom"])
def test_malformed_card_bytes_give_integrity_errors(pkg_copy: Path, raw: bytes) -> None:
    (pkg_copy / "card.json").write_bytes(raw)
    with pytest.raises(ModelIntegrityError, match="card"):
        load_package(pkg_copy)


@pytest.mark.parametrize("change", [
    lambda c: c.update(preprocess=[1, 2]),
    lambda c: c.update(thresholds={"ivory": 0.5}),
    lambda c: c.update(labels=5),
    lambda c: c.update(files=["model.onnx"]),
], ids=["preprocess-list", "threshold-number", "labels-number", "files-list"])
def test_malformed_card_values_give_integrity_errors(
        pkg_copy: Path, change: Callable[[dict[str, Any]], None]) -> None:
    _edit_card(pkg_copy, change)
    with pytest.raises(ModelIntegrityError):
        load_package(pkg_copy)


def test_cards_map_a_new_label_each_their_own_way(tiny_model_dir: Path) -> None:
    """Loading a card changes no process-wide taxonomy: card A maps a new label to benign,
    card B maps the same label to ivory, and both load in one process (B used to raise)."""
    from wildvision import taxonomy

    base = load_package(tiny_model_dir).card.to_dict()
    label = "pangolin_figurine_regression"
    cards = []
    for group in ("benign", "ivory"):
        d = json.loads(json.dumps(base))
        d["labels"] = [*d["labels"], label]
        d["label_groups"][label] = group
        cards.append(ModelCard.from_dict(d))
    assert [c.label_groups[label] for c in cards] == ["benign", "ivory"]
    with pytest.raises(ConfigError, match="unknown fine label"):
        taxonomy.fine_label(label)  # nothing was registered
    assert label not in taxonomy.labels_in_group("benign")
    assert label in render_card(cards[1])  # the card renders a label new to the taxonomy
    # the card's mapping is still checked: a built-in label keeps its group, names and groups
    # must be valid
    for change in ({"ivory_carving": "benign"}, {label: "no_such_group"}, {"Bad Name": "benign"}):
        d = json.loads(json.dumps(base))
        for lab, g in change.items():
            if lab not in d["labels"]:
                d["labels"].append(lab)
            d["label_groups"][lab] = g
        with pytest.raises(ModelIntegrityError):
            ModelCard.from_dict(d)
