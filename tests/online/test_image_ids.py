"""normalize_image_ids (every id of a request checked and de-aliased in a few passes over the
joined ids) against the same rules applied one id at a time, on random ids."""

from __future__ import annotations

import random
import re

import pytest

from serving.online.api_models import MAX_IMAGE_ID_CHARS, normalize_image_id, normalize_image_ids
from serving.online.errors import InvalidInput

SEGMENTS = ["a", "photo_01.jpg", "", ".", "..", ".hidden", "b c", "été", "猫", "x\x01y", "tab\t", "del\x7f",
            "\u00a0nbsp", "\ud800", "a.", "./", "\n"]


def one_at_a_time(ids: list) -> list[str] | None:
    """The rules per id; None when some id is invalid."""
    for i in ids:
        if not isinstance(i, str) or not i or len(i) > MAX_IMAGE_ID_CHARS or re.search(r"[\x00-\x1f\x7f]", i):
            return None
        try:
            i.encode("utf-8")
        except UnicodeEncodeError:
            return None
    return [normalize_image_id(i) for i in ids]


@pytest.mark.parametrize("seed", range(300))
def test_the_joined_checks_agree_with_the_rules_one_id_at_a_time(seed):
    rng = random.Random(seed)
    ids = ["/".join(rng.choice(SEGMENTS[:7] if rng.random() < 0.7 else SEGMENTS) for _ in range(rng.randint(1, 4)))
           for _ in range(rng.randint(1, 30))]
    if rng.random() < 0.05:
        ids[rng.randrange(len(ids))] = rng.choice([3, None, "x" * (MAX_IMAGE_ID_CHARS + 1)])
    want = one_at_a_time(ids)
    if want is None:
        with pytest.raises(InvalidInput):
            normalize_image_ids(ids, "candidates")
    else:
        assert normalize_image_ids(ids, "candidates") == want


def test_ids_without_aliases_come_back_as_they_are():
    ids = [f"album-{k}/photo_{k}.jpg" for k in range(200)] + ["..", "a/../b", ".hidden/x.", "猫/été"]
    assert normalize_image_ids(ids, "candidates") is ids
