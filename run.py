"""Run a sweep of benchmark jobs: ``python run.py [-m] key=value ...`` (Hydra 1.3, conf/config.yaml).

    python run.py                                              # tiny LLaDA, arith, dual cache + threshold 0.9
    python run.py -m cache=none,prefix,dual decoding=threshold threshold=0.7,0.9
    python run.py -m +experiment=fig5_threshold_tiny           # a paper figure, on the tiny models
    python run.py -m hydra/launcher=slurm_gpu hydra.launcher.partition=gpu +experiment=table1_llada

Each job writes sweeps/<sweep_name>/<job>/results.json (see docs/results_schema.md); rerunning a
sweep skips its finished jobs. All the work is in ``dllm_bench.job.run_job``; a bad configuration
stops with a one-line error before any model loads.
"""
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig

from dllm_bench.config import ConfigError, check_override_keys  # importing registers the schemas
from dllm_bench.job import ResultsWriteError, run_job

ROOT = Path(__file__).resolve().parent


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg) -> None:
    try:
        run_job(cfg, job_dir=HydraConfig.get().runtime.output_dir, root=ROOT)
    except (ConfigError, ResultsWriteError) as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    try:
        check_override_keys(sys.argv[1:], ROOT / "conf")
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
    main()
