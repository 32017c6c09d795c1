"""The evaluation protocols on crafted generations: ``clean`` (ours) against ``reference`` (what
Fast-dLLM's lm-eval classes return), per family. Each expected reference string is worked out by
hand from the reference's steps (decode, stop cuts in list order, special tokens, EOS text)."""
import pytest

from dllm_bench.tasks.protocol import EvalProtocol
from dllm_bench.tasks.sanitize import code_block, reference_program, sanitize
from test_tasks_tokens import char_tokenizer

CHAT = "{{ bos_token }}{% for m in messages %}q: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}a: {% endif %}"
HUMANEVAL = {"task_id": "HumanEval/7", "prompt": "def f(x):\n", "entry_point": "f"}
LLADA, DREAM = char_tokenizer(CHAT), char_tokenizer(CHAT, add_bos=False)


def gen(tok, *parts) -> list[int]:
    """Generated ids from text pieces and special-token names (``"<eos>"``)."""
    ids = []
    for p in parts:
        ids += [tok.convert_tokens_to_ids(p)] if p.startswith("<") else tok(p, add_special_tokens=False)["input_ids"]
    return ids


def post(name, family, ids, tok, stops=(), doc=None, instruct=False):
    return EvalProtocol(name, family, instruct).postprocess(ids, tok, tok.eos_token_id, stops, doc)


def test_eos_in_the_middle():
    ids = gen(LLADA, "#3", "<eos>", "45", "<eos>", "<eos>")
    assert post("clean", "llada", ids, LLADA, ["\n"]) == ("#3", 2)
    # LLaDA: nothing cuts at EOS; the special tokens are stripped after the stop cut
    assert post("reference", "llada", ids, LLADA, ["\n"]) == ("#345", 2)
    # Dream: the decoded text is cut at the EOS token's text
    assert post("reference", "dream", gen(DREAM, "#3", "<eos>", "45", "<eos>"), DREAM, ["\n"]) == ("#3", 2)


def test_overlapping_stops_cut_in_list_order():
    ids = gen(LLADA, "1+2=3#3", "<eos>")
    stops = ["#", "3#"]
    assert post("clean", "llada", ids, LLADA, stops)[0] == "1+2="      # the earliest stop: "3#" at 4
    assert post("reference", "llada", ids, LLADA, stops)[0] == "1+2=3"  # "#" first; "3#" no longer occurs
    assert post("reference", "dream", gen(DREAM, "1+2=3#3", "<eos>"), DREAM, stops)[0] == "1+2=3"
    # every stop of the list is applied to what the previous ones left
    both = gen(LLADA, "ab.cd\nq: x")
    assert post("reference", "llada", both, LLADA, ["\n", "."])[0] == "ab"
    assert post("reference", "llada", both, LLADA, ["q:", "."])[0] == "ab"


def test_special_tokens_inside_the_text():
    ids = gen(LLADA, "7", "<mask>", "8", "<eos>", "9")
    assert post("clean", "llada", ids, LLADA) == ("78", 3)
    assert post("reference", "llada", ids, LLADA) == ("789", 3)
    # Dream keeps special tokens (only its EOS text ends the output)
    assert post("reference", "dream", gen(DREAM, "7", "<mask>", "8", "<eos>", "9"), DREAM) == ("7<mask>8", 3)
    # a special token as a stop string is found in the decoded text, before it is stripped
    assert post("reference", "llada", ids, LLADA, ["<mask>"])[0] == "7"


def test_instruct_humaneval_is_not_cut_at_stops():
    stops = ["\ndef", "\nclass", "\nif"]
    ids = gen(LLADA, "  return 1\ndef g", "<eos>", "x", "<eos>")
    # LLaDA instruct on HumanEval: the whole generation, special tokens skipped, no stop cut
    assert post("reference", "llada", ids, LLADA, stops, HUMANEVAL, instruct=True)[0] == "  return 1\ndef gx"
    # ... but a base LLaDA, or an instruct LLaDA on another task, is cut
    assert post("reference", "llada", ids, LLADA, stops, HUMANEVAL)[0] == "  return 1"
    assert post("reference", "llada", ids, LLADA, stops, {"task_id": "Mbpp/2"}, instruct=True)[0] == "  return 1"
    # Dream on HumanEval (its scripts pass escape_until=true): cut at EOS only, base model too
    ids_d = gen(DREAM, "  return 1\ndef g", "<eos>", "x")
    assert post("reference", "dream", ids_d, DREAM, stops, HUMANEVAL)[0] == "  return 1\ndef g"
    assert post("clean", "llada", ids, LLADA, stops, HUMANEVAL, instruct=True) == ("  return 1", 10)


