"""GSM8K, MATH (minerva_math), HumanEval and MBPP as dllm-bench tasks, built from lm-eval's own tasks.

Each task builds lm-eval's ``ConfigurableTask`` from the harness's YAML at run time, so the prompt
format, few-shot selection (``fewshot_context`` with the harness's seeded sampler, docs in order as
under ``--limit``), stop sequences, answer filters and metrics are the harness's, byte for byte.
Our own code only: (1) points the task at local files when ``data_dir`` is given
(``dataset_path: json`` + ``data_files``; nothing touches the network), (2) scores HumanEval / MBPP
in ``dllm_bench.tasks.sandbox`` instead of lm-eval's ``code_eval`` (whose ``evaluate.load`` needs
the network): the program is the harness's (HumanEval: prompt + completion, MBPP: completion) then
``doc_to_target`` (the tests), as ``code_eval`` runs it.

``samples(n, seed)``: the first ``n`` test docs (minerva_math: round-robin over its seven subject
tasks) with ``seed`` as lm-eval's ``--fewshot_seed`` (its default, 1234, is ours).
"""
from __future__ import annotations

import ast
import copy
import functools
import itertools
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .base import Sample, Score
from .data import local_files
from .sandbox import MODES, check_sandbox, run_programs

HARNESS_FEWSHOT_SEED = 1234  # lm-eval's default --fewshot_seed


@dataclass(frozen=True)
class Benchmark:
    name: str
    yamls: tuple[str, ...]                   # under lm_eval/tasks/
    hub: str                                 # where the rows come from online
    files: Callable[[dict], dict[str, tuple[str, ...]]]  # yaml config -> split -> candidate files
    keys: tuple[str, ...]                    # fields every row needs
    code: bool = False
    prediction: Callable[[dict, str], str] | None = None  # code tasks: (doc, output) -> program body
    reference_prediction: Callable[[dict, str], str] | None = None  # the same under protocol=reference
    metric: str = "exact_match"
    primary_filter: str = "none"


def _reference_humaneval(doc: dict, output: str) -> str:
    from .sanitize import reference_program
    return reference_program(doc, output)


_MATH_SUBJECTS = ("algebra", "counting_and_prob", "geometry", "intermediate_algebra", "num_theory",
                  "prealgebra", "precalc")

BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("gsm8k", ("gsm8k/gsm8k.yaml",), "openai/gsm8k (config main)",
              lambda cfg: {"train": ("train.jsonl",), "test": ("test.jsonl",)},
              ("question", "answer"), primary_filter="flexible-extract"),
    Benchmark("minerva_math", tuple(f"minerva_math/minerva_math_{s}.yaml" for s in _MATH_SUBJECTS),
              "EleutherAI/hendrycks_math", lambda cfg: {"test": (f"{cfg['dataset_name']}/test.jsonl",)},
              ("problem", "solution")),
    Benchmark("humaneval", ("humaneval/humaneval.yaml",), "openai/openai_humaneval",
              lambda cfg: {"test": ("HumanEval.jsonl.gz", "HumanEval.jsonl")},
              ("task_id", "prompt", "canonical_solution", "test", "entry_point"), code=True,
              prediction=lambda doc, out: doc["prompt"] + out, reference_prediction=_reference_humaneval),
    Benchmark("mbpp", ("mbpp/mbpp.yaml",), "google-research-datasets/mbpp (config full)",
              lambda cfg: {"test": ("test.jsonl",)}, ("task_id", "text", "code", "test_list"), code=True,
              prediction=lambda doc, out: out),
)}


def _tasks_dir() -> Path:
    import lm_eval.tasks
    return Path(lm_eval.tasks.__file__).parent


def _literal_return(py_file: Path, fn: str) -> Any:
    """The literal value returned by ``fn`` in ``py_file``, read without importing the module
    (lm-eval's code-task utils call ``evaluate.load("code_eval")``, i.e. the network, on import)."""
    for node in ast.walk(ast.parse(py_file.read_text())):
        if isinstance(node, ast.FunctionDef) and node.name == fn:
            ret = next(n for n in ast.walk(node) if isinstance(n, ast.Return))
            return ast.literal_eval(ret.value)
    raise LookupError(f"{fn} not found in {py_file}")


