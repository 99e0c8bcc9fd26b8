"""``python -m deep_components.evaluate --setting NAME --method M ...``: evaluate a trained run
folder of any registered setting (``--help`` lists the flags; the library is
deep_components.evaluation)."""
import sys

if __name__ == "__main__":
    from .cli import main

    sys.exit(main(None, "evaluate"))
