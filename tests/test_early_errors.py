"""Errors before compute, in one line, naming the bad value: checkpoint config.json and shard index
problems, non-finite or negative sweep numbers, and a result that cannot be written (the job's
outcome survives in the error)."""
from __future__ import annotations

import errno
import json
import shutil

import pytest

from conftest import TINY, compose, needs_fixtures, run_cli
from dllm_bench import load_model
from dllm_bench.config import ConfigError, validate
from dllm_bench.job import ResultsWriteError, run_job
from dllm_bench.models.loading import check_checkpoint
from fixture_paths import DREAM_TINY, LLADA_TINY, ROOT

pytestmark = needs_fixtures


def _ckpt(tmp_path, src=LLADA_TINY, **changes):
    """A copy of a fixture checkpoint with config.json keys changed (None: removed)."""
    d = tmp_path / "ckpt"
    shutil.copytree(src, d)
    raw = json.loads((d / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            raw.pop(k, None)
        else:
            raw[k] = v
    (d / "config.json").write_text(json.dumps(raw))
    return d


def _one_line_error(folder, exc=ValueError) -> str:
    """Both the cheap check and load_model refuse the folder with the same one-line message."""
    with pytest.raises(exc) as early:
        check_checkpoint(folder)
    with pytest.raises(exc) as late:
        load_model(folder)
    msg = str(early.value)
    assert msg == str(late.value) and "\n" not in msg
    return msg


@pytest.mark.parametrize("src,field,value", [
    (LLADA_TINY, "mask_token_id", 384),     # == vocabulary size (embedding_size 384)
    (LLADA_TINY, "eos_token_id", 99999),
    (LLADA_TINY, "pad_token_id", -1),
    (DREAM_TINY, "mask_token_id", 151666),  # Dream-7B's own id, in a 384-token vocabulary
    (DREAM_TINY, "bos_token_id", 384),
    (DREAM_TINY, "eos_token_id", "381"),
])
def test_token_ids_outside_the_vocabulary_are_named(tmp_path, src, field, value):
    msg = _one_line_error(_ckpt(tmp_path, src, **{field: value}))
    assert f"{field}={value!r}" in msg or f"{field}={value}" in msg
    assert "config.json" in msg


@pytest.mark.parametrize("src,field", [(LLADA_TINY, "n_heads"), (LLADA_TINY, "d_model"),
                                       (DREAM_TINY, "num_attention_heads"), (DREAM_TINY, "vocab_size")])
def test_missing_required_key_is_named(tmp_path, src, field):
    msg = _one_line_error(_ckpt(tmp_path, src, **{field: None}))
    assert f"lacks required key(s) '{field}'" in msg and str(tmp_path / "ckpt" / "config.json") in msg


def test_llada_needs_one_of_the_vocabulary_keys(tmp_path):
    msg = _one_line_error(_ckpt(tmp_path, embedding_size=None, vocab_size=None))
    assert "'embedding_size' or 'vocab_size'" in msg


@pytest.mark.parametrize("changes,needle", [
    ({"n_heads": 5}, "d_model=64 must be a multiple of n_heads=5"),
    ({"n_kv_heads": 3}, "n_heads=4 must be a multiple of n_kv_heads=3"),
    ({"n_layers": 0}, "n_layers=0 must be a positive integer"),
    ({"d_model": "64"}, "d_model='64' must be a positive integer"),
])
def test_shapes_that_cannot_be_built(tmp_path, changes, needle):
    assert needle in _one_line_error(_ckpt(tmp_path, **changes))


@pytest.mark.parametrize("text,needle", [("{\"model_type\": \"llada\",", "is not valid JSON"),
                                         ("[]", "holds a JSON list, not an object"),
                                         ("null", "holds a JSON NoneType")])
def test_broken_config_json_names_the_file(tmp_path, text, needle):
    d = _ckpt(tmp_path)
    (d / "config.json").write_text(text)
    msg = _one_line_error(d)
    assert str(d / "config.json") in msg and needle in msg


def _sharded(tmp_path, shard_names):
    from safetensors.torch import load_file, save_file

    d = _ckpt(tmp_path)
    tensors = load_file(str(d / "model.safetensors"))
    (d / "model.safetensors").unlink()
    save_file(tensors, str(d / "model-00001-of-00001.safetensors"))
    keys = sorted(tensors)
    wmap = {k: shard_names[i % len(shard_names)] for i, k in enumerate(keys)}
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wmap}))
    return d


@pytest.mark.parametrize("bad", ["../outside.safetensors", "/etc/passwd", "sub/../../x.safetensors", "."])
def test_shard_paths_must_stay_inside_the_folder(tmp_path, bad):
    outside = tmp_path / "outside.safetensors"
    shutil.copy(LLADA_TINY / "model.safetensors", outside)  # exists: only the confinement can refuse it
    d = _sharded(tmp_path, ["model-00001-of-00001.safetensors", bad])
    msg = _one_line_error(d)
    assert "outside its folder" in msg and bad in msg and "model.safetensors.index.json" in msg


