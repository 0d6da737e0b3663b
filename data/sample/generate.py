"""A seeded synthetic corpus in the exact schema of the AI Hub 감성 대화 말뭉치.

The real corpus may not be redistributed, so the repository ships a small stand-in that this
script writes: every key, code and id format of the real files, filled with Korean dialogues
composed from the hand-written phrase banks in phrases.yaml beside it (nothing is copied from
the real data). A user (HS) describes something that happened in one of 13 life situations with
a feeling from one of six emotion groups; an empathetic listener (SS) reflects the feeling and
asks an open question; later turns continue the same story.

Dialogues are composed, not sampled from a language model: for each dialogue the generator
draws a persona and an emotion label, picks an event written for that situation and emotion
group, fills its slots (family member, friend, pet ...) once so the story stays consistent
across turns, and wraps it in openers, reflections, questions and plans. The same phrase banks,
seed and sizes always give the same bytes.

Usage:
    python data/sample/generate.py --out data/sample
    python data/sample/generate.py --train 51628 --validation 6640 --out /tmp/full
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from maeum.atomic import atomic_path
from maeum.corpus import (
    AGE_CODES,
    COMPUTER_CODES,
    EMOTION_GROUPS,
    GENDER_CODES,
    TURN_KEYS,
    emotion_group,
)

PHRASES_FILE = Path(__file__).with_name("phrases.yaml")
COMPUTER = next(iter(COMPUTER_CODES))
# The fine emotion names this generator uses for the 60 codes.
EMOTION_NAMES = {
    "E10": "분노", "E11": "툴툴대는", "E12": "좌절한", "E13": "짜증내는", "E14": "방어적인",
    "E15": "악의적인", "E16": "안달하는", "E17": "구역질 나는", "E18": "노여워하는", "E19": "성가신",
    "E20": "슬픔", "E21": "실망한", "E22": "비통한", "E23": "후회되는", "E24": "우울한",
    "E25": "마비된", "E26": "염세적인", "E27": "눈물이 나는", "E28": "낙담한", "E29": "환멸을 느끼는",
    "E30": "불안", "E31": "두려운", "E32": "스트레스 받는", "E33": "취약한", "E34": "혼란스러운",
    "E35": "회의적인", "E36": "걱정스러운", "E37": "조심스러운", "E38": "초조한", "E39": "당혹스러운",
    "E40": "상처", "E41": "질투하는", "E42": "배신당한", "E43": "고립된", "E44": "충격 받은",
    "E45": "불우한", "E46": "희생된", "E47": "억울한", "E48": "괴로워하는", "E49": "버려진",
    "E50": "당황", "E51": "소외된", "E52": "남의 시선을 의식하는", "E53": "외로운", "E54": "열등감",
    "E55": "죄책감의", "E56": "부끄러운", "E57": "혐오스러운", "E58": "한심한", "E59": "어쩔 줄 모르는",
    "E60": "기쁨", "E61": "감사하는", "E62": "신뢰하는", "E63": "편안한", "E64": "만족스러운",
    "E65": "흥분", "E66": "느긋", "E67": "안도", "E68": "신이 난", "E69": "자신하는",
}

# === Generation settings ===
DEFAULT_TRAIN = 480
DEFAULT_VALIDATION = 96
DEFAULT_SEED = 20261125
TRAIN_FILE = "Training.json"
VALIDATION_FILE = "Validation.json"

AGE_WEIGHTS = {"A01": 2, "A02": 3, "A03": 3, "A04": 2}  # the real corpus leans to 청년/중년
CHRONIC_RATE = 0.3  # share of personas with D01
THREE_TURN_RATE = 0.4  # dialogues with a third human/system pair, as in the real corpus
TRAILING_SPACE_RATE = 0.05  # real utterances sometimes end in a stray space; keep cleaning honest
POLITE_RATE = 0.55  # dialogues where the listener speaks 해요체 instead of 반말
TALKS_PER_PROFILE = {1: 5, 2: 3, 3: 2}  # talks sharing one profile -> weight
# Optional pieces of an utterance, each drawn independently.
PREAMBLE_RATE = 0.35
FIRST_EXTRA_RATE = 0.3
ECHO_RATE = 0.7  # the listener paraphrases the event instead of only naming the feeling
BOTH_DETAILS_RATE = 0.35
FOLLOW_FEELING_RATE = 0.4
CHRONIC_NOTE_RATE = 0.5
PLAN_TAIL_RATE = 0.35
# Mixed with the seed so a split that starts at another profile number draws another stream.
PROFILE_SEED_STRIDE = 1_000_003

# Situations a persona of each age plausibly talks about -> weight (0: never).
SITUATION_WEIGHTS = {
    "A01": {"S01": 3, "S02": 5, "S03": 4, "S04": 3, "S05": 2, "S06": 0, "S07": 1,
            "S08": 1, "S09": 1, "S10": 0, "S11": 2, "S12": 0, "S13": 1},
    "A02": {"S01": 2, "S02": 2, "S03": 1, "S04": 3, "S05": 4, "S06": 4, "S07": 3,
            "S08": 1, "S09": 2, "S10": 0, "S11": 2, "S12": 4, "S13": 1},
    "A03": {"S01": 4, "S02": 1, "S03": 1, "S04": 2, "S05": 2, "S06": 4, "S07": 3,
            "S08": 3, "S09": 2, "S10": 2, "S11": 2, "S12": 2, "S13": 2},
    "A04": {"S01": 4, "S02": 0, "S03": 0, "S04": 2, "S05": 1, "S06": 0, "S07": 3,
            "S08": 5, "S09": 2, "S10": 5, "S11": 2, "S12": 1, "S13": 4},
}

# Keys of phrases.yaml: a table per polarity, and the listener's two registers.
NEGATIVE, POSITIVE = "부정", "긍정"
CASUAL, POLITE = "반말", "해요체"

# === Phrase banks (read from phrases.yaml) ===
Bank = dict[str, tuple[str, ...]]  # phrases per polarity, emotion group, code or situation
# Tables of phrases.yaml that are a Bank, and those that are one plain list.
_BANKS = ("feelings", "preambles", "first_extras", "follow_feelings", "chronic_notes", "plan_tails",
          "acks", "reflections", "first_questions", "second_acks", "supports", "second_questions",
          "closing_acks", "encouragements")
_LISTS = ("detail_leads", "plan_leads")


@dataclass(frozen=True)
class Event:
    """Something that happened to the user, written for one situation."""

    groups: frozenset[str]  # emotion groups this event can carry
    cause: str  # user's clause ending in -서: why they feel this way
    details: tuple[str, ...]  # sentences the user adds in the second turn
    ages: frozenset[str]  # ages it fits; empty = every age
    plans: tuple[str, ...]  # third-turn plans; empty = the situation's plans


@dataclass(frozen=True)
class Phrases:
    """Every phrase bank of phrases.yaml; the file's comments say what each one is for."""

    events: dict[str, tuple[Event, ...]]  # situation -> events
    feelings: Bank
    preambles: Bank
    first_extras: Bank
    follow_feelings: Bank
    detail_leads: tuple[str, ...]
    chronic_notes: Bank
    plans: dict[str, Bank]  # situation -> polarity -> plans
    plan_leads: tuple[str, ...]
    plan_tails: Bank
    acks: Bank
    reflections: Bank
    first_questions: Bank
    second_acks: Bank
    supports: Bank
    second_questions: Bank
    closing_acks: Bank
    encouragements: Bank
    echo_words: dict[bool, dict[str, str]]  # polite? -> first-person word -> the listener's word
    slots: dict[tuple[str, str], Bank]  # (age, gender) -> slot -> values


