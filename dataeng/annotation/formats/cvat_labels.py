"""The labels a CVAT export declares: one spec for ``<meta><labels>`` and ``cvat_labels.json``.

``cvat_labels.json`` is what CVAT's label constructor (Raw) takes; :func:`label_spec` builds
it once and the CVAT writer renders the same list into the XML, so the two never disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dataeng.annotation.formats.export import HOLE_LABEL, PROVENANCE_PREFIX
from dataeng.annotation.masks import _voc_palette
from dataeng.annotation.types import BACKGROUND, IGNORE_INDEX, IGNORE_LABEL, LabelMap

LABELS_FILE = "cvat_labels.json"
"""Beside ``annotations.xml``: paste it into CVAT's Raw label editor."""


def _colour(index: int) -> str:
    """``#rrggbb`` (lower case: older CVAT accepts no other) of palette entry ``index`` (mod 256)."""
    index %= 256
    r, g, b = _voc_palette()[3 * index : 3 * index + 3]
    return f"#{r:02x}{g:02x}{b:02x}"


def label_spec(
    label_map: LabelMap,
    attribute_keys: Sequence[str] = (),
    *,
    holes: bool = False,
    tags: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """The labels a CVAT export declares, as CVAT's label constructor (Raw) takes them.

    One entry per label: ``name``, ``color`` (the masks' palette colour of its class
    index), ``type`` (``any``; ``tag`` for ``tags``) and ``attributes``: one immutable
    text attribute ``dataeng_<key>`` per ``attribute_keys`` on the shape labels
    (``{name, mutable, input_type, default_value, values}``; CVAT refuses an empty
    ``values`` list, so a text attribute has ``[""]``).

    Args:
        label_map: the classes (then ``__ignore__``).
        attribute_keys: provenance keys written on shapes.
        holes: declare ``_background_`` (polygon exports draw holes with it).
        tags: image tag labels (e.g. the review's ``reviewed``).
    """
    attributes = [
        {"name": f"{PROVENANCE_PREFIX}{key}", "mutable": False, "input_type": "text", "default_value": "",
         "values": [""]}
        for key in attribute_keys
    ]
    shapes = [(name, i + 1) for i, name in enumerate(label_map.classes)] + [(IGNORE_LABEL, IGNORE_INDEX)]
    if holes:
        shapes.append((HOLE_LABEL, BACKGROUND))
    spec = [{"name": name, "color": _colour(index), "type": "any", "attributes": [dict(a) for a in attributes]}
            for name, index in shapes]
    taken = {name for name, _ in shapes}
    for k, name in enumerate(tags):
        if name in taken:
            raise ValueError(f"tag label {name!r} is also a shape label")
        spec.append({"name": name, "color": _colour(len(label_map.classes) + 1 + k), "type": "tag",
                     "attributes": []})
    return spec


def is_label_spec(data: object) -> bool:
    """True for a CVAT label list (what :func:`label_spec` makes, or CVAT's Raw label editor
    shows): a non-empty JSON list of objects that each have ``name`` and ``attributes``."""
    return isinstance(data, list) and bool(data) and all(
        isinstance(label, dict) and isinstance(label.get("name"), str) and isinstance(label.get("attributes"), list)
        for label in data
    )
