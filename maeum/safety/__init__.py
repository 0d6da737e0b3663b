"""Crisis safety: a person in crisis is never answered by a language model alone.

    from maeum.safety import assess
    assessment = assess("요즘 그냥 아침에 눈을 안 떴으면 좋겠어")
    assessment.level      # "crisis" | "check_in" | "none"
    assessment.reason     # which rules and scores decided, for a reviewer

`assess` uses the screen configured in ./params.yaml (`safety:`), loaded once; everything in the
project that screens (chat, serve, evaluate, the registered model) builds a `Screen` from that
same section. The parts: `normalise` (tricks and inflection), `rules` (reviewed patterns),
`classifier` (trained by the safety stage), `screen` (graded decisions, context, replies),
`evaluation` (per-category numbers on labelled sets).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from maeum.safety.rules import SafetyConfigError
from maeum.safety.screen import LEVELS, Assessment, ReplyCheck, Screen, Signal

__all__ = ["LEVELS", "Assessment", "ReplyCheck", "SafetyConfigError", "Screen", "Signal", "assess", "default_screen"]


@functools.cache
def default_screen(params_file: str = "params.yaml") -> Screen:
    """The screen of `params_file`'s `safety:` section, loaded once per process.

    Raises:
        SafetyConfigError: a safety file is missing or broken (never a screen that lets everything through).
        maeum.config.ParamsError: the parameters file cannot be read.
    """
    from maeum.config import load_params

    return Screen.load(load_params(params_file).safety)


def assess(text: str, history: Sequence[tuple[str, str]] = ()) -> Assessment:
    """Assesses one user message, with the earlier (role, text) turns of its conversation.

    Args:
        text: the user's message.
        history: earlier turns, oldest first; role "user" or "model" (or "assistant").

    Returns:
        The assessment: level, score, whether it is about someone else, signals and a reason.
    """
    return default_screen().assess(text, history)
