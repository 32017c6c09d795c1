"""The README's engine snippet, executed as written on the shipped tiny LLaDA (only the checkpoint,
device and dtype swapped), in a process where the sweep-side packages (Hydra, OmegaConf, W&B,
pandas, matplotlib, lm-eval) cannot be imported: the engine needs none of them."""
from __future__ import annotations

import re
import subprocess
import sys

from fixture_paths import ROOT

TINY = ROOT / "assets" / "models" / "llada-tiny-arith"
SWEEP_SIDE = ("hydra", "omegaconf", "wandb", "pandas", "matplotlib", "lm_eval")


def readme_engine_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Using the engine", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S)[1]


def run_without_sweep_packages(code: str) -> subprocess.CompletedProcess:
    prelude = "import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in SWEEP_SIDE)  # import fails
    return subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1",
                                         "PATH": "/usr/bin:/bin", "TOKENIZERS_PARALLELISM": "false"})


def test_readme_engine_snippet_runs_on_the_tiny_model_without_the_sweep_packages():
    code = readme_engine_snippet()
    swaps = {'"GSAI-ML/LLaDA-8B-Instruct"': repr(str(TINY)), 'device="cuda"': 'device="cpu"',
             "dtype=torch.bfloat16": "dtype=torch.float32"}
    for old, new in swaps.items():
        assert old in code, f"the README snippet no longer has {old}"
        code = code.replace(old, new)
    assert "apply_chat_template" in code and "generate(model, " in code
    check = ("\nimport dllm_bench.bench, dllm_bench.decoding, dllm_bench.models\n"
             "print('CHECK', type(prompt).__name__, tuple(out.tokens.shape), out.nfe,\n"
             "      sorted(m for m in sys.modules if m.split('.')[0] in %r and sys.modules[m] is not None))\n"
             % (SWEEP_SIDE,))
    proc = run_without_sweep_packages(code + check)
    assert proc.returncode == 0, proc.stderr[-3000:]
    *printed, last = proc.stdout.strip().splitlines()
    kind, shape, nfe, loaded = re.fullmatch(r"CHECK (\w+) (\(.*?\)) (\d+) (\[.*\])", last).groups()
    assert kind == "BatchEncoding" and shape == "(1, 256)" and int(nfe) >= 8  # 8 blocks, one refresh each at least
    assert loaded == "[]"
    assert printed and printed[-1].rsplit(" ", 1)[1] == nfe  # the snippet's own print: text, then the NFE
    assert "[transformers]" not in proc.stderr  # no warning at tokenizer load


def test_generate_refuses_a_string_prompt_with_one_line():
    proc = run_without_sweep_packages(
        f"from dllm_bench import generate, load_model\nm = load_model({str(TINY)!r})\n"
        "try:\n    generate(m, 'What is 7 * 6?', gen_length=16, block_length=16)\n"
        "except ValueError as e:\n    print('REFUSED', e)\n")
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = proc.stdout.strip()
    assert line.startswith("REFUSED prompt_ids must be") and "got str" in line and "\n" not in line
