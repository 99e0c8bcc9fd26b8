"""Test a three-stage cascade: `python deep_components/run_test3.py --loss_type lcron --epochs 30 ...`
(flags: `--help`)."""
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script, as the paper's launchers do
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deep_components.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("three_stage", "evaluate"))
