"""The wildvision taxonomy: the one source of class names.

Two levels:

* **groups** — what a moderation policy acts on: ``ivory``, ``rhino_horn``, ``pangolin``
  (scales and parts), ``tiger_parts`` (skins, teeth, claws, bones), ``live_protected_animal``
  and ``benign``;
* **fine labels** — species or product types (``live_tiger``, ``ivory_carving``,
  ``domestic_cat`` ...), each mapped to exactly one group, with the CITES appendix where one
  applies.

A model predicts fine labels (the ``labels`` of its card); group probabilities are the sum of
the probabilities of the fine labels in that group. A model may be trained on a subset of the
fine labels, or on new fine labels with their groups: a retraining run records them in its card,
so the card stays self-describing (loading a card checks its labels with
:func:`check_label_groups` and changes nothing here).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .errors import ConfigError

__all__ = [
    "FINE_LABELS",
    "FLAGGABLE_GROUPS",
    "GROUPS",
    "FineLabel",
    "Group",
    "builtin_label",
    "check_label_groups",
    "fine_label",
    "group_of",
    "labels_in_group",
    "register_label",
]


@dataclass(frozen=True)
class Group:
    """A policy group."""

    name: str
    description: str
    flaggable: bool


@dataclass(frozen=True)
class FineLabel:
    """A fine label (species or product type) and the group it belongs to."""

    name: str
    group: str
    description: str
    cites_appendix: str | None = None  # "I", "II", "I/II" or None (not CITES-listed / n.a.)
    has_public_data: bool = True  # False: no public photos exist in the reference data


GROUPS: tuple[Group, ...] = (
    Group("ivory", "Elephant (and mammoth/walrus/hippo) ivory: carvings, tusks, jewellery", True),
    Group("rhino_horn", "Rhinoceros horn, raw or carved, and horn powder", True),
    Group("pangolin", "Pangolin scales and body parts", True),
    Group("tiger_parts", "Tiger skins, teeth, claws, bones and derived products", True),
    Group("live_protected_animal", "Live animals of CITES-listed or protected species", True),
    Group("benign", "Everything else, including legal look-alikes (bone, horn, resin, ceramics)",
          False),
)
GROUP_NAMES: tuple[str, ...] = tuple(g.name for g in GROUPS)
FLAGGABLE_GROUPS: tuple[str, ...] = tuple(g.name for g in GROUPS if g.flaggable)

_F = FineLabel
_BUILTIN: tuple[FineLabel, ...] = (
    # ivory
    _F("ivory_carving", "ivory", "Carved ivory objects: figures, netsuke, boxes, inlays", "I/II"),
    _F("raw_tusk", "ivory", "Whole or cut raw tusks", "I/II", has_public_data=False),
    _F("ivory_jewellery", "ivory", "Ivory bangles, beads, pendants, chopsticks", "I/II",
       has_public_data=False),
    # rhino horn
    _F("rhino_horn_raw", "rhino_horn", "Whole or cut raw rhino horn", "I", has_public_data=False),
    _F("rhino_horn_carved", "rhino_horn", "Carved rhino horn: cups, beads, bangles", "I",
       has_public_data=False),
    # pangolin
    _F("pangolin_scales", "pangolin", "Loose pangolin scales", "I", has_public_data=False),
    _F("pangolin_parts", "pangolin", "Pangolin skins, claws and products", "I",
       has_public_data=False),
    # tiger parts
    _F("tiger_skin", "tiger_parts", "Tiger skins and pelts", "I", has_public_data=False),
    _F("tiger_teeth_claws", "tiger_parts", "Tiger teeth and claws, loose or in jewellery", "I",
       has_public_data=False),
    _F("tiger_bone", "tiger_parts", "Tiger bones, bone wine, bone glue", "I",
       has_public_data=False),
    # live protected animals
    _F("live_tiger", "live_protected_animal", "Tiger (Panthera tigris)", "I"),
    _F("live_lion", "live_protected_animal", "Lion (Panthera leo)", "II"),
    _F("live_leopard", "live_protected_animal", "Leopard, incl. Amur leopard (Panthera pardus)",
       "I"),
    _F("live_cheetah", "live_protected_animal", "Cheetah (Acinonyx jubatus)", "I"),
    _F("live_spotted_bigcat", "live_protected_animal", "Spotted big cat (leopard/jaguar)", "I"),
    _F("live_cougar", "live_protected_animal", "Cougar / puma (Puma concolor)", "II"),
    _F("live_bigcat_other", "live_protected_animal", "Other big cats (snow leopard, jaguar...)",
       "I"),
    _F("live_wild_smallcat", "live_protected_animal",
       "Wild small cats (ocelot, serval, caracal...)", "I/II"),
    _F("live_elephant", "live_protected_animal", "Elephants (Loxodonta, Elephas)", "I/II"),
    _F("live_rhino", "live_protected_animal", "Rhinoceroses", "I"),
    _F("live_primate", "live_protected_animal", "Monkeys and apes", "I/II"),
    _F("live_loris", "live_protected_animal", "Slow lorises (Nycticebus)", "I"),
    _F("live_pangolin", "live_protected_animal", "Live pangolins (Manis, Phataginus, Smutsia)",
       "I"),
    _F("live_parrot", "live_protected_animal", "Parrots, macaws and cockatoos", "I/II"),
    _F("live_reptile", "live_protected_animal", "Lizards and snakes of listed species", "I/II"),
    _F("live_crocodile", "live_protected_animal", "Crocodiles and alligators", "I/II"),
    _F("live_turtle_tortoise", "live_protected_animal", "Turtles and tortoises (e.g. hawksbill)",
       "I/II"),
    _F("live_exotic_other", "live_protected_animal", "Other exotic wild animals", None),
    _F("live_bear", "live_protected_animal", "Bears (all Ursidae are CITES-listed)", "I/II"),
    _F("live_wolf", "live_protected_animal", "Grey wolf (Canis lupus)", "I/II"),
    # benign
    _F("domestic_cat", "benign", "Domestic cats"),
    _F("domestic_dog", "benign", "Domestic dogs"),
    _F("pet_other", "benign", "Common pets and pet birds (budgies, hamsters, fish)"),
    _F("ceramics", "benign", "Ceramics, porcelain and pottery (ivory look-alike)"),
    _F("statue_figurine", "benign", "Statues and figurines of stone, resin, metal, wood"),
    _F("tableware", "benign", "Cups, ewers, jugs"),
    _F("bone_horn_craft", "benign",
       "Legal bone and buffalo-horn crafts: beads, combs, dice, handles (ivory/horn look-alike)"),
    _F("animal_print_textile", "benign", "Cowhide and animal-print rugs and textiles"),
    _F("clothing", "benign", "Garments and shoes"),
    _F("consumer_product", "benign", "Listing photos of everyday products"),
    _F("plush_toy", "benign",
       "Toy animals (plush, plastic, wooden), including of protected species"),
    _F("watch", "benign", "Watches"),
    _F("furniture", "benign", "Chairs and furniture"),
    _F("everyday_object", "benign", "Vehicles, instruments, electronics, food, plants, people..."),
    _F("background_scene", "benign", "Scenes and backgrounds with no main object"),
    # benign, not CITES-listed (or exempt) animals: they must not be called protected ones
    _F("farm_animal", "benign", "Cattle, horses, donkeys, pigs (not CITES-listed)"),
    _F("bird_common", "benign", "Poultry, ducks and geese (not CITES-listed)"),
    _F("wild_mammal_common", "benign",
       "Unlisted wild mammals: red fox, deer, plains zebra, raccoon, kangaroo, rabbit, wild boar"),
    _F("fish_sea_life", "benign", "Fish (food, aquarium), crabs, lobsters, shrimps, jellyfish"),
    _F("insect_arthropod", "benign", "Insects and spiders (bees, beetles, butterflies, ants)"),
    # benign, everyday marketplace goods and photos
    _F("food_produce", "benign", "Food, groceries, fruit and vegetables"),
    _F("plant_flower", "benign", "Plants and flowers"),
    _F("tool_hardware", "benign", "Tools and hardware"),
    _F("document_screenshot", "benign", "Receipts, documents, screenshots, books, stationery"),
    _F("seashell_decor", "benign", "Seashells and shell decor (no coral: corals are CITES-listed)"),
)

_REGISTRY: dict[str, FineLabel] = {f.name: f for f in _BUILTIN}
_BUILTIN_BY_NAME: dict[str, FineLabel] = dict(_REGISTRY)  # never changes
FINE_LABELS: tuple[str, ...] = tuple(f.name for f in _BUILTIN)


def fine_label(name: str) -> FineLabel:
    """Return the :class:`FineLabel` called ``name``.

    Raises:
        ConfigError: ``name`` is not a fine label; the message lists the known ones.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"unknown fine label {name!r}; known labels: {', '.join(sorted(_REGISTRY))}"
        ) from None


