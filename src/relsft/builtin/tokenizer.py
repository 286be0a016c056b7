"""The builtin model's tokenizer: byte-level BPE trained here with `tokenizers` on the project's own
text and the 8,105 characters of the General Standard table, each one token."""

from __future__ import annotations

from ..chat import CHAT_TEMPLATE
from ..relations import INSTRUCTION
from ..synthetic.inputs import PLACEHOLDER_RE, RawData, RawDataError, Statement

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen2's own pre-tokenizer pattern. transformers rebuilds any `model_type: qwen2` tokenizer with it
# on load, so the trainer must see the same pieces or the saved merges would not round-trip.
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Training additionally isolates every CJK character, so no merge ever spans two characters: a
# character encodes the same way whatever surrounds it, and a name is copied token for token.
HAN_PATTERN = r"\p{Han}"
# The marks of Chinese prose (GB/T 15834), whether or not the parts use them yet: one token each.
PROSE_PUNCTUATION = (*"，。、；：？！“”‘’「」『』（）《》〈〉·", "——", "……")


def train_tokenizer(corpus: list[str], vocab_size: int):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(HAN_PATTERN), behavior="isolated"),
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        additional_special_tokens=["<|im_start|>"],
        model_max_length=2048,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tokenizer_corpus(raw: RawData) -> list[str]:
    """The project's fixed text plus the 8,105 characters of the General Standard table: each becomes
    one token, so the words of a novel are tokens the model has seen and a name is copied character
    by character; anything else (and punctuation merges aside) falls back to bytes."""
    rel_lines = [f"-:{r}" for r in raw.relations]
    chars = "".join(raw.charset) + "".join(raw.given_male + raw.given_female) + "".join(raw.surnames)
    return [*raw.fixed_text().splitlines(), INSTRUCTION, "system", "user", "assistant", *rel_lines, chars,
            *PROSE_PUNCTUATION]


def check_ood_wording(raw: RawData) -> None:
    """A held-out part must be a new wording of words the training text uses.

    The builtin model knows only the Chinese it is trained on. A character that occurs in no
    training text looks exactly like an unseen name character, so the model copies it into the
    name: such a part would measure the vocabulary, not generalisation to new wordings.
    """
    seen = set("".join(raw.part_texts("train"))) | set(INSTRUCTION) | {c for r in raw.annotated for c in r.text}
    seen |= {c for k in raw.kinship for c in k.word} | {c for r in raw.relations for c in r}
    for part in [*raw.statements, *raw.clauses]:
        if part.split != "ood":
            continue
        unseen = sorted(set(PLACEHOLDER_RE.sub("", part.text)) - seen)
        if unseen:
            kind = "statements" if isinstance(part, Statement) else "clauses"
            raise RawDataError(
                f"prose/{kind}.tsv:{part.line}: the held-out part {part.text!r} uses {''.join(unseen)!r}, which no "
                "training part has; add a train part that uses it"
            )
