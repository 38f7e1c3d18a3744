"""Build the demo base model, register it as `demo` and point its `production` alias at it.

    python scripts/build_demo_model.py [--tiny] [--output DIR] [--seed N] [--data-dir DIR]
                                       [--no-register]

The full build takes about 2-3 minutes on 2 CPU cores; `--tiny` takes seconds (for tests).
The registry is the one `LLMOPS_HOME` / `LLMOPS_DATABASE_URL` select.
"""

import argparse
import dataclasses
import json
from pathlib import Path

from core.logs import configure_logging
from finetune.demo.build import build_demo_model, register_demo_model
from finetune.demo.spec import FULL, TINY
from registry.service import open_registry


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="build the tiny test model")
    parser.add_argument(
        "--output", type=Path, default=Path("results/demo-model"), help="new or empty folder"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, help="keep the skills JSONL splits here")
    parser.add_argument("--no-register", action="store_true", help="build only")
    args = parser.parse_args(argv)
    configure_logging()

    spec = dataclasses.replace(TINY if args.tiny else FULL, seed=args.seed)
    build = build_demo_model(args.output, spec, data_dir=args.data_dir)
    summary = {
        "output_dir": str(build.output_dir),
        "spec": spec.name,
        "seed": spec.seed,
        "seconds": round(build.seconds, 1),
        "num_parameters": build.num_parameters,
        "final_loss": build.final_loss,
        "metrics": build.metrics,
        "dataset_digests": list(build.dataset_digests),
    }
    if not args.no_register:
        version = register_demo_model(open_registry(), build)
        summary |= {"registered": version.ref, "artifact_digest": version.artifact_digest}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
