"""results.py: atomic writes, the config hash, the sweep table, the env stamp."""
from __future__ import annotations

import copy
import csv
import json

import pytest

from dllm_bench import results as R
from dllm_bench.config import RUN_ONLY_KEYS


def test_atomic_write_keeps_old_file_when_interrupted(tmp_path, monkeypatch):
    target = R.atomic_write_text(tmp_path / "results.json", '{"status": "ok"}')

    def killed(*a, **k):
        raise KeyboardInterrupt  # the job is killed between writing the temp file and the rename

    monkeypatch.setattr(R.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        R.atomic_write_text(target, '{"status": "half')
    assert json.loads(target.read_text()) == {"status": "ok"}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temp file left behind


def test_config_hash_ignores_run_only_keys_only():
    cfg = {"cache": {"name": "dual"}, "gen_length": 48, "force": False, "logger": {"_target_": "x"},
           "num_threads": 1, "threshold": 0.9, "decoding": {"name": "fixed", "threshold": None}}
    h = R.config_hash(cfg, RUN_ONLY_KEYS)
    same = dict(cfg, force=True, logger={"_target_": "y"}, num_threads=8, threshold=0.5)
    assert R.config_hash(same, RUN_ONLY_KEYS) == h
    assert R.config_hash(dict(reversed(list(cfg.items()))), RUN_ONLY_KEYS) == h  # key order
    assert R.config_hash(dict(cfg, gen_length=64), RUN_ONLY_KEYS) != h
    assert R.config_hash(dict(cfg, cache={"name": "prefix"}), RUN_ONLY_KEYS) != h
    assert len(h) == 64 and int(h, 16) >= 0


def _set(config: dict, dotted: str, value) -> dict:
    out = copy.deepcopy(config)
    *parents, leaf = dotted.split(".")
    node = out
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return out


def test_keys_added_later_keep_old_hashes_at_their_old_value():
    old = {"cache": {"name": "dual"}, "decoding": {"name": "fixed"}, "gen_length": 48, "graphs": False,
           "task": {"name": "humaneval"}, "metrics": {"kv_similarity": False}}
    h = R.config_hash(old, RUN_ONLY_KEYS)
    for key, value in R.LATER_KEYS.items():
        assert R.config_hash(_set(old, key, value), RUN_ONLY_KEYS) == h  # folders from before stay done
        assert R.config_hash(_set(old, key, not value), RUN_ONLY_KEYS) != h
    assert R.config_hash(_set(old, "shard", "0/2"), RUN_ONLY_KEYS) != R.config_hash(_set(old, "shard", "1/2"), RUN_ONLY_KEYS)
    later = _set(old, "task.protocol", "clean")
    R.config_hash(later, RUN_ONLY_KEYS)
    assert later["task"] == {"name": "humaneval", "protocol": "clean"}  # the caller's dict is not modified


def _job(sweep, name, status, chash, acc):
    res = {"status": status, "config_hash": chash, "error": None if status == "ok" else "RuntimeError: x",
           "config": {"cache": {"name": name}, "gen_length": 48, "steps": [1, 2]},
           "metrics": {"accuracy": acc} if acc is not None else {}}
    R.write_job(sweep / name, res, [{"id": "a"}])


def test_sweep_table_and_find_done(tmp_path):
    _job(tmp_path, "a", "ok", "h1", 0.5)
    _job(tmp_path, "b", "failed", "h2", None)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "results.json").write_text("{not json")  # a torn file from elsewhere: ignored
    path = R.rebuild_sweep_table(tmp_path)
    rows = list(csv.DictReader(path.open()))
    assert [r["job_dir"] for r in rows] == ["a", "b"]
    assert list(rows[0])[:3] == ["job_dir", "status", "config_hash"]
    assert rows[0]["cache.name"] == "a" and rows[0]["metrics.accuracy"] == "0.5" and rows[1]["status"] == "failed"
    assert rows[0]["steps"] == "[1, 2]"
    assert R.find_done(tmp_path, "h1")[0] == "a"
    assert R.find_done(tmp_path, "h2") is None  # failed jobs are retried
    assert (tmp_path / "a" / "samples.jsonl").read_text() == '{"id": "a"}\n'


def test_env_stamp(tmp_path):
    env = R.env_stamp("cpu")
    assert {"device_name", "torch", "cuda", "transformers", "dllm_bench", "git_commit", "hostname",
            "python"} <= set(env)
    assert env["cuda"] is None or isinstance(env["cuda"], str)
    if env["git_commit"] is not None:  # a git checkout (the usual case, CI included)
        assert len(env["git_commit"]) == 40
    assert R._git_commit(tmp_path) is None  # not a git checkout


def test_flatten():
    assert R.flatten({"a": {"b": 1, "c": {"d": None}}, "e": [1]}) == {"a.b": 1, "a.c.d": None, "e": "[1]"}