def _bank(table: dict[str, list[str]]) -> Bank:
    return {key: tuple(values) for key, values in table.items()}


def _event(raw: dict) -> Event:
    return Event(frozenset(raw["groups"]), raw["cause"], tuple(raw["details"]),
                 frozenset(raw.get("ages", ())), tuple(raw.get("plans", ())))


def _persona_slots(slots: dict) -> dict[tuple[str, str], Bank]:
    """The values of every slot for each persona, so a teenager's family is not a spouse."""
    return {
        (age, gender): {
            **_bank(slots["any"]),
            **{name: tuple(values[gender]) for name, values in slots["by_gender"].items()},
            **{name: tuple(values[age]) for name, values in slots["by_age"].items()},
            **{name: tuple(values[age][gender]) for name, values in slots["by_age_and_gender"].items()},
        }
        for age in AGE_CODES
        for gender in GENDER_CODES
    }


def parse_phrases(raw: dict) -> Phrases:
    """Turns the parsed phrases.yaml into the tables the generator draws from.

    Args:
        raw: the YAML document as plain dicts and lists.

    Returns:
        The phrase banks, lists turned into tuples and slots resolved per (age, gender).
    """
    return Phrases(
        events={situation: tuple(map(_event, events)) for situation, events in raw["events"].items()},
        plans={situation: _bank(by_polarity) for situation, by_polarity in raw["plans"].items()},
        echo_words={False: raw["echo_words"][CASUAL], True: raw["echo_words"][POLITE]},
        slots=_persona_slots(raw["slots"]),
        **{name: _bank(raw[name]) for name in _BANKS},
        **{name: tuple(raw[name]) for name in _LISTS},
    )