def test_token_count_does_not_depend_on_the_protocol():
    ids = gen(LLADA, "ab\ncd", "<eos>", "ef")
    for name in ("clean", "reference"):
        for family in ("llada", "dream"):
            assert post(name, family, ids, LLADA, ["\n"])[1] == 2


def test_prompt_encoding():
    bos = LLADA.bos_token_id
    text = gen(LLADA, "1+1=")
    # instruct: chat template in both; the reference adds the tokenizer's BOS in front of the template's
    assert EvalProtocol("clean", "llada", True).encode(LLADA, "1+1=") == [bos, *gen(LLADA, "q: 1+1=\na: ")]
    assert EvalProtocol("reference", "llada", True).encode(LLADA, "1+1=") == [bos, bos, *gen(LLADA, "q: 1+1=\na: ")]
    # a sample that does not allow chat (arith) and base models: plain, with the tokenizer's BOS
    for name in ("clean", "reference"):
        assert EvalProtocol(name, "llada", True).encode(LLADA, "1+1=", chat=False) == [bos, *text]
        assert EvalProtocol(name, "llada", False).encode(LLADA, "1+1=") == [bos, *text]
    # Dream (its tokenizer adds no BOS): the reference puts the BOS text in front of base prompts
    assert EvalProtocol("clean", "dream").encode(DREAM, "1+1=") == text
    assert EvalProtocol("reference", "dream").encode(DREAM, "1+1=") == [bos, *text]
    assert EvalProtocol("reference", "dream", True).encode(DREAM, "1+1=") == [bos, *gen(DREAM, "q: 1+1=\na: ")]
    # a prompt lm-eval already rendered with the chat template is only tokenized
    rendered = "<bos>q: 1+1=\na: "
    assert EvalProtocol("clean", "llada", True).encode(LLADA, rendered, rendered=True) == [bos, *gen(LLADA, "q: 1+1=\na: ")]
    assert EvalProtocol("reference", "llada", True).encode(LLADA, rendered, rendered=True) == [bos, bos, *gen(LLADA, "q: 1+1=\na: ")]


def test_bad_protocol_or_family():
    with pytest.raises(ValueError, match="unknown protocol 'refrence'; valid: clean, reference"):
        EvalProtocol("refrence")
    with pytest.raises(ValueError, match="unknown model family 'gpt'"):
        EvalProtocol("clean", "gpt")


def test_reference_humaneval_program():
    prompt = "import math\n\n\ndef area(r):\n    \"\"\"Area of a circle.\"\"\"\n"
    doc = {"prompt": prompt, "entry_point": "area"}
    chatty = ("Sure! Here it is:\n```python\ndef area(r):\n\treturn math.pi * sq(r)\n\ndef sq(x):\n    return x * x\n"
              "\ndef unused():\n    return 0\n\nprint(area(2))\n```\nThis uses math.")
    program = reference_program(doc, chatty)
    assert program == "import math\ndef area(r):\n    return math.pi * sq(r)\ndef sq(x):\n    return x * x"
    # no fence: the whole output; a body-only completion joins the prompt's function
    assert reference_program(doc, "    return math.pi * r * r\n") == \
        "import math\ndef area(r):\n    \"\"\"Area of a circle.\"\"\"\n    return math.pi * r * r"
    assert code_block("a\n```python\nx = 1\n```\n```python\ny = 2\n```") == "x = 1\n"
    # the longest parsable run of lines wins; functions without a return are dropped
    assert sanitize("oops ((\ndef f():\n    return g()\ndef g():\n    pass\n", "f") == "def f():\n    return g()"
    assert sanitize("not python at all (", "f") == ""
