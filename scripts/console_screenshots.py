"""The README's console screenshots (docs/images/console-*.png): runs the console's browser
walk-through (tests/serving/console/test_console_browser.py, Debian's chromium), which saves a
picture of each page it passes in its temporary folder, and copies those pictures to `--out`.

    .venv/bin/python scripts/console_screenshots.py [--out docs/images]
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WALK_THROUGH = "tests/serving/console/test_console_browser.py::test_the_ops_path"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT / "docs" / "images",
        help="folder the console-*.png pictures are written to (default: docs/images)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        command = [sys.executable, "-m", "pytest", WALK_THROUGH, "-q", "-rs"]
        command += ["-p", "no:cacheprovider", "--basetemp", temp]
        if subprocess.run(command, cwd=ROOT).returncode != 0:
            sys.exit("the walk-through failed; no picture was changed")
        # pytest also links its latest folder by another name: each picture once.
        shots = sorted({shot.resolve() for shot in Path(temp).glob("*/screenshots/console-*.png")})
        if not shots:
            sys.exit("the walk-through saved no pictures (skipped? see the reason above)")
        args.out.mkdir(parents=True, exist_ok=True)
        for shot in shots:
            shutil.copyfile(shot, args.out / shot.name)
            print(args.out / shot.name)


if __name__ == "__main__":
    main()
