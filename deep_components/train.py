"""``python -m deep_components.train --setting NAME --method M ...``: train a cascade of any
registered setting (``--help`` lists the flags; the library is deep_components.training)."""
import sys

if __name__ == "__main__":
    from .cli import main

    sys.exit(main(None, "train"))
