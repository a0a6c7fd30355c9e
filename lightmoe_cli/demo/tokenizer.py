"""Byte-level BPE tokenizer of the demo model, trained with `tokenizers` and wrapped for transformers.

Why byte-level: every domain (Spanish accents, code, arithmetic) round-trips exactly, with no unknown token.
The training sample takes the same number of bytes from every domain, so no domain dominates the merges.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from lightmoe_cli.demo.corpus import read_split

SPECIAL_TOKENS = ["<|endoftext|>", "<|pad|>"]


def train_tokenizer(corpus: Path, domains: list[str], vocab_size: int, bytes_per_domain: int = 2_000_000
                    ) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on an equal-bytes sample of each domain's train split."""

    def sample():
        for domain in domains:
            taken = 0
            for text in read_split(corpus, domain, "train"):
                if taken >= bytes_per_domain:
                    break
                taken += len(text.encode())
                yield text

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(sample(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|pad|>", model_max_length=1024)
