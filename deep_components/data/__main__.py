"""Convert RecFlow-layout days into the cache and print a summary, or check them first.

    python -m deep_components.data --root data/synthetic/small [--setting two_stage] [--days D ...]
    python -m deep_components.data --root /path/to/RecFlow --check [--days D ...]

``--check`` converts nothing: it lists every missing, empty or unreadable file the run's days
need, ``others/id_cnt.pkl``'s state and the split's coverage (deep_components.data.check), and
exits 2 when there is a problem.

Bad input ends in one ``error: ...`` line naming the file, and exit status 2.
"""
from __future__ import annotations

import argparse
import sys
import time

from ..parsing import OneLineParser
from . import layout
from .errors import DataError


def main(argv: list[str] | None = None) -> int:
    ap = OneLineParser(prog="python -m deep_components.data", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, help="RecFlow-layout folder")
    ap.add_argument("--setting", default="two_stage",
                    help="a registered setting (two_stage, three_stage, ...; default two_stage)")
    ap.add_argument("--days", nargs="*", help="dates to convert (default: all)")
    ap.add_argument("--tz", default=layout.DEFAULT_TZ, help="time zone of the calendar features")
    ap.add_argument("--cache_dir", default=None, help="cache folder (default <root>/.lcron_cache)")
    ap.add_argument("--check", action="store_true",
                    help="check the folder without converting: every file the days need (default: "
                         "the paper's split when the folder holds a day of it, else every day), "
                         "others/id_cnt.pkl; exit 2 with the list of problems")
    a = ap.parse_args(argv)
    if a.check:
        from .check import check_folder

        try:
            report = check_folder(a.root, a.days)
        except DataError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print("\n".join(report.lines()), file=sys.stdout if report.ok else sys.stderr)
        return 0 if report.ok else 2
    from ..specs import get_spec
    from .cache import load_day
    from .timefeat import check_tz

    try:
        spec = get_spec(a.setting)
        check_tz(a.tz)
        days = a.days or layout.list_days(a.root)
        if not days:
            raise DataError(f"{a.root}/{layout.ALL_STAGE}: no days found")
        info = layout.synthetic_info(a.root)
        if info:
            print(f"SYNTHETIC data (preset {info.get('preset')}, seed {info.get('seed')})")
        total = 0
        for date in days:
            t0 = time.perf_counter()
            day = load_day(a.root, date, spec, a.tz, cache_dir=a.cache_dir)
            total += day.num_requests
            s = day.stats
            print(f"{date}  {day.num_requests:>8,} requests  {time.perf_counter() - t0:6.2f}s  "
                  f"padded slots {s.get('padded_slots', 0):,}  missing positives "
                  f"{s.get('missing_positive', 0):,}  empty histories {s.get('empty_history', 0):,}")
        train, test = layout.default_split(days) if len(days) >= 2 else (days, None)
        print(f"{len(days)} days, {total:,} requests ({spec.name}, N = {spec.num_slots}); "
              f"default split: train {train[0]} ... {train[-1]}, test {test}")
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
