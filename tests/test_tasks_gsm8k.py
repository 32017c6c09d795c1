"""GSM8K through the project's task layer: reference answers score 100% (strict and flexible),
perturbed answers 0%, and the 5-shot prompts are byte-identical to lm-eval's own requests."""
import re
from pathlib import Path

import pytest

from dllm_bench.tasks import get_task

GSM8K = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gsm8k"
pytestmark = pytest.mark.skipif(not GSM8K.is_dir(), reason=f"offline data not found at {GSM8K}")


@pytest.fixture(scope="module")
def task():
    return get_task("gsm8k", data_dir=GSM8K)


@pytest.fixture(scope="module")
def test_set(task):
    return task.samples()


def test_reference_answers_score_100(task, test_set):
    assert len(test_set) == 1319
    scores = [task.score(s, s.meta["doc"]["answer"]) for s in test_set]
    assert sum(sc.extra["exact_match,strict-match"] for sc in scores) == 1319
    assert sum(sc.extra["exact_match,flexible-extract"] for sc in scores) == 1319
    assert all(sc.correct for sc in scores)
    assert scores[0].extracted == "18"


def _perturb(answer: str) -> str:
    head, final = answer.rsplit("#### ", 1)
    digits = final.strip().replace(",", "")
    changed = str(int(float(digits)) + 1) if re.fullmatch(r"-?\d+(\.\d+)?", digits) else "999999"
    return f"{head}#### {changed}"


def test_perturbed_answers_score_0(task, test_set):
    scores = [task.score(s, _perturb(s.meta["doc"]["answer"])) for s in test_set]
    assert sum(sc.extra["exact_match,strict-match"] for sc in scores) == 0
    assert sum(sc.extra["exact_match,flexible-extract"] for sc in scores) == 0


def test_stop_sequences_and_fewshot_are_the_harness_defaults(task):
    assert task.num_fewshot == 5
    assert task.stop_sequences == ["Question:", "</s>", "<|im_end|>"]


def _harness_prompts(seed: int, limit: int) -> list[str]:
    """The contexts lm-eval's own evaluator sends to a model for gsm8k on the local files."""
    import lm_eval
    import lm_eval.tasks
    from lm_eval.api.model import LM
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    class Recorder(LM):
        seen: list[str] = []

        def generate_until(self, requests, disable_tqdm=False):
            Recorder.seen += [r.args[0] for r in requests]
            return ["" for _ in requests]

        def loglikelihood(self, requests, disable_tqdm=False):
            raise NotImplementedError

        def loglikelihood_rolling(self, requests, disable_tqdm=False):
            raise NotImplementedError

    tm = TaskManager(include_defaults=False, include_path=str(Path(lm_eval.tasks.__file__).parent / "gsm8k"))
    cfg = load_yaml(tm.task_index["gsm8k"].yaml_path)
    files = {"train": str(GSM8K / "train.jsonl"), "test": str(GSM8K / "test.jsonl")}
    cfg.update(dataset_path="json", dataset_name=None, dataset_kwargs={"data_files": files})
    harness_task = tm.load(cfg)["tasks"]["gsm8k"]
    lm_eval.simple_evaluate(model=Recorder(), tasks=[harness_task], limit=limit, num_fewshot=5,
                            fewshot_random_seed=seed, task_manager=tm)
    return Recorder.seen


@pytest.mark.parametrize("seed", [1234, 7])
def test_fewshot_prompt_byte_identical_to_harness(task, seed):
    ours = [s.prompt for s in task.samples(3, seed=seed)]
    theirs = _harness_prompts(seed, 3)
    assert len(theirs) == 3
    assert [p.encode() for p in ours] == [p.encode() for p in theirs]
    assert ours[0].count("Question:") == 6 and ours[0].endswith("Answer:")


def test_seed_changes_the_fewshot_examples(task):
    assert task.samples(1, seed=1234)[0].prompt != task.samples(1, seed=7)[0].prompt
    assert task.samples(2, seed=7)[1].prompt == task.samples(2, seed=7)[1].prompt


def test_pinned_fewshot_seed_overrides_the_run_seed():
    pinned = get_task("gsm8k", data_dir=GSM8K, fewshot_seed=1234)
    free = get_task("gsm8k", data_dir=GSM8K)
    assert [s.prompt for s in pinned.samples(3, seed=0)] == [s.prompt for s in free.samples(3, seed=1234)]
    assert [s.prompt for s in free.samples(3, seed=0)] != [s.prompt for s in free.samples(3, seed=1234)]
