"""Config groups and schemas: every option of every group composes, validates and instantiates on
the tiny fixture; bad keys, options and values fail at once with messages naming them."""
from __future__ import annotations

import pytest
import yaml
from hydra.errors import HydraException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import CONF, compose, needs_fixtures
from dllm_bench.config import RUN_ONLY_KEYS, ConfigError, check_override_keys, job_dirname, validate
from dllm_bench.job import resolve_model_path
from dllm_bench.results import config_hash
from fixture_paths import ROOT, SHARED

GROUPS = ("model", "cache", "decoding", "task", "logger")


def options(group: str) -> list[str]:
    """A group's options; files starting with "_" are shared bases the options inherit, not options."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml") if not p.stem.startswith("_"))


def test_groups_have_the_issue_options():
    assert {"none", "prefix", "dual"} <= set(options("cache"))
    assert {"fixed", "threshold", "factor"} <= set(options("decoding"))
    assert {"wandb", "none"} <= set(options("logger"))
    assert {"arith", "gsm8k", "humaneval", "mbpp", "minerva_math"} <= set(options("task"))
    assert {"llada_8b_instruct", "llada_8b_base", "llada_1_5", "dream_7b_base", "dream_7b_instruct",
            "llada_tiny_arith", "dream_tiny_arith", "fixture_llada_tiny", "fixture_dream_tiny"} <= set(options("model"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes_and_validates(group, option):
    partner = {("cache", "dkv_greedy"): ["decoding=random_order"]}  # runs with this rule only (see below)
    cfg = compose([f"{group}={option}", *partner.get((group, option), [])])
    assert cfg[group].name if group != "logger" else cfg.logger._target_
    validate(cfg)
    if group == "logger":
        assert callable(instantiate(cfg.logger).log_job)


@needs_fixtures
@pytest.mark.parametrize("option", options("model"))
def test_every_model_resolves(option):
    """Local folders resolve against the project root; hub ids pass through; fixtures load."""
    cfg = compose([f"model={option}"])
    path = cfg.model.path
    if "/" in path and not path.startswith((".", "/")) and path.count("/") == 1:
        assert resolve_model_path(path, ROOT) == path  # a hub id
        return
    local = ROOT / path
    assert (local / "config.json").exists(), f"model={option}: {local} is missing"
    from dllm_bench import load_model, load_tokenizer

    model = load_model(resolve_model_path(path, ROOT))
    tok = instantiate(cfg.model.tokenizer) if cfg.model.tokenizer else load_tokenizer(local)
    assert model.config.arch == cfg.model.family
    assert tok("a=1")["input_ids"]


@pytest.mark.parametrize("option", options("task"))
def test_every_task_instantiates(option):
    cfg = compose([f"task={option}"])
    from dllm_bench.tasks import TASKS

    assert cfg.task.name in TASKS
    if cfg.task.name != "arith":
        data = SHARED / "data" / cfg.task.name
        if not data.is_dir():
            pytest.skip(f"no offline data for {cfg.task.name}")
        cfg = compose([f"task={option}", f"task.data_dir={data}", "task.allow_code_execution=true"])
    task = instantiate(cfg.task)
    assert task.name == cfg.task.name
    assert len(task.samples(2)) == 2


def test_threshold_alias_and_hash():
    assert compose(["decoding=threshold", "threshold=0.7"]).decoding.threshold == 0.7
    assert compose(["decoding=threshold", "decoding.threshold=0.6"]).decoding.threshold == 0.6
    assert compose(["decoding=factor", "factor=2.0"]).decoding.factor == 2.0
    hashes = {config_hash(OmegaConf.to_container(compose(["decoding=fixed", f"threshold={t}"]), resolve=True),
                          RUN_ONLY_KEYS) for t in (0.7, 0.9)}
    assert len(hashes) == 1  # the alias is unused by fixed decoding: same job
    h7, h9 = (config_hash(OmegaConf.to_container(compose(["decoding=threshold", f"threshold={t}"]), resolve=True),
                          RUN_ONLY_KEYS) for t in (0.7, 0.9))
    assert h7 != h9


def test_unknown_group_option_lists_valid_ones():
    with pytest.raises(HydraException, match=r"(?s)cache/dul.*Available options.*dual.*none.*prefix"):
        compose(["cache=dul"])


def test_unknown_key_lists_valid_ones():
    with pytest.raises(ConfigError, match=r"'gen_lenght'.*valid: .*gen_length.*did you mean gen_length"):
        check_override_keys(["-m", "gen_lenght=3"])
    with pytest.raises(ConfigError, match=r"'treshold' in decoding threshold .*valid: .*threshold.*did you mean threshold"):
        check_override_keys(["decoding.treshold=0.5"], CONF)
    with pytest.raises(ConfigError, match=r"'gama' in decoding fixed/threshold .*valid: alg, name, remasking"):
        check_override_keys(["-m", "decoding=fixed,threshold", "decoding.gama=0.5"], CONF)
    check_override_keys(["-m", "cache=none,dual", "decoding.threshold=0.5", "+experiment=x", "hydra/launcher=y",
                         "task.n_steps=3", "measure.kv_similarity=true"])
    with pytest.raises(HydraException, match="gen_lenght"):  # the schema itself refuses it too
        compose(["gen_lenght=3"])
    with pytest.raises(HydraException, match="threshold"):
        compose(["threshold=abc"])


def test_unknown_root_key_added_with_plus_is_refused():
    with pytest.raises(ConfigError, match=r"'cahce' added with '\+' in '\+cahce=none'.*did you mean cache\?"):
        check_override_keys(["+cahce=none"], CONF)
    with pytest.raises(ConfigError, match=r"'gen_lenth' added with '\+' in '\+\+gen_lenth=3'.*did you mean gen_length\?"):
        check_override_keys(["-m", "++gen_lenth=3"], CONF)
    with pytest.raises(ConfigError, match=r"'train'"):  # the trainer's config is not a group of run.py
        check_override_keys(["+train=config"], CONF)
    # a group outside the defaults, a root key forced with ++, new keys of untyped nodes, Hydra's own
    check_override_keys(["+experiment=fig5_threshold_tiny", "++seed=3", "+task.fail_flag=x", "+decoding.gama=1",
                         "+hydra.job.env_set.A=1", "+logger.tags=[a]"], CONF)


@pytest.mark.parametrize("overrides,message", [
    (["block_length=20"], "block_length=20 must be > 0 and divide gen_length=32"),
    (["decoding=threshold", "threshold=1.5"], r"decoding: threshold must be a finite number in \(0, 1\], got 1.5"),
    (["decoding=factor", "factor=0"], r"decoding: factor must be a finite number in \(0, inf\), got 0.0"),
    (["decoding=threshold", "+decoding.gama=1"], "decoding: unknown argument gama=1 for decoding 'threshold'"),
    (["cache.name=dul"], "cache: cache name 'dul' does not match _target_"),
    (["decoding=fixed", "steps=3"], "steps=3 must be > 0 and a multiple of the number of blocks"),
    (["batch_size=0"], "batch_size=0"),
    (["dtype=float8"], "unknown dtype 'float8'"),
    (["model.family=lada"], "unknown model.family 'lada'.*did you mean llada"),
    (["graphs=true", "decoding.temperature=0.5"], "graphs=true needs deterministic, unguided steps"),
    (["cfg_scale=-1"], "cfg_scale=-1.0 must be"),
    (["cache=dkv_greedy", "decoding=fixed"], "cache 'dkv_greedy' .* needs a rule that exposes its schedule"),
    (["cache=dllm_cache", "decoding=wino"], "cache 'dllm_cache' cannot run decoding 'wino'"),
    (["model=fixture_dream_tiny", "decoding=wino"], "decoding 'wino' is defined for llada models, not dream"),
])
def test_invalid_values_fail_with_their_name(overrides, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose(overrides))


def test_job_dirname_is_safe_and_bounded():
    assert job_dirname("") == "default"
    assert job_dirname("cache=dual,threshold=0.7") == "cache=dual,threshold=0.7"
    assert "/" not in job_dirname("model.path=a/b/c")
    long = ",".join(f"k{i}=v{i}" for i in range(60))
    assert len(job_dirname(long)) <= 120 and job_dirname(long) != job_dirname(long + ",x=1")


def test_slurm_launcher_config():
    cfg = compose(["hydra/launcher=slurm_gpu", "hydra.launcher.partition=gpu", "hydra.launcher.account=acct"],
                  hydra_cfg=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.gpus_per_node, launcher.partition, launcher.account) == (1, "gpu", "acct")
    assert launcher.timeout_min > 0


EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def test_every_paper_overlay_has_a_tiny_twin():
    paper = [e for e in EXPERIMENTS if not e.endswith("_tiny")]
    assert {"table1_llada", "table2_dream", "fig3_kv_similarity", "fig4_block_size", "fig5_threshold"} <= set(paper)
    assert all(f"{e}_tiny" in EXPERIMENTS for e in paper)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_cells_compose_and_validate(name):
    text = (CONF / "experiment" / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_") and f"python run.py -m +experiment={name}" in text
    cfg = compose([f"+experiment={name}"], hydra_cfg=True, tiny=False)
    assert cfg.sweep_name == name
    params = cfg.hydra.sweeper.params
    params = OmegaConf.to_container(params) if params else {}
    cfg.device = "cpu"
    validate(cfg)
    # each value of each axis (no overlay varies two axes that constrain each other, such as
    # gen_length and block_length), with the paper's device replaced by the CPU; group axes are
    # composed, plain values set on the composed config (composing is slow)
    for key, values in params.items():
        for v in str(values).split(","):
            if (CONF / key.lstrip("+")).is_dir():  # a group, or one added with +
                cell = compose([f"+experiment={name}", f"{key}={v}"], tiny=False)
            else:
                cell = cfg.copy()
                OmegaConf.update(cell, key, yaml.safe_load(v), merge=True)
            cell.device = "cpu"
            validate(cell)
    if name.endswith("_tiny"):
        assert cfg.model.name.endswith("tiny_arith") and cfg.task.name == "arith"


@pytest.mark.parametrize("method", options("method"))
def test_every_method_preset_composes_validates_and_names_its_plugins(method):
    """conf/method/<name>.yaml: a published method = a cache x rule pair at its authors' settings."""
    from dllm_bench.config import build_plugins

    cfg = compose([f"+method={method}"])
    validate(cfg)
    cache, rule = build_plugins(cfg)
    text = (CONF / "method" / f"{method}.yaml").read_text()
    assert text.startswith("# @package _global_") and f"/cache: {cache.name}" in text and f"/decoding: {rule.name}" in text