def _harness_config(bench: Benchmark, yaml_rel: str) -> dict:
    from lm_eval.tasks._yaml_loader import load_yaml

    path = _tasks_dir() / yaml_rel
    if not bench.code:
        try:
            return load_yaml(path, resolve_func=True)
        except (ImportError, AssertionError) as e:
            raise ImportError(f"{bench.name} needs lm-eval's math extras (pip install 'lm-eval[math]': sympy, "
                              f"math_verify, antlr4-python3-runtime==4.11, which hydra-core 1.3's antlr4 4.9 pin "
                              f"conflicts with): {type(e).__name__}: {str(e).splitlines()[0][:120]}") from None
    cfg = load_yaml(path, resolve_func=False)  # function references stay strings: replaced below
    cfg["metric_list"] = [{"metric": "bypass", "aggregation": "bypass", "higher_is_better": True}]  # scored by our sandbox, not code_eval
    cfg.pop("filter_list", None)
    fs = cfg.get("fewshot_config") or {}
    if isinstance(fs.get("samples"), str):  # "<dir>/utils.list_fewshot_samples"
        module, fn = fs["samples"].rsplit(".", 1)
        cfg["fewshot_config"] = {**fs, "samples": _literal_return(Path(module + ".py"), fn)}
    return cfg


@contextmanager
def _compiled_templates_cached():
    """lm-eval compiles each Jinja template string on every use (~20 ms a GSM8K prompt); memoise
    ``env.from_string`` on its shared environment while we build prompts. Output is unchanged."""
    from lm_eval import utils

    env = utils.env
    env.from_string = functools.lru_cache(maxsize=256)(env.from_string)
    try:
        yield
    finally:
        del env.from_string  # back to the class method


