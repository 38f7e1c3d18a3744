"""Where every benchmark writes its result, and what the result says about its run: the
commit (and whether the work tree had changes), the machine and the command. Imported by the
`bench_*.py` scripts next to it; the docs quote only figures found in these files."""

import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def default_output(script: str) -> Path:
    """`benchmarks/results/<bench_name>.json` for the script at path `script`."""
    return RESULTS / f"{Path(script).stem}.json"


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """The hardware and software a figure was measured on."""
    pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    described = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(pages * page_size / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        described["torch"] = torch.__version__
        described["torch_threads"] = torch.get_num_threads()
        described["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return described


def write_result(output: Path, result: dict) -> None:
    """`result` with the run's commit, machine, command and time, as JSON at `output`."""
    record = {
        "commit": _git("rev-parse", "HEAD") or None,
        "work_tree_changed": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "machine": machine(),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **result,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(record, indent=2) + "\n")
