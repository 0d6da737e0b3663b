"""Chat core: a session that keeps the history, builds each prompt as training did, and screens.

Every prompt is made by `maeum.dialogue.build_prompt` (template and history window) and fitted
by `maeum.dialogue.fit_to_length` (truncation) from the same pieces `tasks.tokenize` encodes:
`<bos>`, each history block, the user header, the user text, the user tail. With the same
`preprocess.max_history_turns` and a budget of `train.sequence_length + 1` ids, turn k of a
conversation gets exactly the ids training used for turn k of a corpus dialogue.

Safety comes first in each turn. The user's message and the conversation so far are assessed
(`maeum.safety.Screen.assess`) before the model is called; a `crisis` or `check_in` turn is
answered with the reviewed response text (109, 1577-0199, 1388, 112/119; for someone else in
danger, what to do for them) and the model is not called at all, so none of its words can appear
in that turn. A model reply is screened too (`Screen.shown_reply`): a harmful one is replaced, and
after a crisis every reply carries the 109 line until the conversation is reset.

The history records what the user *saw*: the user's message and the shown reply, so after a
crisis turn the next prompt carries the message and the crisis response (the model continues a
conversation in which help was offered, instead of one where the message never happened), and
a replaced reply never reaches a later prompt. The screen reads its own state from the same
history. The crisis response is long; the history window and the truncation drop it like any
other old turn.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from maeum import adapters, gemma
from maeum.config import Params
from maeum.safety import Assessment, ReplyCheck, Screen
from maeum.dialogue import (
    END_OF_TURN,
    MODEL,
    START_OF_TURN,
    USER,
    USER_HEADER,
    USER_TAIL,
    ChatPrompt,
    FittedIds,
    Turn,
    build_prompt,
    fit_to_length,
)

log = logging.getLogger(__name__)

BOS_PIECE = gemma.SPECIAL_PIECES["bos"]
SAMPLERS = ("greedy", "top_k", "top_p", "random")


# === Prompt encoding: the same pieces and the same fit as tasks.tokenize ===


def token_ids(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text, tokenized separately (as `tasks.tokenize` does in its batches)."""
    if not texts:
        return []
    return [list(map(int, ids)) for ids in tokenizer(list(texts))]


def prompt_budget(params: Params) -> int:
    """The ids a chat prompt may hold: training's `sequence_length + 1`, with nothing kept for a response."""
    return params.train.sequence_length + 1


def encode_prompt(tokenizer: Any, prompt: ChatPrompt, max_tokens: int) -> FittedIds:
    """The ids the model reads for `prompt`, fitted into `max_tokens` exactly as training fitted its examples.

    Args:
        tokenizer: the base's `GemmaTokenizer` (anything with `token_to_id` and a batch call).
        prompt: from `maeum.dialogue.build_prompt`.
        max_tokens: the budget (`prompt_budget(params)`).

    Returns:
        The fitted prompt ids (response empty) and how much was cut.
    """
    *history, header, user, tail = token_ids(tokenizer, [*prompt.history_blocks, USER_HEADER, prompt.user_text, USER_TAIL])
    return fit_to_length([tokenizer.token_to_id(BOS_PIECE)], history, header, user, tail, [], max_tokens)


def clean_reply(text: str) -> str:
    """The reply without template: anything from a turn marker on is dropped (generation stops there anyway)."""
    for marker in (END_OF_TURN, START_OF_TURN):
        text = text.split(marker, 1)[0]
    return text.strip()


# === The session ===


class Generator(Protocol):
    """What a session needs from `maeum.gemma.ReplyGenerator` (tests pass spies)."""

    def generate_ids(self, prompts: Sequence[Sequence[int]]) -> list[list[int]]: ...

    def detokenize(self, ids: Sequence[int]) -> str: ...


@dataclass(frozen=True)
class ChatTurn:
    """One answered user message.

    Attributes:
        user_text: the message as recorded (stripped).
        reply: what the user is shown.
        assessment: the screen's decision on the user's message in its conversation.
        reply_check: the screen's decision on the model's reply; None when the model was not called.
        model_reply: the model's own reply; None when the model was not called (crisis, check_in).
        prompt: the prompt built for this turn.
        fitted: its fitted ids; None when the model was not called.
        seconds: wall time of the turn.
    """

    user_text: str
    reply: str
    assessment: Assessment
    reply_check: ReplyCheck | None
    model_reply: str | None
    prompt: ChatPrompt
    fitted: FittedIds | None
    seconds: float

    @property
    def screened(self) -> bool:
        """The screen answered instead of the model."""
        return self.model_reply is None

    @property
    def replaced(self) -> bool:
        return self.reply_check is not None and self.reply_check.harmful


