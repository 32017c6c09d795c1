"""The trainer: schema, a micro run per architecture (loss falls, the folder loads and generates),
exact resume from a partial checkpoint, refusal of an existing output folder."""
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import dllm_bench.train as T
from dllm_bench import generate, load_model, load_tokenizer

CONF = str(Path(__file__).resolve().parents[1] / "conf_train")
MICRO = ["arch.d_model=32", "arch.n_layers=2", "arch.mlp_hidden=64", "batch_size=16", "lr=1e-2",
         "warmup_steps=5", "eval_samples=0", "threads=1", "gen_lengths=[16]", "task.n_steps=2", "train_n_steps=[1,2]",
         "log_every=5"]


def compose_cfg(*overrides):
    T._register()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        d = compose(config_name="config", overrides=list(overrides))
    return OmegaConf.to_object(d), OmegaConf.to_container(d, resolve=True)


@pytest.mark.parametrize("arch", ["llada", "dream"])
def test_micro_run_learns_saves_and_generates(tmp_path, arch):
    cfg, d = compose_cfg(f"arch={arch}", f"out={tmp_path / arch}", "steps=40", *MICRO)
    _, losses = T.train(cfg, d, progress=False)
    assert len(losses) == 40
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10  # seeded: the same numbers every run
    out = tmp_path / arch
    for f in ("config.json", "model.safetensors", "tokenizer.json", "README.md", "loss.csv", "loss.png", "train_config.yaml"):
        assert (out / f).exists(), f
    assert not (out / ".partial").exists()
    model, tok = load_model(out), load_tokenizer(out)
    assert model.config.arch == arch and model.profile.shift_logits == (arch == "dream")
    assert model.config.mask_token_id == tok.mask_token_id and model.config.eos_token_id == tok.eos_token_id
    res = generate(model, [torch.tensor(tok.encode("a=1;b=a+2;c=b*3;c?"))], gen_length=16, block_length=16,
                   steps=16, cache="dual", decoding="threshold", threshold=0.9)
    assert res.tokens.shape == (1, 16) and not (res.tokens == tok.mask_token_id).any()
    assert len((out / "loss.csv").read_text().splitlines()) == 41


def test_resume_continues_the_same_run(tmp_path, monkeypatch):
    common = ["arch=dream", "steps=20", "save_every=10", *MICRO]
    cfg, d = compose_cfg(f"out={tmp_path / 'full'}", *common)
    full, _ = T.train(cfg, d, progress=False)

    cfg, d = compose_cfg(f"out={tmp_path / 'cut'}", *common)
    monkeypatch.setattr(T, "finish", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        T.train(cfg, d, progress=False)
    assert (tmp_path / "cut" / ".partial" / "state.pt").exists()
    assert torch.load(tmp_path / "cut" / ".partial" / "state.pt", weights_only=False)["step"] == 10
    monkeypatch.undo()
    resumed, losses = T.train(cfg, d, progress=False)
    assert len(losses) == 20
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name

    # a partial run with another config is not silently continued
    bad, bad_d = compose_cfg(f"out={tmp_path / 'cut2'}", *common)
    (tmp_path / "cut2" / ".partial").mkdir(parents=True)
    torch.save({"config": {**bad_d, "seed": 9}}, tmp_path / "cut2" / ".partial" / "state.pt")
    with pytest.raises(ValueError, match="different config"):
        T.train(bad, bad_d, progress=False)


def test_existing_output_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / "config.json").write_text("{}")
    cfg, d = compose_cfg(f"out={out}", "steps=2", *MICRO)
    with pytest.raises(FileExistsError, match="overwrite=true"):
        T.train(cfg, d, progress=False)
    cfg, d = compose_cfg(f"out={out}", "steps=2", "overwrite=true", *MICRO)
    T.train(cfg, d, progress=False)
    assert load_model(out).config.d_model == 32


@pytest.mark.parametrize("override, match", [
    (["foo=1"], "foo"), (["arch.dmodel=64"], "dmodel"), (["arch=lada"], "lada"),
    (["task.n_steps=40"], "n_steps"), (["task.ops=/"], "ops"), (["task.modulus=x"], "modulus"),
    (["gen_lengths=[16]"], "gen_lengths"), (["arch.n_heads=5"], "n_heads"),
    (["train_n_steps=[6,9]"], "train_n_steps"), (["train_n_steps=[]"], "train_n_steps"),
])
def test_schema_rejects_bad_options(tmp_path, override, match):
    with pytest.raises(Exception, match=match):
        compose_cfg(f"out={tmp_path}", *override)


def test_batches_cycle_problem_lengths(tmp_path):
    cfg, _ = compose_cfg(f"out={tmp_path}", "train_n_steps=[2,4]", "batch_size=4")
    tok = T.build_tokenizer()
    semis = [[row.count(";") for row in tok.batch_decode(T.make_batch(cfg, tok, step)["ids"])] for step in range(4)]
    # a k-step problem: k definitions + the question in the prompt, k solution lines in the answer
    assert {*semis[0], *semis[2]} != {*semis[1], *semis[3]}
    assert len(set(semis[0])) == 1 and len(set(semis[1])) == 1 and semis[0] == semis[2]