def load_phrases(path: Path = PHRASES_FILE) -> Phrases:
    """Reads a phrases.yaml (by default the one beside this script)."""
    return parse_phrases(yaml.safe_load(Path(path).read_text(encoding="utf-8")))


# === Rendering ===
_SLOT = re.compile(r"\{(\w+)\}")
_JOSA = re.compile(r"([가-힣])(이/가|을/를|은/는|과/와|으로/로|이랑/랑|이나/나)")
_REGISTER = re.compile(r"\[([^\[\]|]*)\|([^\[\]|]*)\]")
_HANGUL_FIRST, _HANGUL_COUNT, _FINALS = 0xAC00, 11172, 28
_FINAL_RIEUL = 8  # ㄹ takes 로, not 으로


def _polarity(group: str) -> str:
    return POSITIVE if group == "기쁨" else NEGATIVE


def _josa(match: re.Match[str]) -> str:
    syllable, pair = match.group(1), match.group(2)
    after_consonant, after_vowel = pair.split("/")
    code = ord(syllable) - _HANGUL_FIRST
    final = code % _FINALS if 0 <= code < _HANGUL_COUNT else 0
    if after_consonant == "으로" and final == _FINAL_RIEUL:
        final = 0
    return syllable + (after_consonant if final else after_vowel)