def test_shard_index_not_json_or_without_weight_map_names_the_file(tmp_path):
    d = _sharded(tmp_path, ["model-00001-of-00001.safetensors"])
    index = d / "model.safetensors.index.json"
    index.write_text("{oops")
    assert f"{index} is not valid JSON" in _one_line_error(d)
    index.write_text('{"metadata": {}}')
    assert f"{index} has no 'weight_map' object" in _one_line_error(d)


def test_an_inside_index_still_loads(tmp_path):
    d = _sharded(tmp_path, ["model-00001-of-00001.safetensors", "./model-00001-of-00001.safetensors"])
    assert check_checkpoint(d).vocab_size == 384
    load_model(d)


def test_bad_checkpoint_stops_the_cli_before_anything_is_written(tmp_path):
    """The issue's case: a mask_token_id outside the vocabulary failed during generation with an
    IndexError that did not name the field. Now: one line, exit status 1, nothing written."""
    d = _ckpt(tmp_path, mask_token_id=126336)
    proc = run_cli([*TINY, f"model.path={d}", "sweep_name=bad", f"sweeps_dir={tmp_path / 'sw'}"], tmp_path)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "mask_token_id=126336 is outside the vocabulary [0, 384)" in last
    assert str(d / "config.json") in last
    assert not list((tmp_path / "sw").glob("**/results.json")) and not list((tmp_path / "sw").glob("**/.claims"))


@pytest.mark.parametrize("overrides,message", [
    (["decoding.temperature=nan"], "decoding: temperature must be a finite number in [0, inf), got nan"),
    (["decoding.temperature=inf"], "decoding: temperature must be a finite number in [0, inf), got inf"),
    (["decoding=threshold", "threshold=nan"], "decoding: threshold must be a finite number in (0, 1], got nan"),
    (["decoding=factor", "factor=inf"], "decoding: factor must be a finite number in (0, inf), got inf"),
    (["decoding=fixed", "steps=32", "threshold=-inf"], "threshold=-inf must be a finite number"),
    (["measure.kv_similarity_samples=-1"], "measure.kv_similarity_samples=-1 must be >= 0"),
    (["measure.kv_similarity=true", "measure.kv_similarity_samples=0"],
     "measure.kv_similarity_samples=0 must be >= 1 with measure.kv_similarity=true"),
    (["measure.kv_heatmap_prompt_tokens=-5"], "measure.kv_heatmap_prompt_tokens=-5 must be >= 0"),
])
def test_non_finite_and_negative_numbers_are_refused(tmp_path, overrides, message):
    with pytest.raises(ConfigError) as err:
        validate(compose(overrides))
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(err.value).count("must") == 1  # one message per bad value
    with pytest.raises(ConfigError, match="finite|>="):
        run_job(compose(overrides), tmp_path / "s" / "j", ROOT)
    assert not (tmp_path / "s").exists()


def _failing_writes(monkeypatch, names):
    """Writes of files named in ``names`` fail as on a full disk; the rest go through."""
    from dllm_bench import results as R

    real = R.atomic_write_text

    def write(path, text):
        if path.name in names:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, text)

    monkeypatch.setattr(R, "atomic_write_text", write)
    monkeypatch.setattr("dllm_bench.job.atomic_write_text", write)


def test_full_disk_for_samples_keeps_the_outcome_in_a_failed_result(tmp_path, monkeypatch):
    _failing_writes(monkeypatch, {"samples.jsonl"})
    job = tmp_path / "s" / "j"
    with pytest.raises(ResultsWriteError) as err:
        run_job(compose(["n_samples=1"]), job, ROOT)
    msg = str(err.value)
    assert "No space left on device" in msg and "the job finished ok" in msg and "\n" not in msg
    res = json.loads((job / "results.json").read_text())  # the small file still fitted
    assert res["status"] == "failed" and res["error"] == msg and "samples" not in res
    assert res["metrics"]["n_samples"] == 1  # what was measured is kept for the record
    monkeypatch.undo()
    assert run_job(compose(["n_samples=1"]), job, ROOT)["status"] == "ok"  # retried, not skipped


def test_full_disk_keeps_a_failed_jobs_own_error(tmp_path, monkeypatch, caplog):
    flag = tmp_path / "fail"
    flag.touch()
    _failing_writes(monkeypatch, {"samples.jsonl", "results.json"})
    job = tmp_path / "s" / "j"
    with pytest.raises(ResultsWriteError) as err:
        run_job(compose(["task._target_=conftest.FlakyTask", f"+task.fail_flag={flag}", "n_samples=1"]), job, ROOT)
    assert "had failed: RuntimeError: injected failure" in str(err.value)
    assert "No space left on device" in str(err.value)
    assert any("injected failure" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records
               if "could not write" in r.getMessage())
    assert not (job / "results.json").exists()  # nothing half-written, nothing claiming to be done


def test_unwritable_result_exits_non_zero_with_one_line(tmp_path):
    """Through run.py: results.json cannot be created (a folder is in its way, as a full disk would
    stop it), so the job's outcome is printed as the last line and the exit status is 1."""
    job = tmp_path / "sw" / "job"
    (job / "results.json").mkdir(parents=True)
    proc = run_cli([*TINY, "n_samples=1", f"hydra.run.dir={job}"], tmp_path)
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: could not write the results of") and "the job finished ok" in last
