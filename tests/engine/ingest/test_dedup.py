"""The near-duplicate lookup: batched queries give what a scan of every stored hash gives."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from dataeng.db.schema import Image
from dataeng.engine.ingest.dedup import find_near, find_near_many, hamming, signed_chunks
from tests.factories import make_workspace

pytestmark = pytest.mark.backends
RADIUS = 8


def _flip(h: int, bits: int, rng: random.Random) -> int:
    for p in rng.sample(range(64), bits):
        h ^= 1 << p
    return h


def test_batched_lookup_equals_a_scan_of_every_stored_hash(tmp_path: Path, registry_url: str | None) -> None:
    rng = random.Random(7)
    ws, _ = make_workspace(tmp_path, n_train=0, n_val=0, n_test=0, registry=registry_url)
    stored = [rng.getrandbits(64) for _ in range(60)]
    stored += [_flip(stored[k], rng.randint(1, 12), rng) for k in range(40)]  # neighbours near and past the radius
    with ws.session() as s:
        rows = [Image(sha256=f"{k:064x}", source_sha256=f"{k:064x}", **signed_chunks(h), width=8, height=8,
                      store_path=f"store/{k}.png", original_path=f"{k}.png", split="train")
                for k, h in enumerate(stored)]
        s.add_all(rows)
        s.flush()
        rows[70].group_id = rows[3].id  # a grouped image reports its group, an ungrouped one itself
        s.commit()
        ids = [r.id for r in rows]
        group = {r.id: r.group_id or r.id for r in rows}
        # Queries: stored hashes, hashes 0-12 bits from them (the radius is 8), unrelated ones: more than
        # one query's worth on either backend.
        queries = stored[:30] + [_flip(rng.choice(stored), rng.randint(0, 12), rng) for _ in range(600)]
        queries += [rng.getrandbits(64) for _ in range(30)]
        expected = [sorted((hamming(q, h), i, group[i]) for h, i in zip(stored, ids, strict=True)
                           if hamming(q, h) <= RADIUS) for q in queries]
        got = find_near_many(s, queries, RADIUS)
        assert got == expected
        assert sum(map(bool, got)) > 400 and any(len(g) > 1 for g in got)  # the check is not vacuous
        assert [find_near(s, q, RADIUS) for q in queries[:40]] == expected[:40]
        assert find_near_many(s, queries[:5], -1) == [[]] * 5 and find_near_many(s, [], RADIUS) == []
