"""The task registry and bad input: one-line errors naming the bad value, before expensive work."""
import gzip
import json
import sys
from pathlib import Path

import pytest

from dllm_bench.tasks import TASKS, get_task

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_gsm8k = pytest.mark.skipif(not (DATA / "gsm8k").is_dir(), reason="offline gsm8k data not found")


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    return msg


def test_registry_names():
    assert list(TASKS) == ["arith", "gsm8k", "humaneval", "mbpp", "minerva_math"]


def test_unknown_task_lists_valid_names():
    with pytest.raises(ValueError) as e:
        get_task("gsmk8")
    assert one_line(e).startswith("unknown task 'gsmk8'; valid: arith, gsm8k, humaneval, mbpp, minerva_math")
    assert "did you mean 'gsm8k'" in str(e.value)


def test_registry_import_is_lazy():
    # importing the registry must not import lm-eval or the task modules
    import subprocess
    code = "import sys, dllm_bench.tasks; print('lm_eval' in sys.modules, 'dllm_bench.tasks.harness_tasks' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_unknown_task_argument_is_named():
    with pytest.raises(ValueError) as e:
        get_task("gsm8k", data_dri="/x")
    assert one_line(e).startswith("unknown argument 'data_dri' for task 'gsm8k'; valid: data_dir, num_fewshot")


def test_arith_is_built_by_name():
    pytest.importorskip("dllm_bench.tasks.arithmetic")
    task = get_task("arith", n_steps=3)
    assert task.name == "arith" and len(task.samples(2)) == 2


@pytest.mark.parametrize("name", ["humaneval", "mbpp"])
def test_code_task_without_opt_in(name, tmp_path):
    with pytest.raises(ValueError) as e:  # raised before any data is looked at
        get_task(name, data_dir=tmp_path / "does-not-exist")
    msg = one_line(e)
    assert name in msg and "allow_code_execution=True" in msg


@pytest.mark.parametrize("name,wanted", [("mbpp", "test.jsonl"), ("minerva_math", "algebra/test.jsonl"),
                                         ("gsm8k", "train.jsonl")])
def test_offline_without_data_dir_names_the_file(name, wanted, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets.config
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    with pytest.raises(RuntimeError) as e:
        get_task(name, allow_code_execution=True) if name == "mbpp" else get_task(name)
    msg = one_line(e)
    assert name in msg and "data_dir=" in msg and wanted in msg


def test_missing_data_file_names_it(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"question": "q", "answer": "a #### 1"}\n')
    with pytest.raises(FileNotFoundError) as e:
        get_task("gsm8k", data_dir=tmp_path)
    assert str(tmp_path / "test.jsonl") in one_line(e)


def test_missing_data_dir(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        get_task("gsm8k", data_dir=tmp_path / "nope")
    assert "nope" in one_line(e)


def test_malformed_line_gives_line_number(tmp_path):
    good = json.dumps({"question": "q", "answer": "a #### 1"})
    (tmp_path / "train.jsonl").write_text(f"{good}\n{good}\n")
    (tmp_path / "test.jsonl").write_text(f"{good}\n{good}\n{{not json\n")
    with pytest.raises(ValueError) as e:
        get_task("gsm8k", data_dir=tmp_path)
    assert f"{tmp_path / 'test.jsonl'}:3: malformed JSON" in one_line(e)


def test_row_missing_field_gives_line_number(tmp_path):
    rows = [{"task_id": "t/0", "prompt": "def f():\n", "canonical_solution": "  return 1\n",
             "test": "def check(c):\n  assert c() == 1\n", "entry_point": "f"},
            {"task_id": "t/1", "prompt": "x"}]
    with gzip.open(tmp_path / "HumanEval.jsonl.gz", "wt") as fh:
        fh.write("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(ValueError) as e:
        get_task("humaneval", data_dir=tmp_path, allow_code_execution=True)
    msg = one_line(e)
    assert "HumanEval.jsonl.gz:2: missing field(s)" in msg and "'entry_point'" in msg


@needs_gsm8k
def test_fewshot_larger_than_fewshot_split(tmp_path):
    with pytest.raises(ValueError) as e:
        get_task("gsm8k", data_dir=DATA / "gsm8k", num_fewshot=8000)
    assert one_line(e) == "num_fewshot=8000 exceeds the 7473 few-shot examples of gsm8k"


def test_fewshot_on_zero_shot_code_task(tmp_path):
    rows = [{"task_id": "t/0", "prompt": "def f():\n", "canonical_solution": "  return 1\n",
             "test": "def check(c):\n  assert c() == 1\n", "entry_point": "f"}]
    (tmp_path / "HumanEval.jsonl").write_text(json.dumps(rows[0]) + "\n")
    with pytest.raises(ValueError) as e:
        get_task("humaneval", data_dir=tmp_path, allow_code_execution=True, num_fewshot=2)
    # lm-eval draws humaneval shots from its only split (here 1 doc)
    assert one_line(e) == "num_fewshot=2 exceeds the 1 few-shot examples of humaneval"


@pytest.mark.parametrize("key,bad", [("num_fewshot", -1), ("num_fewshot", 1.5), ("num_fewshot", "5"),
                                     ("timeout_s", 0), ("memory_mb", 8)])
def test_bad_numbers_are_named(key, bad):
    with pytest.raises(ValueError) as e:  # before any data is read
        get_task("humaneval", allow_code_execution=True, **{key: bad})
    assert key in one_line(e) and repr(bad) in str(e.value)


@needs_gsm8k
def test_bad_n_and_primary_filter():
    with pytest.raises(ValueError) as e:
        get_task("gsm8k", data_dir=DATA / "gsm8k", primary_filter="loose")
    assert "'loose'" in one_line(e) and "strict-match" in str(e.value)
    task = get_task("gsm8k", data_dir=DATA / "gsm8k")
    with pytest.raises(ValueError) as e:
        task.samples(0)
    assert "0" in one_line(e)
