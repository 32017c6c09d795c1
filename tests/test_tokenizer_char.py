"""The character tokenizer: round-trips, special ids, loads offline with AutoTokenizer."""
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from dllm_bench.tasks.arithmetic import ArithmeticTask
from dllm_bench.tokenizer import CHARS, build_tokenizer, save_tokenizer, special_ids


def test_saved_folder_loads_with_autotokenizer(tmp_path):
    save_tokenizer(tmp_path)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tmp_path / f).exists()
    tok = AutoTokenizer.from_pretrained(str(tmp_path))
    assert isinstance(tok, PreTrainedTokenizerFast)
    ids = special_ids()
    assert (tok.mask_token_id, tok.eos_token_id, tok.pad_token_id, tok.bos_token_id) == (
        ids["mask_token_id"], ids["eos_token_id"], ids["pad_token_id"], ids["bos_token_id"])
    assert len({tok.mask_token_id, tok.eos_token_id, tok.pad_token_id, tok.bos_token_id}) == 4
    assert tok.apply_chat_template([{"role": "user", "content": "a=1;b?"}], tokenize=False) == "a=1;b?"


def test_round_trip_one_token_per_char():
    tok = build_tokenizer()
    texts = [CHARS, *(s.prompt + s.meta["solution"] for s in ArithmeticTask().samples(20))]
    for text in texts:
        ids = tok.encode(text)
        assert len(ids) == len(text) and ids == tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
    assert len(set(tok.encode(CHARS))) == len(CHARS)


def test_specials_decode_and_skip():
    tok = build_tokenizer()
    ids = tok.encode("b=1;#1") + [tok.eos_token_id, tok.eos_token_id]
    assert tok.decode(ids, skip_special_tokens=True) == "b=1;#1"
    assert tok.decode([tok.mask_token_id]) == "<|mask|>"
    assert tok.encode("Z") == [tok.unk_token_id]


def test_batch_left_pads():
    tok = build_tokenizer()
    batch = tok(["a=1;b?", "a=12;b=a+1;b?"], padding=True)
    assert batch["input_ids"][0][0] == tok.pad_token_id and batch["attention_mask"][0][0] == 0