@dataclass
class ChatSession:
    """A conversation: history, prompt building, screening and generation for each user turn.

    Attributes:
        generator: makes reply ids from prompt ids (`gemma.ReplyGenerator`).
        tokenizer: the tokenizer the generator's model was trained with.
        max_history_turns: `preprocess.max_history_turns`.
        max_prompt_tokens: `prompt_budget(params)`.
        screen: the crisis screen (`Screen.load(params.safety)`), loaded before the first turn so a
            broken safety file stops the chat instead of screening nothing.
        history: (role, text) turns so far, oldest first: user messages and the replies shown.
    """

    generator: Generator
    tokenizer: Any
    max_history_turns: int
    max_prompt_tokens: int
    screen: Screen
    history: list[Turn] = field(default_factory=list)

    def prompt_for(self, user_text: str) -> tuple[ChatPrompt, FittedIds]:
        """The prompt and its fitted ids for `user_text` after the current history."""
        prompt = build_prompt(self.history, user_text, self.max_history_turns)
        return prompt, encode_prompt(self.tokenizer, prompt, self.max_prompt_tokens)

    def respond(self, user_text: str) -> ChatTurn:
        """Answers one user message and records the turn in the history.

        Raises:
            ValueError: the message is empty.
        """
        started = time.perf_counter()
        text = user_text.strip()
        if not text:
            raise ValueError("empty message")
        assessment = self.screen.assess(text, self.history)
        reply_check = model_reply = fitted = None
        if assessment.needs_response:
            # The model is not called: nothing it could say belongs next to this message.
            prompt = build_prompt(self.history, text, self.max_history_turns)
            shown = self.screen.responses.for_assessment(assessment)
            log.info("%s turn (%s): screen response shown, model not called", assessment.level, assessment.reason)
        else:
            prompt, fitted = self.prompt_for(text)
            model_reply = clean_reply(self.generator.detokenize(self.generator.generate_ids([fitted.prompt])[0]))
            shown, reply_check = self.screen.shown_reply(model_reply, self.history, assessment)
            if reply_check.harmful:
                log.info("model reply replaced (%s)", reply_check.reason)
        self.history += [(USER, text), (MODEL, shown)]
        return ChatTurn(text, shown, assessment, reply_check, model_reply, prompt, fitted, time.perf_counter() - started)

    def reset(self) -> None:
        """Forgets the conversation; the next message starts a new one."""
        self.history.clear()


# === Loading a model for chat ===


def make_sampler(name: str, temperature: float, top_k: int, top_p: float, seed: int | None) -> Any:
    """A keras-hub sampler: greedy (deterministic), top_k, top_p (nucleus) or random."""
    import keras_hub

    if name == "greedy":
        return keras_hub.samplers.GreedySampler()
    if name == "top_k":
        return keras_hub.samplers.TopKSampler(k=top_k, seed=seed, temperature=temperature)
    if name == "top_p":
        return keras_hub.samplers.TopPSampler(p=top_p, seed=seed, temperature=temperature)
    if name == "random":
        return keras_hub.samplers.RandomSampler(seed=seed, temperature=temperature)
    raise ValueError(f"sampler must be one of {SAMPLERS}, got {name!r}")


def base_preset_path(params: Params, preset: str | None) -> tuple[str, Path]:
    """The name and folder of the base: the model stage's record (preset None) or a preset name/folder.

    Raises:
        gemma.WeightsUnavailable: the model stage has not run, or the preset cannot be had here.
    """
    if preset is None:
        pointer = gemma.read_base_pointer(params.model.base_dir)
        path = Path(pointer["path"])
        return pointer["preset"], path if path.is_absolute() else params.model.base_dir / path
    return preset, gemma.resolve_base(dataclasses.replace(params.model, preset=preset))


def load_base(params: Params, preset: str | None) -> gemma.LoadedBase:
    """The base at training's precision: the recorded one (`gemma.load_base`, as train and evaluate) or `preset`."""
    if preset is None:
        return gemma.load_base(params.model.base_dir, precision=params.train.precision)
    import keras_hub

    name, path = base_preset_path(params, preset)
    dtype = None if params.train.precision == "float32" else params.train.precision
    causal_lm = keras_hub.models.GemmaCausalLM.from_preset(str(path), dtype=dtype)
    tokenizer = causal_lm.preprocessor.tokenizer
    causal_lm.preprocessor = None  # chat feeds token ids built by maeum.dialogue
    return gemma.LoadedBase(causal_lm=causal_lm, tokenizer=tokenizer, preset=name, path=path)


