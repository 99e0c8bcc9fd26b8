"""``python -m deep_components.loss`` (``lcron-methods``): the registered methods, one per line,
in table order (``--table`` adds display name, paper rank and default tau).  The launchers read
it."""
import sys

from . import METHODS, method_order


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m deep_components.loss",
                                 description="The registered methods, in table order.")
    ap.add_argument("--table", action="store_true",
                    help="also display name, paper rank and default tau")
    a = ap.parse_args(argv)
    for name in method_order():
        m = METHODS[name]
        if a.table:
            print(f"{name}\t{m.display}\t{m.paper_rank or '-'}\t{m.default_tau or '-'}")
        else:
            print(name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