class HarnessTask:
    """A benchmark from lm-eval (implements :class:`dllm_bench.tasks.base.Task`).

    data_dir: folder with the benchmark's JSON-lines files (see ``dllm_bench.tasks.TASK_FILES``);
        None loads the hub dataset (network or HF cache) and fails with the file to provide.
    num_fewshot: None keeps the harness's default (gsm8k 5, minerva_math 4, humaneval 0, mbpp 3).
    allow_code_execution: required True for humaneval / mbpp (lm-eval's --confirm_run_unsafe_code).
    timeout_s, memory_mb, workers: per-program limits and pool size for code execution.
    sandbox: how code runs (``dllm_bench.tasks.sandbox``): "strict" (bubblewrap namespaces + seccomp;
        refused with the missing piece named where it cannot be set up) or "weak" (an explicit opt-in
        to a plain limited subprocess).
    fewshot_seed: if set, the few-shot seed used whatever ``samples`` is passed.
    protocol: ``clean`` or ``reference`` (``dllm_bench.tasks.protocol``); only HumanEval scores
        differently: under ``reference`` its program is Fast-dLLM's post-processed code
        (``dllm_bench.tasks.sanitize``) instead of lm-eval's prompt + completion.
    metric / primary_filter: which harness metric under which filter is ``Score.correct``
        (default: exact_match, gsm8k ``flexible-extract``); every metric x filter is in ``Score.extra``.
    """

    def __init__(self, name: str, data_dir: str | Path | None = None, num_fewshot: int | None = None,
                 allow_code_execution: bool = False, timeout_s: float = 3.0, memory_mb: int = 1024,
                 workers: int | None = None, metric: str | None = None, primary_filter: str | None = None,
                 fewshot_seed: int | None = None, protocol: str = "clean", sandbox: str = "strict"):
        from .protocol import PROTOCOLS

        bench = BENCHMARKS[name]
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}")
        if bench.code and allow_code_execution is not True:
            raise ValueError(f"task {name!r} executes model-written code; opt in with "
                             f"allow_code_execution=True (sweep: task.allow_code_execution=true)")
        if sandbox not in MODES:
            raise ValueError(f"unknown sandbox {sandbox!r}; valid: {', '.join(MODES)}")
        if num_fewshot is not None and (type(num_fewshot) is not int or num_fewshot < 0):
            raise ValueError(f"num_fewshot must be an int >= 0, got {num_fewshot!r}")
        if not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
            raise ValueError(f"timeout_s must be > 0 seconds, got {timeout_s!r}")
        if not (type(memory_mb) is int and memory_mb >= 64):
            raise ValueError(f"memory_mb must be an int >= 64, got {memory_mb!r}")
        if fewshot_seed is not None and type(fewshot_seed) is not int:
            raise ValueError(f"fewshot_seed must be an int or None, got {fewshot_seed!r}")
        if bench.code:
            check_sandbox(sandbox)  # refuses here, before any model loads, when it cannot run
        self.name, self._bench, self.fewshot_seed, self.protocol = name, bench, fewshot_seed, protocol
        self._prediction = (bench.reference_prediction if protocol == "reference" and bench.reference_prediction
                            else bench.prediction)
        self.requires_code_execution = bench.code
        self.timeout_s, self.memory_mb, self.workers, self.sandbox = timeout_s, memory_mb, workers, sandbox
        self.metric = metric or bench.metric
        self.primary_filter = primary_filter or bench.primary_filter
        self.data_dir = None if data_dir is None else str(data_dir)
        self.lm_eval_tasks = [self._build(y, num_fewshot) for y in bench.yamls]
        first = self.lm_eval_tasks[0]
        self.num_fewshot = int(first.config.num_fewshot or 0)
        self.generation_kwargs = dict(first.config.generation_kwargs or {})
        self.stop_sequences = list(self.generation_kwargs.get("until", []))
        self._check_fewshot()
        filters = [f.name for f in first._filters]
        if self.primary_filter not in filters:
            raise ValueError(f"unknown primary_filter {self.primary_filter!r} for {name}; valid: {', '.join(filters)}")

    def _build(self, yaml_rel: str, num_fewshot: int | None):
        from lm_eval.api.task import ConfigurableTask

        if self.data_dir is None:
            self._check_hub(yaml_rel)  # before the YAML's code: say which file to provide first
        cfg = _harness_config(self._bench, yaml_rel)
        if num_fewshot is not None:
            cfg["num_fewshot"] = num_fewshot
        if self.data_dir is not None:
            files = local_files(self.data_dir, self._bench.files(cfg), self._bench.keys)
            cfg.update(dataset_path="json", dataset_name=None,
                       dataset_kwargs={**(cfg.get("dataset_kwargs") or {}), "data_files": files})
            if cfg.get("training_split") not in files:
                cfg["training_split"] = None
        cfg.setdefault("metadata", {})
        return ConfigurableTask(config=cfg)

    def _check_hub(self, yaml_rel: str) -> None:
        """Load the hub dataset (network or HF cache) or fail naming the local file to provide."""
        import datasets
        from lm_eval.tasks._yaml_loader import load_yaml

        raw = load_yaml(_tasks_dir() / yaml_rel, resolve_func=False)
        try:
            datasets.load_dataset(raw["dataset_path"], raw.get("dataset_name"))
        except Exception as e:  # noqa: BLE001 - datasets raises many kinds when offline
            wanted = ", ".join(fs[0] for fs in self._bench.files(raw).values())
            msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise RuntimeError(f"could not load {self.name} from the hub ({self._bench.hub}): "
                               f"{type(e).__name__}: {msg}; offline, pass data_dir=<folder> holding {wanted}") from None

    def _check_fewshot(self) -> None:
        if self.num_fewshot == 0:
            return
        for t in self.lm_eval_tasks:
            try:
                pool = len(t.fewshot_docs() or [])
            except Exception:  # noqa: BLE001 - no few-shot split at all
                pool = 0
            if self.num_fewshot > pool:
                raise ValueError(f"num_fewshot={self.num_fewshot} exceeds the {pool} few-shot examples "
                                 f"of {t.config.task}")

    # --------------------------------------------------------------------- Task protocol
    def samples(self, n: int | None = None, seed: int = HARNESS_FEWSHOT_SEED) -> list[Sample]:
        """The first ``n`` test docs (all when None) with their few-shot prompts; ``seed`` is
        lm-eval's few-shot seed, so the prompts equal ``lm_eval --limit n --fewshot_seed seed``'s.
        A ``fewshot_seed`` given at construction takes precedence (sweeps pin lm-eval's 1234 there
        so that the run's ``seed`` does not change the few-shot examples)."""
        if self.fewshot_seed is not None:
            seed = self.fewshot_seed
        if n is not None and (not isinstance(n, int) or n <= 0):
            raise ValueError(f"n must be a positive int or None, got {n!r}")
        sizes = [len(t.eval_docs) for t in self.lm_eval_tasks]
        order = [(j, i) for row in itertools.zip_longest(*(range(s) for s in sizes))
                 for j, i in enumerate(row) if i is not None]
        order = order[:n] if n is not None else order
        counts = [sum(1 for j, _ in order if j == k) for k in range(len(sizes))]
        built: dict[tuple[int, int], Sample] = {}
        with _compiled_templates_cached():
            self._build_samples(seed, counts, built)
        return [built[k] for k in order]

    def _build_samples(self, seed: int, counts: list[int], built: dict) -> None:
        for j, t in enumerate(self.lm_eval_tasks):
            t.set_fewshot_seed(seed)
            docs = t.eval_docs
            for i in range(counts[j]):  # in order: the sampler's RNG is shared across docs
                doc = docs[i]
                prompt = t.fewshot_context(doc, self.num_fewshot, gen_prefix=t.doc_to_prefix(doc))
                built[j, i] = Sample(id=f"{t.config.task}/{i}", prompt=prompt, target=t.doc_to_target(doc),
                                     meta={"task": t.config.task, "doc_id": i, "doc": dict(doc)})

    def _task_for(self, sample: Sample):
        return next(t for t in self.lm_eval_tasks if t.config.task == sample.meta["task"])

    def score(self, sample: Sample, output: str) -> Score:
        """Score one output (cut at EOS / stop sequences); code tasks run it in the sandbox."""
        return self.score_batch([sample], [output])[0]

    def score_batch(self, samples: list[Sample], outputs: list[str]) -> list[Score]:
        """``score`` over many outputs; code tasks run their programs in parallel."""
        if len(samples) != len(outputs):
            raise ValueError(f"{len(samples)} samples but {len(outputs)} outputs")
        if self._bench.code:
            return self._score_code(samples, outputs)
        return [self._score_text(s, o) for s, o in zip(samples, outputs)]

    def _score_text(self, sample: Sample, output: str) -> Score:
        from lm_eval.api.instance import Instance

        t, doc = self._task_for(sample), sample.meta["doc"]
        inst = Instance("generate_until", doc, (sample.prompt, self.generation_kwargs), 0,
                        (t.config.task, sample.meta["doc_id"], 1))
        inst.resps = [output]
        extra: dict[str, Any] = {}
        for ensemble in t._filters:
            ensemble.apply([inst])
            got = inst.filtered_resps[ensemble.name]
            extra[f"extracted,{ensemble.name}"] = got
            for metric, value in t.process_results(copy.deepcopy(doc), [got]).items():
                extra[f"{metric},{ensemble.name}"] = value.item() if hasattr(value, "item") else value
        key = f"{self.metric},{self.primary_filter}"
        if key not in extra:
            raise ValueError(f"metric {self.metric!r} not produced by {t.config.task}; "
                             f"valid: {', '.join(sorted({k.split(',')[0] for k in extra} - {'extracted'}))}")
        return Score(extracted=extra[f"extracted,{self.primary_filter}"], correct=bool(extra[key]), extra=extra)

    def program(self, sample: Sample, output: str) -> str:
        """The program a code task runs for this output: the prediction, then the doc's tests."""
        return self._program(sample, self._prediction(sample.meta["doc"], output))

    def _program(self, sample: Sample, prediction: str) -> str:
        return prediction + "\n" + self._task_for(sample).doc_to_target(sample.meta["doc"])

    def _score_code(self, samples: list[Sample], outputs: list[str]) -> list[Score]:
        predictions = [self._prediction(s.meta["doc"], o) for s, o in zip(samples, outputs)]
        programs = [self._program(s, p) for s, p in zip(samples, predictions)]
        results = run_programs(programs, self.timeout_s, self.memory_mb, self.workers, self.sandbox)
        return [Score(extracted=p, correct=r.passed,
                      extra={"pass@1": float(r.passed), "status": r.status, "detail": r.detail,
                             "exec_seconds": r.seconds})
                for p, r in zip(predictions, results)]
