"""Token counting (up to the first EOS / stop sequence, never the prompt) and prompt encoding."""
import pytest

from dllm_bench.tasks import count_generated_tokens, decode_generated, encode_prompt
from dllm_bench.tasks.tokens import stop_token_ids

SPECIALS = ["<pad>", "<bos>", "<eos>", "<mask>", "<unk>"]
CHARS = "0123456789abcdefghijklmnopqrstuvwxyzQ:+-=#. \n"


def char_tokenizer(chat_template: str | None = None, add_bos: bool = True):
    """One token per character; BOS added on encoding with special tokens (like LLaDA's tokenizer)
    unless ``add_bos=False`` (like Dream's)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + list(CHARS))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    tok.add_special_tokens(SPECIALS)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   mask_token="<mask>", unk_token="<unk>", chat_template=chat_template,
                                   clean_up_tokenization_spaces=False)


def bpe_tokenizer():
    """A small byte-level BPE with multi-character tokens (tokens can straddle a stop sequence)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = ["Question: how many apples? Answer: 12 apples.\nQuestion: and pears? #### 42"] * 50
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=300, special_tokens=["<eos>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", clean_up_tokenization_spaces=False)


def test_counts_stop_at_first_eos_and_exclude_prompt():
    tok = char_tokenizer()
    eos = tok.eos_token_id
    z = tok.convert_tokens_to_ids("z")
    gen = tok("12+3", add_special_tokens=False)["input_ids"] + [eos, z, eos, eos]
    assert count_generated_tokens(gen, eos) == 4
    assert decode_generated(gen, eos, tok) == ("12+3", 4)
    assert count_generated_tokens([eos] * 5, eos) == 0
    assert count_generated_tokens(gen, {z, eos}) == 4
    assert count_generated_tokens(gen, {tok.convert_tokens_to_ids("+")}) == 2
    assert count_generated_tokens(gen, None) == len(gen)


def test_counts_stop_at_stop_sequence():
    tok = char_tokenizer()
    gen = tok("ab 42\nQ: next", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    text, n = decode_generated(gen, tok.eos_token_id, tok, ["Q:", "zz"])
    assert (text, n) == ("ab 42\n", 6)
    assert count_generated_tokens(gen, tok.eos_token_id, tok, ["\n"]) == 5
    assert count_generated_tokens(gen, tok.eos_token_id, tok, ["ab"]) == 0
    with pytest.raises(ValueError, match="needs a tokenizer"):
        count_generated_tokens(gen, tok.eos_token_id, None, ["Q:"])


def test_special_stop_strings_and_special_tokens_are_removed():
    tok = char_tokenizer()
    gen = tok("7", add_special_tokens=False)["input_ids"] + [tok.mask_token_id] + tok("8", add_special_tokens=False)["input_ids"]
    assert decode_generated(gen, tok.eos_token_id, tok, ["<mask>"]) == ("7", 1)
    assert decode_generated(gen, tok.eos_token_id, tok) == ("78", 3)


@pytest.mark.parametrize("stop", ["Question:", "\n", "####", " 12"])
def test_multi_char_tokens_counted_up_to_the_stop(stop):
    tok = bpe_tokenizer()
    full = "Answer: 12 apples.\nQuestion: and pears? #### 42"
    ids = tok(full, add_special_tokens=False)["input_ids"]
    assert len(ids) < len(full)  # real merges
    text, n = decode_generated(ids, tok.eos_token_id, tok, [stop])
    assert text == full[:full.index(stop)]
    # n is the fewest tokens whose text covers the output (a token straddling it and the stop counts)
    assert tok.decode(ids[:n]).startswith(text)
    assert n == 0 or len(tok.decode(ids[:n - 1])) < len(text)
    assert n < len(ids)


def test_encode_prompt_plain_and_chat():
    plain = char_tokenizer()
    assert encode_prompt(plain, "1+1=", chat=False) == [1] + plain("1+1=", add_special_tokens=False)["input_ids"]
    # no template: chat falls back to the plain prompt
    assert encode_prompt(plain, "1+1=", chat=True) == encode_prompt(plain, "1+1=", chat=False)
    chat = char_tokenizer("{{ bos_token }}{% for m in messages %}q: {{ m['content'] }}\n{% endfor %}"
                          "{% if add_generation_prompt %}a: {% endif %}")
    ids = encode_prompt(chat, "1+1=", chat=True)
    assert chat.decode(ids) == "<bos>q: 1+1=\na: "
    assert ids.count(chat.bos_token_id) == 1  # the template's BOS only, none added on top


def test_stop_token_ids_include_model_and_tokenizer_eos():
    tok = char_tokenizer()
    assert stop_token_ids(tok, 3) == {3, tok.eos_token_id}