@dataclass
class ChatModel:
    """The model a chat talks to and a sentence saying what it is.

    Attributes:
        screen: the crisis screen: a registered version's own, else `params.safety`'s.
        version: the registered version number, when it is one.
    """

    model: gemma.LoadedBase
    adapter: adapters.Adapter | None
    description: str
    screen: Screen
    version: str | None = None


def load_chat_model(params: Params, preset: str | None = None, adapter: str | None = None,
                    lora_rank: int | None = None) -> ChatModel:  # fmt: skip
    """Loads the base and puts the adapter on it.

    Args:
        params: the project parameters.
        preset: None for the base the model stage recorded in `model.base_dir`; else a preset
            name from `model.kaggle_handles` or a preset folder.
        adapter: an adapter reference (`maeum.adapters.resolve_adapter`); None picks the default:
            the last local training, else `models:/<registered_model>@champion`, else none.
        lora_rank: the LoRA rank the adapter must have (None: the file's own).

    Raises:
        adapters.AdapterError, gemma.WeightsUnavailable: with a message saying what to do.
        SafetyConfigError: the `safety:` files are missing or broken (before any weights are loaded).
    """
    if adapter is None:
        reference, why = adapters.default_reference(params.train.run_file, params.tracking.registered_model,
                                                    base_preset_path(params, preset)[0])  # fmt: skip
        if reference is None:
            log.warning(why)
    else:
        reference, why = adapter, "--adapter"
    registered = adapters.registered_reference(reference) if reference else None
    if registered is not None:
        return load_registered(*registered, why, lora_rank)
    screen = Screen.load(params.safety)  # before the weights: a broken safety file stops chat at once, not after minutes
    chosen = adapters.resolve_adapter(reference) if reference else None
    if chosen is None and lora_rank is not None:
        raise adapters.AdapterError(f"--lora-rank {lora_rank} was given but there is no adapter ({why})")
    if chosen is not None and chosen.kind == "keras":
        try:  # only needed when the file has no tokenizer inside
            tokenizer_preset = base_preset_path(params, preset)[1]
        except gemma.WeightsUnavailable:
            tokenizer_preset = None
        model = adapters.load_whole_model(chosen, tokenizer_preset, lora_rank)
        return ChatModel(model, chosen, f"{chosen.describe()} [{why}]", screen)
    model = load_base(params, preset)
    where = f"base {model.preset} ({model.path})"
    if chosen is None:
        return ChatModel(model, None, f"{where} without adapter [{why}]", screen)
    adapters.apply_lora(model, chosen, lora_rank)
    return ChatModel(model, chosen, f"{where} + {chosen.describe()} [{why}]", screen)


def load_registered(name: str, version: str, why: str, lora_rank: int | None = None) -> ChatModel:
    """A registered version with everything it shipped: its own base, tokenizer, adapter and crisis screen.

    Raises:
        adapters.AdapterError: the version or alias does not exist, or its rank is not `lora_rank`.
    """
    from maeum import registry

    try:
        loaded = registry.load_version(name, version)
    except registry.RegistryError as error:
        raise adapters.AdapterError(str(error)) from None
    rank = getattr(loaded.model.causal_lm.backbone, "_lora_rank", None)
    if lora_rank is not None and rank != lora_rank:
        raise adapters.AdapterError(f"{loaded.description} has LoRA rank {rank}, but rank {lora_rank} was requested")
    return ChatModel(loaded.model, None, f"{loaded.description} with its own base and screen [{why}]", loaded.screen,
                     loaded.version)  # fmt: skip


def open_session(params: Params, chat_model: ChatModel, max_new_tokens: int, sampler: Any = None,
                 screen: Screen | None = None) -> ChatSession:  # fmt: skip
    """A session on `chat_model` whose generation is compiled once for every turn (one padded length).

    Args:
        screen: the crisis screen; None takes the model's (`ChatModel.screen`).
    """
    budget = prompt_budget(params)
    generator = gemma.ReplyGenerator(chat_model.model, prompt_budget=budget, max_new_tokens=max_new_tokens, sampler=sampler)
    return ChatSession(generator, chat_model.model.tokenizer, params.preprocess.max_history_turns, budget,
                       screen or chat_model.screen)  # fmt: skip
