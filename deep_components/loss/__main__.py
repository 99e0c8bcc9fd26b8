"""``python -m deep_components.loss``: the registered methods, one per line, in table order
(``--table`` adds display name, paper rank and default tau).  The launchers read it."""
import sys

from . import METHODS, method_order

if __name__ == "__main__":
    for name in method_order():
        m = METHODS[name]
        if "--table" in sys.argv[1:]:
            print(f"{name}\t{m.display}\t{m.paper_rank or '-'}\t{m.default_tau or '-'}")
        else:
            print(name)
