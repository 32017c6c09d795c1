"""Run a sweep of benchmark jobs: ``python run.py [-m] [--dry-run] key=value ...`` (Hydra 1.3, conf/config.yaml).

    python run.py                                              # tiny LLaDA, arith, dual cache + threshold 0.9
    python run.py -m cache=none,prefix,dual decoding=threshold threshold=0.7,0.9
    python run.py -m +experiment=fig5_threshold_tiny --dry-run # list a sweep's cells, run none
    python run.py -m hydra/launcher=slurm_gpu hydra.launcher.partition=gpu +experiment=table1_llada

Each job writes sweeps/<sweep_name>/<job>/results.json (see docs/results_schema.md); rerunning a
sweep skips its finished jobs. All the work is in ``dllm_bench.job.run_job``; ``dllm_bench.sweep``
checks every cell of a multirun before the first job runs and ends with a summary table. A bad
configuration stops with a one-line error before any model loads; a launch in which a job failed
exits with status 1, Ctrl-C with 130 (one line; the job's folder holds no partial result).
"""
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig

from dllm_bench.config import ConfigError, check_override_keys  # importing registers the schemas
from dllm_bench.job import ResultsWriteError, run_job

ROOT = Path(__file__).resolve().parent
DRY_RUN = "--dry-run"
running: list[str] = []  # the job in progress, for the Ctrl-C line


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg) -> dict | None:
    job_dir = HydraConfig.get().runtime.output_dir
    running[:] = [job_dir]
    try:
        res = run_job(cfg, job_dir=job_dir, root=ROOT)
    except (ConfigError, ResultsWriteError) as e:
        raise SystemExit(f"error: {e}") from None
    running.clear()
    return res


if __name__ == "__main__":
    if DRY_RUN in sys.argv[1:]:
        sys.argv = [a for a in sys.argv if a != DRY_RUN] + ["hydra.callbacks.sweep.dry_run=true"]
    try:
        check_override_keys(sys.argv[1:], ROOT / "conf")
        main()
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
    except KeyboardInterrupt:
        where = f" during {os.path.relpath(running[0])}" if running else ""
        print(f"interrupted (Ctrl-C){where}: no partial result was left and its claim is released; "
              f"run the same command again to finish", file=sys.stderr)
        raise SystemExit(130) from None
