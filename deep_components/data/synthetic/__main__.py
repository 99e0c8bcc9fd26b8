"""``python -m deep_components.data.synthetic --out DIR --preset NAME``: write a synthetic
dataset in the RecFlow layout."""
from __future__ import annotations

import sys

from ...parsing import OneLineParser
from .generate import describe, generate
from .params import PRESETS, preset_params


def main(argv: list[str] | None = None) -> int:
    ap = OneLineParser(prog="python -m deep_components.data.synthetic",
                                 description="Write a synthetic dataset in the RecFlow layout.")
    ap.add_argument("--out", required=True, help="output folder (created)")
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--requests-per-day", dest="requests_per_day", type=int)
    ap.add_argument("--days", type=int)
    ap.add_argument("--users", type=int)
    ap.add_argument("--videos", type=int)
    ap.add_argument("--authors", type=int)
    ap.add_argument("--pool-size", dest="pool_size", type=int)
    ap.add_argument("--start-date", dest="start_date")
    ap.add_argument("--short-frac", dest="short_frac", type=float,
                    help="share of requests with one stage array cut short (padding)")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    overrides = {k: getattr(a, k) for k in ("requests_per_day", "days", "users", "videos",
                                            "authors", "pool_size", "start_date", "short_frac")}
    try:
        params = preset_params(a.preset, **overrides)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = generate(a.out, params, a.seed, preset=a.preset, verbose=not a.quiet)
    print(describe(summary, a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
