"""Run by torchrun in tests/training/test_distributed.py: one `fit`, then the names of this rank's threads
still running, one line as JSON."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from training.config import FitConfig
from training.pipeline import fit

if __name__ == "__main__":
    rows, models = Path(sys.argv[1]), Path(sys.argv[2])
    fit(FitConfig(data=rows, name="threads", models_dir=models, epochs=1, progress=False))
    tasks = Path("/proc/self/task")
    names = [(tasks / task / "comm").read_text().strip() for task in os.listdir(tasks)]
    print(json.dumps({"rank": os.environ["RANK"], "threads": names}), flush=True)