class _Dialogue:
    """The per-dialogue state that keeps every turn of one story consistent."""

    def __init__(self, rng: random.Random, phrases: Phrases, age: str, gender: str, polite: bool):
        self.rng, self.polite = rng, polite
        self._choices = phrases.slots[(age, gender)]
        self._echo_words = phrases.echo_words[polite]
        self._filled: dict[str, str] = {}

    def _slot(self, match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in self._filled:
            self._filled[name] = self.rng.choice(self._choices[name])
        return self._filled[name]

    def text(self, template: str) -> str:
        """Fills slots, resolves particles and picks the listener's register."""
        text = _SLOT.sub(self._slot, template)
        text = _JOSA.sub(_josa, text)
        return _REGISTER.sub(lambda m: m.group(2 if self.polite else 1), text)

    def echo(self, cause: str) -> str:
        """The user's clause as the listener repeats it: 내 아이디어 -> 네 아이디어 (반말) or dropped."""
        words = self._echo_words
        return " ".join(w for w in (words.get(w, w) for w in self.text(cause).split()) if w)


def _join(*parts: str) -> str:
    return " ".join(p for p in parts if p)


def _candidates(events: tuple[Event, ...], group: str, age: str) -> tuple[Event, ...]:
    """Events (of one situation) that carry the group and fit the age (any age if none fits)."""
    in_group = tuple(e for e in events if group in e.groups)
    fitting = tuple(e for e in in_group if not e.ages or age in e.ages)
    return fitting or in_group


def _group_codes(group: str) -> tuple[str, ...]:
    first, last = EMOTION_GROUPS[group]
    return tuple(code for code in EMOTION_NAMES if first <= code <= last)


def _content(rng: random.Random, phrases: Phrases, event: Event, age: str, gender: str, situation: str,
             disease: str, code: str) -> dict[str, str]:
    """The six utterances of one dialogue about `event`."""
    group = emotion_group(code)
    polarity = _polarity(group)
    d = _Dialogue(rng, phrases, age, gender, polite=rng.random() < POLITE_RATE)
    pick = rng.choice

    # === First pair: what happened, and how it felt ===
    preamble = pick(phrases.preambles[polarity]) if rng.random() < PREAMBLE_RATE else ""
    extra = pick(phrases.first_extras[group]) if rng.random() < FIRST_EXTRA_RATE else ""
    hs1 = _join(preamble + d.text(event.cause), pick(phrases.feelings[code]), extra)
    ack, reflection = d.text(pick(phrases.acks[polarity])), d.text(pick(phrases.reflections[group]))
    felt = _join(d.echo(event.cause), reflection) if rng.random() < ECHO_RATE else reflection
    # A 부정 group may also ask one of the questions every 부정 group shares.
    questions = phrases.first_questions[group]
    if polarity == NEGATIVE:
        questions += phrases.first_questions[NEGATIVE]
    ss1 = _join(ack, felt + ".", d.text(pick(questions)))

    # === Second pair: more of the story, support, what would help ===
    details = event.details if rng.random() < BOTH_DETAILS_RATE else (pick(event.details),)
    follow = pick(phrases.follow_feelings[group]) if rng.random() < FOLLOW_FEELING_RATE else ""
    chronic = ""
    if disease == "D01" and rng.random() < CHRONIC_NOTE_RATE:
        chronic = pick(phrases.chronic_notes[polarity])
    hs2 = d.text(pick(phrases.detail_leads) + _join(*details, follow, chronic))
    ss2 = d.text(_join(pick(phrases.second_acks[polarity]), pick(phrases.supports[group]),
                       pick(phrases.second_questions[polarity])))

    # === Optional third pair: the user's plan, and encouragement ===
    hs3 = ss3 = ""
    if rng.random() < THREE_TURN_RATE:
        plans = event.plans or phrases.plans[situation][polarity]
        tail = pick(phrases.plan_tails[polarity]) if rng.random() < PLAN_TAIL_RATE else ""
        hs3 = d.text(_join(pick(phrases.plan_leads) + pick(plans), tail))
        ss3 = d.text(_join(pick(phrases.closing_acks[polarity]), pick(phrases.encouragements[polarity])))

    turns = dict(zip(TURN_KEYS, (hs1, ss1, hs2, ss2, hs3, ss3)))
    for key, value in turns.items():
        if value and rng.random() < TRAILING_SPACE_RATE:
            turns[key] = value + " "
    return turns


# === Core ===
def generate_dialogues(n: int, seed: int, phrases: Phrases, first_profile: int = 1) -> list[dict]:
    """Generates `n` dialogues in the AI Hub 감성 대화 말뭉치 schema.

    Profiles are numbered from `first_profile`; each holds one to three talks that share its
    persona and emotion label, so talk-ids are unique as long as profile ranges don't overlap.

    Args:
        n: number of dialogues (talks) to return.
        seed: random seed; together with `phrases` and `first_profile` it fixes the output exactly.
        phrases: the phrase banks to compose from (`load_phrases`).
        first_profile: number of the first profile (`Pro_%05d`).

    Returns:
        A list of `n` records, each {"profile": {...}, "talk": {"id": {...}, "content": {...}}}.
    """
    rng = random.Random(seed * PROFILE_SEED_STRIDE + first_profile)
    ages, age_weights = zip(*AGE_WEIGHTS.items())
    talk_counts, talk_weights = zip(*TALKS_PER_PROFILE.items())
    dialogues: list[dict] = []
    profile_number = first_profile
    while len(dialogues) < n:
        age = rng.choices(ages, age_weights)[0]
        gender = rng.choice(tuple(GENDER_CODES))
        situations, weights = zip(*SITUATION_WEIGHTS[age].items())
        situation = rng.choices(situations, weights)[0]
        disease = "D01" if rng.random() < CHRONIC_RATE else "D02"
        group = rng.choice(tuple(EMOTION_GROUPS))
        code = rng.choice(_group_codes(group))
        profile_id = f"Pro_{profile_number:05d}"
        talks = min(rng.choices(talk_counts, talk_weights)[0], n - len(dialogues))
        # Talks of one profile tell different stories where the situation has enough of them.
        candidates = _candidates(phrases.events[situation], group, age)
        events = rng.sample(candidates, min(talks, len(candidates)))
        for talk_number in range(1, talks + 1):
            event = events[(talk_number - 1) % len(events)]
            dialogues.append({
                "profile": {
                    "persona-id": profile_id,
                    "persona": {
                        "persona-id": f"{age}_{gender}_{COMPUTER}",
                        "human": [age, gender],
                        "computer": [COMPUTER],
                    },
                    "emotion": {
                        "emotion-id": f"{situation}_{disease}_{code}",
                        "type": code,
                        "situation": [situation, disease],
                    },
                },
                "talk": {
                    "id": {"profile-id": profile_id, "talk-id": f"{profile_id}_{talk_number:05d}"},
                    "content": _content(rng, phrases, event, age, gender, situation, disease, code),
                },
            })
        profile_number += 1
    return dialogues


def next_profile_number(dialogues: list[dict]) -> int:
    """The first profile number after those used in `dialogues` (1 for an empty list)."""
    used = [int(d["talk"]["id"]["profile-id"].removeprefix("Pro_")) for d in dialogues]
    return max(used, default=0) + 1


def corpus_bytes(dialogues: list[dict]) -> bytes:
    """The file form of a split: UTF-8 JSON (no BOM), 2-space indent, Korean unescaped."""
    return (json.dumps(dialogues, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


# === I/O edge ===
def write_corpus(out_dir: Path, n_train: int, n_validation: int, seed: int,
                 phrases_file: Path = PHRASES_FILE) -> tuple[Path, Path]:
    """Writes Training.json and Validation.json; validation profiles follow training's.

    Args:
        out_dir: folder to write into (created if missing).
        n_train: number of training dialogues.
        n_validation: number of validation dialogues.
        seed: random seed for both splits.
        phrases_file: the phrase banks (default: phrases.yaml beside this script).

    Returns:
        The paths of the training and validation files.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    phrases = load_phrases(phrases_file)
    train = generate_dialogues(n_train, seed, phrases, first_profile=1)
    validation = generate_dialogues(n_validation, seed, phrases, first_profile=next_profile_number(train))
    paths = (out_dir / TRAIN_FILE, out_dir / VALIDATION_FILE)
    for path, split in zip(paths, (train, validation)):
        with atomic_path(path) as tmp:
            tmp.write_bytes(corpus_bytes(split))
    return paths


def main(argv: list[str] | None = None) -> int:
    """Command line: writes a sample corpus and prints where and how large.

    Args:
        argv: arguments without the program name; None reads sys.argv.

    Returns:
        The process exit status.
    """
    parser = argparse.ArgumentParser(
        prog="python data/sample/generate.py",
        description="Write a synthetic corpus in the AI Hub 감성 대화 말뭉치 schema.",
    )
    parser.add_argument("--out", type=Path, required=True,
                        help="folder for Training.json and Validation.json")
    parser.add_argument("--train", type=int, default=DEFAULT_TRAIN, help="training dialogues")
    parser.add_argument("--validation", type=int, default=DEFAULT_VALIDATION, help="validation dialogues")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed")
    args = parser.parse_args(argv)
    if args.train < 1 or args.validation < 1:
        parser.error("--train and --validation must be at least 1")
    started = time.perf_counter()
    paths = write_corpus(args.out, args.train, args.validation, args.seed)
    elapsed = time.perf_counter() - started
    for path, count in zip(paths, (args.train, args.validation)):
        print(f"{path}: {count} dialogues")
    print(f"seed {args.seed}, {elapsed:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
