"""The chat template, the history window and truncation — the one place that defines them.

Preprocess and tokenize build training examples with these functions and `maeum chat` builds
its prompts with the same ones, so the model sees at inference exactly the layout it was
trained on:

    <start_of_turn>user\n{older user turn}<end_of_turn>\n
    <start_of_turn>model\n{older reply}<end_of_turn>\n
    <start_of_turn>user\n{current user turn}<end_of_turn>\n
    <start_of_turn>model\n                      <- prompt ends here
    {reply}<end_of_turn>                        <- response: the only tokens with loss
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

START_OF_TURN = "<start_of_turn>"
END_OF_TURN = "<end_of_turn>"
USER, MODEL = "user", "model"
ROLES = (USER, MODEL)

Turn = tuple[str, str]  # (role, text)


def turn_header(role: str) -> str:
    return f"{START_OF_TURN}{role}\n"


def turn_block(role: str, text: str) -> str:
    """One finished turn of history, with its closing marker and line break."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    return f"{turn_header(role)}{text}{END_OF_TURN}\n"


USER_HEADER = turn_header(USER)
# What follows the current user text: its closing marker, then the header the model continues.
USER_TAIL = f"{END_OF_TURN}\n{turn_header(MODEL)}"


def history_window(history: Sequence[Turn], max_history_turns: int) -> list[Turn]:
    """The most recent `max_history_turns` turns (user or model utterances), oldest first."""
    if max_history_turns <= 0:
        return []
    return list(history[-max_history_turns:])


@dataclass(frozen=True)
class ChatPrompt:
    """A prompt split into the pieces truncation works on."""

    history_blocks: tuple[str, ...]
    user_text: str

    @property
    def text(self) -> str:
        return "".join(self.history_blocks) + USER_HEADER + self.user_text + USER_TAIL


def build_prompt(history: Sequence[Turn], user_text: str, max_history_turns: int) -> ChatPrompt:
    """The prompt for the next reply: a window of earlier turns and the current user utterance.

    Args:
        history: earlier (role, text) turns, oldest first.
        user_text: the utterance the model answers.
        max_history_turns: how many earlier turns the window keeps.

    Returns:
        The prompt; `.text` is the exact string the model reads.
    """
    window = history_window(history, max_history_turns)
    return ChatPrompt(tuple(turn_block(role, text.strip()) for role, text in window), user_text.strip())


def response_text(reply: str) -> str:
    """The training target for a reply: the text and the marker that ends the turn."""
    return f"{reply.strip()}{END_OF_TURN}"


@dataclass(frozen=True)
class FittedIds:
    prompt: list[int]
    response: list[int]
    dropped_history_turns: int
    cut_user_tokens: int
    cut_response_tokens: int

    @property
    def truncated(self) -> bool:
        return bool(self.dropped_history_turns or self.cut_user_tokens or self.cut_response_tokens)


def fit_to_length(
    bos: list[int],
    history: Sequence[list[int]],
    user_header: list[int],
    user_text: list[int],
    user_tail: list[int],
    response: list[int],
    max_tokens: int,
) -> FittedIds:
    """Fits one example into `max_tokens` ids, giving up the least important tokens first.

    Order of sacrifice: whole history turns, oldest first; then the *start* of the current user
    utterance (its end, next to the question being answered, stays); only when the prompt's
    fixed parts alone fill the budget, the end of the response — keeping its final
    `<end_of_turn>` so the model still learns to stop.

    Args:
        bos: the begin-of-sequence id(s).
        history: token ids of each history block, oldest first.
        user_header, user_text, user_tail: token ids of the current user turn's pieces.
        response: token ids of the response, ending with `<end_of_turn>` (empty when generating).
        max_tokens: the budget for prompt + response.

    Returns:
        The fitted prompt and response ids and how much of each was cut.
    """
    fixed = len(bos) + len(user_header) + len(user_tail)
    history = list(history)
    dropped = 0
    while history and fixed + sum(map(len, history)) + len(user_text) + len(response) > max_tokens:
        history.pop(0)
        dropped += 1
    overflow = fixed + sum(map(len, history)) + len(user_text) + len(response) - max_tokens
    cut_user = min(max(overflow, 0), len(user_text))
    user_kept = user_text[cut_user:]
    overflow -= cut_user
    cut_response = 0
    if overflow > 0 and response:
        keep = max(len(response) - overflow, 1)
        cut_response = len(response) - keep
        response = response[: keep - 1] + response[-1:]
    prompt = list(bos) + [i for block in history for i in block] + user_header + user_kept + user_tail
    return FittedIds(prompt, list(response), dropped, cut_user, cut_response)
