from __future__ import annotations

import pytest

from dataeng.annotation.types import BACKGROUND, IGNORE_INDEX, LabelMap


def test_label_map_lookup_order() -> None:
    lm = LabelMap(["person", "Person2"], {"PEDESTRIAN": "person"})
    assert lm.index("person") == 1
    assert lm.index("PERSON") == 1
    assert lm.index("Person2") == 2
    assert lm.index("pedestrian") == 1
    assert lm.index("__ignore__") == IGNORE_INDEX
    assert lm.index("_background_") == BACKGROUND
    assert lm.index("background") == BACKGROUND
    assert lm.index("car") is None
    assert lm.names == {0: "_background_", 1: "person", 2: "Person2"}
    assert lm.num_classes == 2


def test_label_map_case_sensitive_first() -> None:
    lm = LabelMap(["a", "A"])
    assert (lm.index("a"), lm.index("A")) == (1, 2)


@pytest.mark.parametrize(
    ("classes", "aliases", "match"),
    [(["a", "a"], {}, "duplicate"), (["a"], {"b": "zzz"}, "unknown class")],
)
def test_label_map_refuses(classes: list[str], aliases: dict[str, str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LabelMap(classes, aliases)
