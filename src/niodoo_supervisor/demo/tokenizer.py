"""The demo model's tokenizer: a byte-level BPE trained with Qwen2's pipeline, and its files.

`demo_model` writes what this module returns as `base/tokenizer.json`,
`base/tokenizer_config.json` (with Qwen2-Instruct's ChatML chat template) and
`base/special_tokens_map.json`. The tokenizer is trained on the small corpus embedded here, so
it needs no download; every byte it yields is covered by `demo_model.GENERATOR_VERSION`, which
must be bumped when anything here changes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from tokenizers import (
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

__all__ = [
    "CHAT_TEMPLATE",
    "CORPUS",
    "ENDOFTEXT",
    "IM_END",
    "IM_START",
    "QWEN2_SPLIT_REGEX",
    "SPECIAL_TOKENS",
    "special_ids",
    "special_tokens_map",
    "tokenizer_config",
    "train_tokenizer",
]

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
# Trained first, so they get ids 0, 1, 2.
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)

# Qwen2's pre-tokenizer split. Using Qwen2's exact pipeline means transformers builds the same
# tokenizer whether it reads tokenizer.json verbatim or rebuilds it from vocab and merges (as
# its Qwen2Tokenizer class does).
QWEN2_SPLIT_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
    r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Qwen2-Instruct's ChatML template, so chat requests render as they would for a real Qwen.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Enough varied text for ~250 BPE merges at min_frequency 2; any change alters the tokenizer,
# so it is covered by demo_model.GENERATOR_VERSION.
CORPUS = """\
The supervisor starts the server, waits until it is healthy, and watches it while it runs.
When the engine dies, the supervisor notices that the health check fails and restarts it.
A language model reads a prompt and writes an answer one token at a time.
Each adapter changes the model a little: it adds a low rank update to some of its weights.
The user asks a question; the assistant answers it politely and then stops.
What is the weather like today? It is sunny in the morning and cloudy in the evening.
Please write a short poem about the sea, the wind, the stars and the quiet night.
How many requests are running, and how many are waiting in the queue right now?
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 256 512 1024 2048 4096 8192 65536.
Logs tell the story: starting, loading weights, loading adapters, ready, serving, stopping.
If the port is already in use, the server fails early and the supervisor reports the error.
The configuration names the model, the host, the port, the adapters and their ranks.
Memory is limited, so the cache must be small, and every process must be stopped at the end.
Tests should be fast, deterministic and honest: they must fail when the behaviour is wrong.
She said hello, he said goodbye, and they both laughed at the little robot on the table.
Rivers flow to the ocean, mountains rise to the clouds, and the forest is green and quiet.
A system message sets the scene; a user message asks; an assistant message replies.
Reading, writing, thinking, learning, running, waiting, starting, stopping, watching.
Alpha, beta and wide are the names of the adapters; the base model is simply called tiny.
Good morning! Could you help me plan a trip to the mountains next weekend, please?
Of course. Take warm clothes, water, a map, and tell a friend where you are going.
Why is the sky blue? Because air scatters blue light more than red light from the sun.
Translate "thank you" into French, Spanish and German: merci, gracias, danke.
Write a function that adds two numbers and returns the result, then test it twice.
Every morning the baker opens the shop, bakes fresh bread and sells it to the neighbours.
The library is open from nine until five, except on holidays and on the first Monday.
Children played in the garden while their parents talked about music, books and travel.
Errors happen: a timeout, a refused connection, a missing file, an invalid argument.
Keep it simple, measure twice, cut once, and always read the manual before you begin.
"""


def train_tokenizer(vocab_size: int) -> bytes:
    """Train a byte-level BPE tokenizer with Qwen2's pipeline; return its tokenizer.json."""
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus_lines(), trainer=trainer)
    size = int(tok.get_vocab_size(with_added_tokens=True))
    if size != vocab_size:
        # The model's embedding has exactly vocab_size rows; a shorter vocabulary would still
        # load but means the corpus no longer yields enough merges.
        raise RuntimeError(f"tokenizer vocabulary is {size}, expected {vocab_size}")
    return (str(tok.to_str(pretty=True)) + "\n").encode("utf-8")


def _corpus_lines() -> Iterator[str]:
    yield from CORPUS.splitlines(keepends=True)


def special_ids(tokenizer_json: bytes) -> dict[str, int]:
    vocab = json.loads(tokenizer_json)["model"]["vocab"]
    ids = {tok: int(vocab[tok]) for tok in SPECIAL_TOKENS}
    # tokenizer_config.json's added_tokens_decoder assumes these ids.
    if list(ids.values()) != list(range(len(SPECIAL_TOKENS))):
        raise RuntimeError(f"unexpected special token ids: {ids}")
    return ids


def tokenizer_config(model_max_length: int) -> dict[str, Any]:
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(i): {
                "content": tok,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for i, tok in enumerate(SPECIAL_TOKENS)
        },
        "additional_special_tokens": [IM_START, IM_END],
        "bos_token": None,
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": IM_END,
        "errors": "replace",
        "model_max_length": model_max_length,
        "pad_token": ENDOFTEXT,
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def special_tokens_map() -> dict[str, Any]:
    return {
        "additional_special_tokens": [IM_START, IM_END],
        "eos_token": IM_END,
        "pad_token": ENDOFTEXT,
    }
