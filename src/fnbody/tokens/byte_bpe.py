"""A byte-level BPE trained on the corpus (GPT-2's scheme), wrapped as a Hugging Face tokenizer.

Byte-level BPE never meets an unknown character, and GPT-2's pre-tokenizer keeps runs of spaces
together, which suits indented code. The result is a `PreTrainedTokenizerFast`, so a run folder
that holds it loads with plain `AutoTokenizer.from_pretrained`.
"""

from __future__ import annotations

from typing import Iterable

from fnbody.errors import FnbodyError

EOS = "<|endoftext|>"


def train_byte_bpe(texts: Iterable[str], vocab_size: int = 8192, min_frequency: int = 2, model_max_length: int = 1024):
    """Train a byte-level BPE of `vocab_size` on `texts`; returns a `PreTrainedTokenizerFast` with EOS = pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + 1:
        raise FnbodyError(f"vocab_size {vocab_size} is too small: a byte-level BPE needs at least {len(alphabet) + 1} (256 bytes + end-of-text)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS],
        initial_alphabet=alphabet, show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS, pad_token=EOS,
        model_max_length=model_max_length, clean_up_tokenization_spaces=False,
    )
