"""The chat format every stage shares: how a prompt is rendered and which token ends the answer.

The end of the assistant turn is read off the chat template, never taken from `eos_token`: a Qwen
base checkpoint says `<|endoftext|>` while its ChatML template ends a turn with `<|im_end|>`, and a
model trained to stop at one and served to stop at the other never stops (LLaMA-Factory #7454, #7943).
The base stage saves that token as the tokenizer's eos and in a generation config that sets nothing
else, so transformers `generate`, the merge parity check and vLLM all decode alike.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .relations import user_messages

# ChatML, as the Qwen family renders a plain user/assistant exchange, without a default system prompt
# (every token costs on CPU) and without Qwen3's think block (`<think>` is no special token: an
# answer that learnt to open with it would not parse).
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")

# Keys of a generation config that change what greedy decoding returns; vLLM applies a model's
# generation_config.json to every request, so none of them may reach an exported model.
SAMPLING_KEYS = ("do_sample", "temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
                 "frequency_penalty", "max_new_tokens", "max_length", "no_repeat_ngram_size")

_ANSWER = "\u2063relsft-answer\u2063"  # a sentinel no template alters


class ChatFormatError(ValueError):
    pass


def render_prompt(tokenizer, text: str) -> str:
    # enable_thinking=False: what Qwen3's own template needs to leave the think block out (base.chat_template:
    # model); every other template ignores it.
    return tokenizer.apply_chat_template(user_messages(text), add_generation_prompt=True, tokenize=False,
                                         enable_thinking=False)


def _render_with_answer(tokenizer, text: str, answer: str) -> str:
    return tokenizer.apply_chat_template(user_messages(text) + [{"role": "assistant", "content": answer}],
                                         tokenize=False, enable_thinking=False)


def end_of_turn(tokenizer) -> str:
    """The special token the chat template puts right after an assistant answer (`<|im_end|>` for ChatML)."""
    if not tokenizer.chat_template:
        raise ChatFormatError("the tokenizer has no chat template; set base.chat_template: chatml")
    full = _render_with_answer(tokenizer, "x", _ANSWER)
    after = full.split(_ANSWER, 1)[1] if _ANSWER in full else ""
    specials = sorted({str(t) for t in tokenizer.all_special_tokens} | set(tokenizer.get_added_vocab()),
                      key=len, reverse=True)
    for token in specials:
        if token and after.startswith(token):
            return token
    raise ChatFormatError(f"the chat template puts no special token after the assistant's answer "
                          f"(it renders {after[:40]!r}); use a template whose turns end with a token")


def render_completion(tokenizer, text: str, output: str, eot: str | None = None) -> str:
    """The template's own rendering of the assistant turn, cut right after its end-of-turn token
    (`eot`: `end_of_turn(tokenizer)`, passed in by callers that render many)."""
    prompt = render_prompt(tokenizer, text)
    full = _render_with_answer(tokenizer, text, output)
    if not full.startswith(prompt):
        raise ChatFormatError("the chat template renders the prompt differently with an answer; cannot split it")
    completion = full[len(prompt):]
    eot = eot or end_of_turn(tokenizer)
    end = completion.rfind(eot)
    if end < 0:
        raise ChatFormatError(f"the chat template's assistant turn does not contain its end-of-turn token {eot!r}")
    return completion[: end + len(eot)]


def clean_generation_config(tokenizer, model_config) -> Any:
    """eos = the end-of-turn token, pad, bos: nothing that samples or penalises."""
    from transformers import GenerationConfig

    eot_id = tokenizer.convert_tokens_to_ids(end_of_turn(tokenizer))
    return GenerationConfig(eos_token_id=eot_id, pad_token_id=tokenizer.pad_token_id,
                            bos_token_id=getattr(model_config, "bos_token_id", None))


def stop_on_end_of_turn(model, tokenizer) -> None:
    """Make the tokenizer's eos, the model config's eos and the generation config all the end-of-turn token."""
    eot = end_of_turn(tokenizer)
    tokenizer.eos_token = eot
    model.config.eos_token_id = tokenizer.convert_tokens_to_ids(eot)
    if tokenizer.pad_token_id is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config = clean_generation_config(tokenizer, model.config)


def sampling_keys_in(generation_config: dict[str, Any]) -> set[str]:
    return set(generation_config) & set(SAMPLING_KEYS)


def chat_template_kwargs(model_dir: str | Path) -> dict[str, Any]:
    """A template that knows `enable_thinking` (Qwen3's own, kept with base.chat_template: model) is
    rendered with thinking off, as every stage rendered it (chat.render_prompt): same prompt ids."""
    d = Path(model_dir)
    if (d / "chat_template.jinja").exists():
        template = (d / "chat_template.jinja").read_text(encoding="utf-8")
    elif (d / "tokenizer_config.json").exists():
        template = json.loads((d / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template") or ""
    else:
        template = ""
    return {"enable_thinking": False} if "enable_thinking" in str(template) else {}
