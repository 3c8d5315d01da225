"""model.prompt_format: "raw" keeps today's token ids; "chat" wraps the prompt in the tokenizer's template."""

from __future__ import annotations

import pytest
from conftest import make_dataset

from egmf_core.batching import PromptEncoder
from egmf_core.config import ConfigError, ModelConfig
from egmf_core.twins import load_twin

# Llama-3-Instruct's template, shortened: bos, one header per turn, <|eot_id|> after each turn.
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


@pytest.fixture()
def llama_tokenizer():
    _, tok = load_twin("llama3-tiny", seed=0)
    return tok


def test_raw_is_the_default_and_unchanged(llama_tokenizer):
    ds = make_dataset("meld", n_train=3, n_eval=2)
    raw = PromptEncoder(llama_tokenizer, ds.spec, ModelConfig(backbone="llama3-tiny", n_tokens=3))
    assert ModelConfig().prompt_format == "raw"
    utt = raw.utterance_ids("hello there")
    ids, start = raw.prompt_ids(utt)
    expected = raw.bos + raw.prefix + [raw.pad] * 3 + raw.suffix_pre + utt + raw.suffix_post + raw.task
    assert (ids, start) == (expected, len(raw.bos + raw.prefix))


def test_chat_puts_pseudo_tokens_and_utterance_in_the_user_turn(llama_tokenizer):
    llama_tokenizer.chat_template = LLAMA3_TEMPLATE
    ds = make_dataset("meld", n_train=3, n_eval=2)
    enc = PromptEncoder(llama_tokenizer, ds.spec, ModelConfig(backbone="llama3-tiny", n_tokens=3,
                                                              prompt_format="chat"))
    utt = enc.utterance_ids("hello there")
    ids, start = enc.prompt_ids(utt)
    tok = llama_tokenizer
    special = {name: tok.convert_tokens_to_ids(name) for name in
               ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")}
    assert ids[0] == special["<|begin_of_text|>"] and ids.count(special["<|begin_of_text|>"]) == 1
    assert ids[start: start + 3] == [enc.pad] * 3  # T_pseudo's placeholders
    head = tok.decode(ids[:start])
    assert head.startswith("<|begin_of_text|><|start_header_id|>user<|end_header_id|>")
    assert head.endswith("Multimodal features:")
    tail = tok.decode(ids[start + 3:])
    assert 'Utterance: "hello there".' in tail and "Which emotion does the speaker express?" in tail
    # the user turn closes after the task prompt; the assistant header (generation prompt) ends the prompt
    assert tail.endswith("Answer:<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    after = ids[start + 3:]  # the utterance's own ids sit inside, unchanged
    assert any(after[i: i + len(utt)] == utt for i in range(len(after)))
    assert enc.answer_ids(0)[-1] == special["<|eot_id|>"]  # the assistant's answer ends its turn


def test_chat_without_text_in_prompt(llama_tokenizer):
    llama_tokenizer.chat_template = LLAMA3_TEMPLATE
    ds = make_dataset("meld", n_train=3, n_eval=2)
    enc = PromptEncoder(llama_tokenizer, ds.spec, ModelConfig(backbone="llama3-tiny", n_tokens=2,
                                                              prompt_format="chat", text_in_prompt=False))
    ids, start = enc.prompt_ids(enc.utterance_ids("hello there"))
    assert "Utterance" not in llama_tokenizer.decode(ids)


def test_chat_without_a_template_is_one_line_error(llama_tokenizer):
    ds = make_dataset("meld", n_train=3, n_eval=2)
    with pytest.raises(ConfigError) as excinfo:
        PromptEncoder(llama_tokenizer, ds.spec, ModelConfig(backbone="llama3-tiny", prompt_format="chat"))
    msg = str(excinfo.value)
    assert "\n" not in msg
    assert msg.startswith("config field model.prompt_format='chat': ") and "has no chat template" in msg


def test_unknown_prompt_format_is_refused():
    from egmf_core.config import RunConfig, validate

    with pytest.raises(ConfigError, match="model.prompt_format='markdown': must be one of"):
        validate(RunConfig.from_dict({"model": {"prompt_format": "markdown"}}))


def test_placeholders_that_disagree_with_the_models_n_tokens_are_refused():
    import torch

    from egmf_core.pseudo_tokens import inject_pseudo_tokens

    embeds, t_pseudo = torch.zeros(2, 10, 4), torch.ones(2, 3, 4)  # the model makes 3 pseudo tokens
    out = inject_pseudo_tokens(embeds, torch.tensor([[1, 2, 3], [4, 5, 6]]), t_pseudo)
    assert out[0, 1:4].eq(1).all() and out[0, 4:].eq(0).all() and out[1, 4:7].eq(1).all()
    with pytest.raises(ValueError, match=r"model.n_tokens: the prompts hold 2 placeholders, the model makes 3"):
        inject_pseudo_tokens(embeds, torch.tensor([[1, 2], [4, 5]]), t_pseudo)  # scatter would take 2 of 3 silently
