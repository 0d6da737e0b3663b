"""Gemma2 through keras-hub: the base model (tiny or real), its tokenizer, LoRA adapters, replies.

Three ways to get a base, one way to use it. The tiny preset is built here from the training
split and a seed, then saved as an ordinary keras-hub preset folder; real presets are a local
preset folder or a kagglehub download. Everything downstream loads a preset folder with
`GemmaCausalLM.from_preset`, so the tiny default exercises the same code as the 2B model.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maeum.config import ModelParams, TinyModelParams
from maeum.dialogue import END_OF_TURN, START_OF_TURN

log = logging.getLogger(__name__)

BASE_POINTER = "base.json"  # in model.base_dir: which preset folder train/evaluate/chat load
TINY_PRESET_DIR = "preset"
SPECIAL_PIECES = {"pad": "<pad>", "eos": "<eos>", "bos": "<bos>", "unk": "<unk>"}
CHAT_SYMBOLS = [START_OF_TURN, END_OF_TURN, "\n"]  # atomic pieces, so the template tokenizes the same in pieces or whole
KAGGLE_CREDENTIAL_FILE = Path("~/.kaggle/kaggle.json").expanduser()


class WeightsUnavailable(RuntimeError):
    """The base weights cannot be had here; the message says why and what to do."""


# === Tiny preset: a Gemma2-shaped model built from the corpus and a seed ===


def train_tokenizer_proto(texts: Iterable[str], vocabulary_size: int) -> bytes:
    """Trains a SentencePiece model shaped like Gemma's (ids 0-3 = pad, eos, bos, unk).

    Args:
        texts: training text; formatted prompts work, the chat markers are atomic pieces.
        vocabulary_size: an upper bound; a small corpus gets the largest vocabulary it supports.

    Returns:
        The serialized model, for `GemmaTokenizer(proto=...)`.
    """
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts)),
        model_writer=model,
        vocab_size=vocabulary_size,
        hard_vocab_limit=False,  # a small corpus cannot fill a large vocabulary; take what it supports
        model_type="unigram",
        character_coverage=0.9995,
        byte_fallback=True,  # unseen Korean syllables become bytes, never <unk>
        normalization_rule_name="identity",  # keep text byte-exact, like Gemma's tokenizer
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        split_by_whitespace=True,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece=SPECIAL_PIECES["pad"], eos_piece=SPECIAL_PIECES["eos"],
        bos_piece=SPECIAL_PIECES["bos"], unk_piece=SPECIAL_PIECES["unk"],
        user_defined_symbols=CHAT_SYMBOLS,
        num_threads=1,  # deterministic piece selection
        minloglevel=2,
    )  # fmt: skip
    return model.getvalue()


def tiny_backbone(tiny: TinyModelParams, vocabulary_size: int) -> Any:
    """A Gemma2-shaped backbone: GQA, q-head-dim normalization, post norms, soft-caps, sliding window."""
    import keras_hub

    return keras_hub.models.GemmaBackbone(
        vocabulary_size=vocabulary_size,
        num_layers=tiny.num_layers,
        num_query_heads=tiny.num_query_heads,
        num_key_value_heads=tiny.num_key_value_heads,
        hidden_dim=tiny.hidden_dim,
        intermediate_dim=tiny.intermediate_dim,
        head_dim=tiny.head_dim,
        query_head_dim_normalize=True,
        use_post_ffw_norm=True,
        use_post_attention_norm=True,
        attention_logit_soft_cap=tiny.attention_logit_soft_cap,
        final_logit_soft_cap=tiny.final_logit_soft_cap,
        use_sliding_window_attention=True,
        sliding_window_size=tiny.sliding_window_size,
    )


def build_tiny_base(
    tokenizer_texts: Sequence[str], pretrain_texts: Sequence[str], model_params: ModelParams, jit_compile: bool = True
) -> Any:
    """Builds the tiny base: tokenizer from the corpus, seeded weights, a short plain-text pretraining.

    The pretraining pass teaches the base Korean words but never the chat layout, so LoRA
    fine-tuning has something real to learn and the base-vs-tuned comparison means something.

    Args:
        tokenizer_texts: text the SentencePiece model is trained on.
        pretrain_texts: plain utterances for the short full-weight pass.
        model_params: `model` section of params.yaml (seed and tiny shape).
        jit_compile: compile the pretraining step with XLA.

    Returns:
        A `GemmaCausalLM` with a `GemmaCausalLMPreprocessor` attached, ready for `save_to_preset`.
    """
    import keras
    import keras_hub

    tiny = model_params.tiny
    keras.utils.set_random_seed(model_params.seed)
    tokenizer = keras_hub.models.GemmaTokenizer(proto=train_tokenizer_proto(tokenizer_texts, tiny.vocabulary_size))
    backbone = tiny_backbone(tiny, tokenizer.vocabulary_size())
    preprocessor = keras_hub.models.GemmaCausalLMPreprocessor(tokenizer, sequence_length=tiny.pretrain_sequence_length)
    causal_lm = keras_hub.models.GemmaCausalLM(backbone=backbone, preprocessor=None)
    if tiny.pretrain_epochs > 0:
        causal_lm.compile(
            optimizer=keras.optimizers.Adam(learning_rate=tiny.pretrain_learning_rate),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="mean_with_sample_weight"),
            jit_compile=jit_compile,
        )
        # As numpy, not tf tensors, so that fit shuffles the examples between epochs.
        x, y, weights = keras.tree.map_structure(keras.ops.convert_to_numpy, preprocessor(list(pretrain_texts)))
        causal_lm.fit(x, y, sample_weight=weights, batch_size=tiny.pretrain_batch_size, epochs=tiny.pretrain_epochs,
                      shuffle=True, verbose=2)  # fmt: skip
    causal_lm.preprocessor = preprocessor  # attached only now: fit gets ids, and save_to_preset needs the tokenizer
    return causal_lm


# === Real presets: local folder, kagglehub cache, kagglehub download ===


def kaggle_credentials_present() -> bool:
    return bool(os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY")) or bool(
        os.environ.get("KAGGLE_API_TOKEN")
    ) or KAGGLE_CREDENTIAL_FILE.exists()


def kaggle_download(handle: str, local_hint: str | None = None) -> Path:
    """Downloads (or finds in `KAGGLEHUB_CACHE`) a Kaggle model; turns every failure into one clear message.

    Args:
        handle: a versioned handle such as `keras/gemma2/keras/gemma2_instruct_2b_en/1`; with a
            version and a complete cache entry, kagglehub answers from the cache offline.
        local_hint: the offline alternative the message suggests; defaults to a local preset folder
            (adapters pass their own: a local adapter file).

    Returns:
        The local folder holding the files.

    Raises:
        WeightsUnavailable: offline, no credentials, licence not accepted, or handle not found.
    """
    import kagglehub
    import requests

    cache = os.environ.get("KAGGLEHUB_CACHE", "~/.cache/kagglehub")
    local_hint = local_hint or (
        "Or copy a keras-hub preset folder to this machine and set model.preset to its path "
        "(e.g. `dvc exp run -S model.preset=/data/presets/gemma2_instruct_2b_en`)."
    )
    try:
        return Path(kagglehub.model_download(handle))
    except requests.exceptions.ConnectionError:
        raise WeightsUnavailable(
            f"Cannot reach Kaggle to fetch {handle}: this machine is offline and the kagglehub cache "
            f"({cache}) has no complete copy of that version. Download it once on a connected machine "
            f"(`python -c \"import kagglehub; kagglehub.model_download('{handle}')\"`) and copy the cache here, "
            f"setting KAGGLEHUB_CACHE. {local_hint}"
        ) from None
    except Exception as error:  # kagglehub raises several unrelated types; classify by status
        status = getattr(getattr(error, "response", None), "status_code", None)
        if type(error).__name__ == "UnauthenticatedError" or status == 401 or (
            status == 403 and not kaggle_credentials_present()
        ):
            raise WeightsUnavailable(
                f"Kaggle refused {handle}: no Kaggle credentials. Create an API token on kaggle.com "
                f"(Settings > API) and put it in {KAGGLE_CREDENTIAL_FILE} or set KAGGLE_USERNAME and KAGGLE_KEY. "
                f"{local_hint}"
            ) from None
        if status == 403:
            raise WeightsUnavailable(
                f"Kaggle refused {handle} for this account: the Gemma licence has not been accepted. "
                f"Open https://www.kaggle.com/models/{'/'.join(handle.split('/')[:2])} while logged in, accept the "
                f"licence, then retry. {local_hint}"
            ) from None
        if status == 404 or type(error).__name__ == "NotFoundError":
            raise WeightsUnavailable(f"Kaggle has no model {handle}: check the handle and version. {local_hint}") from None
        raise


def resolve_base(model_params: ModelParams) -> Path:
    """Finds the preset folder of a real base: `model.preset` as a folder, or its Kaggle handle.

    Raises:
        WeightsUnavailable: the preset is unknown or cannot be had on this machine.
    """
    preset = model_params.preset
    if Path(preset).expanduser().is_dir():
        return Path(preset).expanduser()
    if preset in model_params.kaggle_handles:
        return kaggle_download(model_params.kaggle_handles[preset])
    known = ["tiny", *model_params.kaggle_handles]
    raise WeightsUnavailable(f"model.preset {preset!r} is neither a known preset {known} nor an existing preset folder")


def write_base_pointer(base_dir: Path, preset: str, preset_path: Path | str, extra: dict | None = None) -> None:
    from maeum import atomic

    atomic.write_json(base_dir / BASE_POINTER, {"preset": preset, "path": str(preset_path), **(extra or {})})


def read_base_pointer(base_dir: Path) -> dict[str, Any]:
    pointer = base_dir / BASE_POINTER
    try:
        return json.loads(pointer.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WeightsUnavailable(f"{pointer} is missing: run the model stage first (`dvc repro model`)") from None


@dataclass
class LoadedBase:
    """A causal LM without preprocessor (it is fed token ids) and its tokenizer."""

    causal_lm: Any
    tokenizer: Any
    preset: str
    path: Path

    @property
    def end_of_turn_id(self) -> int:
        return self.tokenizer.token_to_id(END_OF_TURN)


def load_base(base_dir: Path, precision: str = "float32") -> LoadedBase:
    """Loads the base recorded by the model stage; the same call in train, evaluate and chat.

    Args:
        base_dir: `model.base_dir`, holding the model stage's `base.json`.
        precision: `train.precision`: float32, bfloat16 (weights and compute) or mixed_bfloat16
            (float32 weights, bfloat16 compute). LoRA factors stay trainable in either.
    """
    import keras_hub

    pointer = read_base_pointer(base_dir)
    path = Path(pointer["path"])
    if not path.is_absolute():
        path = base_dir / path
    dtype = None if precision == "float32" else precision
    causal_lm = keras_hub.models.GemmaCausalLM.from_preset(str(path), dtype=dtype)
    tokenizer = causal_lm.preprocessor.tokenizer
    causal_lm.preprocessor = None  # every caller feeds token ids built by maeum.dialogue
    return LoadedBase(causal_lm=causal_lm, tokenizer=tokenizer, preset=pointer["preset"], path=path)


# === Replies ===


class ReplyGenerator:
    """Greedy or sampled replies from token-id prompts, compiled once for a fixed padded length.

    Every prompt is padded to the same `prompt_budget + max_new_tokens` columns, so the compiled
    generate function is traced once and reused across calls and chat turns.
    """

    def __init__(self, base: LoadedBase, prompt_budget: int, max_new_tokens: int, sampler: str | Any | None = None):
        """Args:
            base: the model to generate with; its training compile state is left alone.
            prompt_budget: prompts keep at most this many (most recent) ids.
            max_new_tokens: reply length limit.
            sampler: a keras-hub sampler or its name; None keeps the model's (greedy unless compiled otherwise).
        """
        import keras_hub

        self.base = base
        self.prompt_budget = prompt_budget
        self.max_new_tokens = max_new_tokens
        self.length = prompt_budget + max_new_tokens
        causal_lm = base.causal_lm
        if sampler is not None or getattr(causal_lm, "sampler", None) is None:
            # Setting the sampler directly, not through compile(), keeps an optimizer mid-training intact.
            causal_lm.sampler = keras_hub.samplers.get(sampler or "greedy")
            causal_lm.generate_function = None

    def generate_ids(self, prompts: Sequence[Sequence[int]]) -> list[list[int]]:
        """Reply token ids (without the closing `<end_of_turn>`) for each prompt."""
        token_ids = np.zeros((len(prompts), self.length), dtype="int32")
        padding_mask = np.zeros((len(prompts), self.length), dtype=bool)
        for row, prompt in enumerate(prompts):
            prompt = list(prompt)[-self.prompt_budget :]
            token_ids[row, : len(prompt)] = prompt
            padding_mask[row, : len(prompt)] = True
        stop = (self.base.end_of_turn_id, self.base.tokenizer.token_to_id(SPECIAL_PIECES["eos"]))
        output = self.base.causal_lm.generate({"token_ids": token_ids, "padding_mask": padding_mask}, stop_token_ids=stop)
        replies = []
        for row, prompt in enumerate(prompts):
            start = min(len(prompt), self.prompt_budget)
            generated = np.asarray(output["token_ids"][row])[start:][np.asarray(output["padding_mask"][row])[start:]]
            reply = []
            # A prompt shorter than its budget leaves more free columns than max_new_tokens: cap here.
            for token in generated.tolist()[: self.max_new_tokens]:
                if token in stop:
                    break
                reply.append(int(token))
            replies.append(reply)
        return replies

    def generate_text(self, prompts: Sequence[Sequence[int]]) -> list[str]:
        return [self.detokenize(ids) for ids in self.generate_ids(prompts)]

    def detokenize(self, ids: Sequence[int]) -> str:
        return decode(self.base.tokenizer, ids).strip()


def decode(tokenizer: Any, ids: Sequence[int]) -> str:
    """Text of token ids; byte-fallback pieces become characters, <bos>/<eos>/<pad> vanish, chat markers stay."""
    if len(ids) == 0:
        return ""
    text = tokenizer.detokenize(np.asarray([list(ids)], dtype="int32"))
    value = text[0] if not isinstance(text, str) else text
    value = value.numpy() if hasattr(value, "numpy") else value
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