def group_of(name: str) -> str:
    """Return the group of fine label ``name``."""
    return fine_label(name).group


def labels_in_group(group: str) -> tuple[str, ...]:
    """All registered fine labels of ``group``."""
    if group not in GROUP_NAMES:
        raise ConfigError(f"unknown group {group!r}; groups: {', '.join(GROUP_NAMES)}")
    return tuple(f.name for f in _REGISTRY.values() if f.group == group)


def register_label(label: FineLabel) -> FineLabel:
    """Add a new fine label (e.g. a new species for retraining) to the taxonomy.

    Registering the same definition twice is a no-op; a conflicting one is an error.
    """
    if label.group not in GROUP_NAMES:
        raise ConfigError(
            f"fine label {label.name!r}: unknown group {label.group!r}; "
            f"groups: {', '.join(GROUP_NAMES)}"
        )
    if not label.name.isidentifier() or label.name != label.name.lower():
        raise ConfigError(f"fine label {label.name!r} must be lower_snake_case")
    old = _REGISTRY.get(label.name)
    if old is not None and old.group != label.group:
        raise ConfigError(
            f"fine label {label.name!r} already exists in group {old.group!r}, not {label.group!r}"
        )
    _REGISTRY.setdefault(label.name, label)
    return _REGISTRY[label.name]


def builtin_label(name: str) -> FineLabel | None:
    """The built-in :class:`FineLabel` called ``name``, or None (labels added at run time by
    :func:`register_label` are not built in)."""
    return _BUILTIN_BY_NAME.get(name)


def check_label_groups(label_groups: Iterable[tuple[str, str]]) -> None:
    """Check ``(fine_label, group)`` pairs (a model card's mapping) without changing the
    taxonomy: a built-in label keeps its built-in group; a new label needs a known group and a
    lower_snake_case name. Two cards may map the same new label to different groups.

    Raises:
        ConfigError: the first pair that fails, with the reason.
    """
    for name, group in label_groups:
        if group not in GROUP_NAMES:
            raise ConfigError(f"label {name!r}: unknown group {group!r}; groups: "
                              f"{', '.join(GROUP_NAMES)}")
        known = _BUILTIN_BY_NAME.get(name)
        if known is not None:
            if known.group != group:
                raise ConfigError(
                    f"label {name!r} is in group {known.group!r} in the taxonomy "
                    f"but {group!r} in the model card"
                )
        elif not name.isidentifier() or name != name.lower():
            raise ConfigError(f"fine label {name!r} must be lower_snake_case")
