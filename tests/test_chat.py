"""The live chat (``python -m dllm_bench.chat``) under a pseudo-terminal, on the shipped tiny LLaDA:
scripted input, checked output (answers, the live block with its masked positions, statistics,
/set commands and their one-line errors), and a clean exit on EOF and on Ctrl-C."""
from __future__ import annotations

import os
import pty
import re
import select
import sys
import time

import pytest

from fixture_paths import ROOT

PROBLEM = "a=1;b=a*2;c=b+3;d=c+2;e=d-3;f=e+2;g=f-2;h=g-3;i=h-2;i?"  # the model card's example
SOLUTION = "1*2=2;2+3=5;5+2=7;7-3=4;4+2=6;6-2=4;4-3=1;1-2=9;#9"
STATS = re.compile(r"\[\d+ tokens in [\d.]+ s · [\d.]+ tokens/s · NFE (\d+) · [\d.]+ forwards/token · prompt (\d+) tokens\]")

pytestmark = pytest.mark.skipif(not (ROOT / "assets/models/llada-tiny-arith").is_dir(), reason="tiny model missing")


class Terminal:
    """``python -m dllm_bench.chat ARGS`` on a pseudo-terminal (its controlling terminal: Ctrl-C is SIGINT)."""

    def __init__(self, args: list[str]):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
                   HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", TERM="xterm", COLUMNS="120")
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: becomes the chat
            os.chdir(ROOT)
            os.execve(sys.executable, [sys.executable, "-m", "dllm_bench.chat", "num_threads=1", *args], env)
        self.out = ""

    def read_until(self, text: str, count: int = 1, timeout: float = 120) -> str:
        """Read until ``text`` has appeared ``count`` times in all output so far."""
        end = time.monotonic() + timeout
        while self.out.count(text) < count:
            assert time.monotonic() < end, f"no {text!r} (x{count}) within {timeout} s; output:\n{self.out[-3000:]}"
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if ready:
                try:
                    self.out += os.read(self.fd, 65536).decode(errors="replace")
                except OSError:  # the child closed the terminal
                    break
        return self.out

    def turn(self, line: str) -> str:
        """Send one line; returns what the chat wrote until its next prompt."""
        n, start = self.out.count("you> "), len(self.out)
        os.write(self.fd, line.encode() + b"\n")
        self.read_until("you> ", n + 1)
        return self.out[start:]

    def wait(self, timeout: float = 30) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            if select.select([self.fd], [], [], 0.1)[0]:  # keep draining: a full terminal would block it
                try:
                    self.out += os.read(self.fd, 65536).decode(errors="replace")
                except OSError:
                    pass
        os.kill(self.pid, 9)
        raise AssertionError(f"the chat did not exit; output:\n{self.out[-2000:]}")


def test_chat_answers_draws_the_block_live_and_takes_settings_between_turns():
    term = Terminal(["model=llada_tiny_arith"])
    banner = term.read_until("you> ")
    assert "llada_tiny_arith · dual cache · threshold (threshold=0.9)" in banner and "Traceback" not in banner

    out = term.turn(PROBLEM)
    assert SOLUTION in out
    live = out.split("\x1b[2K")
    assert any("[block 1/4 · step 1]" in frame and "░" in frame for frame in live)  # masked positions visible
    assert any("[block 4/4" in frame for frame in live)
    nfe, prompt = map(int, STATS.search(out).groups())
    assert 4 <= nfe < 64 and prompt == len(PROBLEM)  # parallel: fewer forwards than tokens

    assert re.search(r"error: .*threshold must be .*got 7\.0\r?\n", term.turn("/set threshold 7"))
    assert re.search(r"error: .*cache/dul.*\(valid: [^)]*\bdual, none, prefix\b[^)]*\)\r?\n", term.turn("/set cache dul"))
    assert "error: usage: /set KEY VALUE" in term.turn("/set threshold")
    assert "error: unknown command '/bogus'" in term.turn("/bogus")
    assert "now: llada_tiny_arith · prefix cache · threshold (threshold=0.9)" in term.turn("/set cache prefix")

    out = term.turn("/set decoding fixed")
    assert "now: llada_tiny_arith · prefix cache · fixed" in out and "steps 64" in out
    out = term.turn(PROBLEM)
    assert SOLUTION in out and int(STATS.search(out).group(1)) == 64  # fixed: one token per step
    assert "/set threshold 0.7" in term.turn("/help")

    os.write(term.fd, b"\x04")  # Ctrl-D: EOF
    term.read_until("bye")
    assert term.wait() == 0 and "Traceback" not in term.out


def test_ctrl_c_during_an_answer_ends_the_chat_cleanly():
    term = Terminal(["model=llada_tiny_arith", "decoding=fixed", "cache=none", "gen_length=448", "stop_at_eos=false"])
    term.read_until("you> ")
    os.write(term.fd, PROBLEM.encode() + b"\n")
    term.read_until("[block 2/")  # decoding, drawn live
    os.write(term.fd, b"\x03")
    term.read_until("bye")
    assert term.wait() == 0 and "Traceback" not in term.out and "you> " not in term.out.split(PROBLEM, 1)[1]


def test_instruct_model_keeps_the_conversation_until_reset():
    """``model.instruct=true``: every turn is rendered with the chat template and the turns before it
    (the tiny model's template concatenates the messages), so the prompt grows; /reset forgets."""
    term = Terminal(["model=llada_tiny_arith", "model.instruct=true"])
    term.read_until("you> ")
    first = int(STATS.search(term.turn(PROBLEM)).group(2))
    second = int(STATS.search(term.turn(PROBLEM)).group(2))
    assert first == len(PROBLEM) and second == 2 * len(PROBLEM) + len(SOLUTION)
    assert "conversation cleared" in term.turn("/reset")
    assert int(STATS.search(term.turn(PROBLEM)).group(2)) == first
    os.write(term.fd, b"/quit\n")
    term.read_until("bye")
    assert term.wait() == 0
