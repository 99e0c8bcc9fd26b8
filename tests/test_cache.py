"""The day cache (deep_components.data.cache): content digests."""
from __future__ import annotations

import json


def test_day_digest_is_content_and_entries_without_one_get_it(tiny_root, tiny_copy, tmp_path):
    from deep_components.specs import TWO_STAGE
    from deep_components.data import load_day
    from deep_components.data.cache import content_digest

    a = load_day(tiny_root, "2024-01-14", TWO_STAGE, cache_dir=tmp_path / "c1")
    b = load_day(tiny_copy, "2024-01-14", TWO_STAGE, cache_dir=tmp_path / "c2")  # other path, mtime
    c = load_day(tiny_root, "2024-01-15", TWO_STAGE, cache_dir=tmp_path / "c1")
    assert a.stats["content_digest"] == b.stats["content_digest"] == content_digest(a)
    assert c.stats["content_digest"] != a.stats["content_digest"]
    meta = next((tmp_path / "c1" / "two_stage" / "2024-01-14").glob("*/meta.json"))
    m = json.loads(meta.read_text())
    del m["stats"]["content_digest"]                     # an entry of before the digests
    meta.write_text(json.dumps(m))
    again = load_day(tiny_root, "2024-01-14", TWO_STAGE, cache_dir=tmp_path / "c1")
    assert again.stats["content_digest"] == a.stats["content_digest"]
    assert json.loads(meta.read_text())["stats"]["content_digest"] == a.stats["content_digest"]
