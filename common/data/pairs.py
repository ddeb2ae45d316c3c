"""Pair datalists and subject-level splits for registration.

A pair item has the keys ``moving_image``, ``fixed_image`` and, when both subjects have labels,
``moving_label``, ``fixed_label``; plus ``id``, ``moving_id``, ``fixed_id``. Everything is deterministic
for a given seed (``numpy.random.default_rng``), and splits are made by SUBJECT so that no subject of
the validation/test sets appears in a training pair.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "make_pair",
    "all_pairs",
    "random_pairs",
    "atlas_pairs",
    "split_subjects",
    "check_disjoint_subjects",
]


def _subject(item: Mapping[str, Any], caller: str) -> str:
    if not isinstance(item, Mapping) or "image" not in item and "label" not in item:
        raise ValueError(f"{caller}: each item must be a dict with an 'image' (or 'label') key, got {item!r}.")
    return str(item.get("subject", item.get("id", item.get("image", item.get("label")))))


def make_pair(moving: Mapping[str, Any], fixed: Mapping[str, Any]) -> dict[str, Any]:
    """Pair dict from two subject items ``{"id", "image"[, "label"]}`` (label-only items are allowed,
    e.g. label maps to synthesise from: they give ``moving_label``/``fixed_label`` only)."""
    mid, fid = _subject(moving, "make_pair"), _subject(fixed, "make_pair")
    out: dict[str, Any] = {"id": f"{mid}_to_{fid}", "moving_id": mid, "fixed_id": fid}
    if "image" in moving and "image" in fixed:
        out["moving_image"], out["fixed_image"] = moving["image"], fixed["image"]
    if "label" in moving and "label" in fixed:
        out["moving_label"], out["fixed_label"] = moving["label"], fixed["label"]
    return out


def all_pairs(items: Sequence[Mapping[str, Any]], ordered: bool = True) -> list[dict[str, Any]]:
    """Every pair of distinct subjects (both directions if ``ordered``), in a fixed order."""
    combos = itertools.permutations(items, 2) if ordered else itertools.combinations(items, 2)
    return [make_pair(m, f) for m, f in combos if _subject(m, "all_pairs") != _subject(f, "all_pairs")]


def random_pairs(
    items: Sequence[Mapping[str, Any]], n_pairs: int, seed: int = 0, allow_same_subject: bool = False
) -> list[dict[str, Any]]:
    """``n_pairs`` random inter-subject pairs (with replacement over pairs), deterministic for ``seed``.

    Args:
        items: subject items.
        n_pairs: number of pairs to draw.
        seed: random seed; the same seed and items give the same list.
        allow_same_subject: also allow moving and fixed from the same subject (e.g. two synthetic draws).

    Raises:
        ValueError: fewer than two subjects (one with ``allow_same_subject``), or ``n_pairs`` < 0.
    """
    items = list(items)
    need = 1 if allow_same_subject else 2
    if len({_subject(i, "random_pairs") for i in items}) < need:
        raise ValueError(f"random_pairs: need at least {need} distinct subject(s), got {len(items)} item(s).")
    if n_pairs < 0:
        raise ValueError(f"random_pairs: n_pairs must be >= 0, got {n_pairs}.")
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n_pairs:
        m, f = rng.integers(0, len(items), 2)
        if not allow_same_subject and _subject(items[m], "random_pairs") == _subject(items[f], "random_pairs"):
            continue
        out.append(make_pair(items[m], items[f]))
    return out


def atlas_pairs(
    atlas: Mapping[str, Any], items: Iterable[Mapping[str, Any]], direction: str = "atlas_to_subject"
) -> list[dict[str, Any]]:
    """Pairs between an atlas/template and each subject.

    Args:
        atlas: ``{"id", "image"[, "label"]}`` (e.g. the project template).
        direction: ``"atlas_to_subject"`` (atlas moving, subject fixed: atlas-based segmentation) or
            ``"subject_to_atlas"`` (subject moving, atlas fixed: template-space normalisation).
    """
    if direction not in ("atlas_to_subject", "subject_to_atlas"):
        raise ValueError(f"atlas_pairs: direction must be 'atlas_to_subject' or 'subject_to_atlas', got {direction!r}.")
    if direction == "atlas_to_subject":
        return [make_pair(atlas, s) for s in items]
    return [make_pair(s, atlas) for s in items]


def split_subjects(
    items: Sequence[Mapping[str, Any]],
    n_validation: int | float = 0.1,
    n_test: int | float = 0.1,
    seed: int = 0,
    fixed: Mapping[str, Iterable[str]] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Split subject items into ``training``/``validation``/``test`` by subject (key ``subject`` or ``id``).

    Args:
        n_validation, n_test: counts (int) or fractions (float in [0, 1)) of the subjects left after ``fixed``.
        seed: shuffle seed.
        fixed: subjects pinned to a split, e.g. ``{"test": ["seg_19", "seg_20"]}``; they never go elsewhere.

    Raises:
        ValueError: unknown split names in ``fixed``, a subject pinned twice, or more subjects requested than
            available.
    """
    fixed = {k: set(v) for k, v in (fixed or {}).items()}
    bad = set(fixed) - {"training", "validation", "test"}
    if bad:
        raise ValueError(f"split_subjects: unknown split(s) {sorted(bad)} in `fixed`.")
    pinned = [s for v in fixed.values() for s in v]
    if len(pinned) != len(set(pinned)):
        raise ValueError("split_subjects: a subject is pinned to more than one split in `fixed`.")
    subjects = sorted({_subject(i, "split_subjects") for i in items})
    free = [s for s in subjects if s not in set(pinned)]
    order = [free[i] for i in np.random.default_rng(seed).permutation(len(free))]

    def count(n: int | float) -> int:
        return int(round(n * len(free))) if isinstance(n, float) else int(n)

    nv, nt = count(n_validation), count(n_test)
    if nv < 0 or nt < 0 or nv + nt > len(free):
        raise ValueError(f"split_subjects: asked for {nv} validation + {nt} test of {len(free)} free subjects.")
    assign = {s: "test" for s in order[:nt]} | {s: "validation" for s in order[nt : nt + nv]}
    for split, names in fixed.items():
        assign.update({s: split for s in names})
    out: dict[str, list[dict[str, Any]]] = {"training": [], "validation": [], "test": []}
    for item in items:
        out[assign.get(_subject(item, "split_subjects"), "training")].append(dict(item))
    return out


def check_disjoint_subjects(splits: Mapping[str, Iterable[Mapping[str, Any]]]) -> None:
    """Raise ``ValueError`` if a subject (of items or of pairs' ``moving_id``/``fixed_id``) is in two splits."""
    owner: dict[str, str] = {}
    for split, entries in splits.items():
        for e in entries:
            ids = [e[k] for k in ("moving_id", "fixed_id") if k in e] or [_subject(e, "check_disjoint_subjects")]
            for sid in ids:
                if owner.setdefault(str(sid), split) != split:
                    raise ValueError(
                        f"check_disjoint_subjects: subject {sid!r} is in both {owner[str(sid)]!r} and {split!r}."
                    )
