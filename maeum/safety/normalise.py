"""Text normalisation for the crisis screen: undo the tricks and the inflection before anything matches.

People in crisis (and people hiding it from a filter) write "죽.고.싶.다", "ㅈㄱㅅㄷ", "주꼬시퍼",
"죽고싶어어어어", "자\u200b살" or "💊 모아둠". Rules and the classifier read `Views` of a message
instead of its raw text:

- `text`: the canonical surface. Unicode compatibility forms folded (but the compatibility jamo
  of 초성 and ㅠㅠ kept, which NFKC would turn into other characters or even syllables),
  invisible characters removed, emoji that stand for a means replaced by the word, characters
  repeated three or more times collapsed, single syllables split by dots, spaces or symbols
  joined, Latin words that are Korean typed on the two-set keyboard and spaced-out jamo composed
  into syllables, 초성 abbreviations and known misspellings (data/safety/lexicon.yaml) spelled out,
  lower-cased, whitespace collapsed.
- `compact`: `text` with everything but Hangul, letters and digits removed, so "자 살", "자*살"
  and "자살" read the same.
- `lemmas`: the morphemes of `text` from kiwipiepy, verbs and adjectives in their dictionary form
  ("끝내기로 했어요" -> "끝내다 기 로 하다 었 어요"), so one rule or feature covers every
  conjugation and particle instead of enumerating surface forms.

The lexicon is data, reviewed like the rules; `Lexicon.load` fails loudly on a broken file.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

HANGUL_SYLLABLES = ("\uac00", "\ud7a3")
COMPAT_JAMO = ("\u3130", "\u318f")  # ㄱ..ㅣ as typed on a keyboard; NFKC maps them to conjoining jamo
INITIALS = "ㄱㄲㄴㄷㄸㄹㅁㅂㅃㅅㅆㅇㅈㅉㅊㅋㅌㅍㅎ"  # the 19 initial consonants in syllable order
MEDIALS = "ㅏㅐㅑㅒㅓㅔㅕㅖㅗㅘㅙㅚㅛㅜㅝㅞㅟㅠㅡㅢㅣ"  # the 21 vowels in syllable order
FINALS = ["", *"ㄱㄲㄳㄴㄵㄶㄷㄹㄺㄻㄼㄽㄾㄿㅀㅁㅂㅄㅅㅆㅇㅈㅊㅋㅌㅍㅎ"]  # the 28 finals ("" = none)
SYLLABLE_BLOCK = 588  # syllables per initial consonant (21 vowels x 28 finals)
COMPOUND_VOWELS = {"ㅗㅏ": "ㅘ", "ㅗㅐ": "ㅙ", "ㅗㅣ": "ㅚ", "ㅜㅓ": "ㅝ", "ㅜㅔ": "ㅞ", "ㅜㅣ": "ㅟ", "ㅡㅣ": "ㅢ"}
COMPOUND_FINALS = {"ㄱㅅ": "ㄳ", "ㄴㅈ": "ㄵ", "ㄴㅎ": "ㄶ", "ㄹㄱ": "ㄺ", "ㄹㅁ": "ㄻ", "ㄹㅂ": "ㄼ", "ㄹㅅ": "ㄽ", "ㄹㅌ": "ㄾ",
                   "ㄹㅍ": "ㄿ", "ㄹㅎ": "ㅀ", "ㅂㅅ": "ㅄ"}  # fmt: skip
# The standard two-set (두벌식) keyboard: "wnrrhtlvek" is 죽고싶다 typed with the input method left on English.
DUBEOLSIK = dict(zip("qwertyuiopasdfghjklzxcvbnmQWERTOP", "ㅂㅈㄷㄱㅅㅛㅕㅑㅐㅔㅁㄴㅇㄹㅎㅗㅓㅏㅣㅋㅌㅊㅍㅠㅜㅡㅃㅉㄸㄲㅆㅒㅖ"))
MIN_KEYBOARD_WORD = 3  # shorter Latin words are left alone (gg, ok)
_FORMAT_CATEGORY = "Cf"  # zero-width and other invisible characters
_SYMBOL_CATEGORIES = ("So", "Sk", "Cs")  # emoji and other pictographs not in the lexicon
_REPEATS = re.compile(r"(.)\1{2,}")  # three or more of one character: a syllable stays once, ㅠㅠ or !! twice
_WHITESPACE = re.compile(r"\s+")
# Single syllables, each separated by dots, spaces, slashes or other symbols ("죽.고.싶.다",
# "죽 고 싶 어", "자*살"). Runs split by symbols are joined; runs split by spaces only when they
# are long, because ordinary sentences have short runs of one-syllable words ("좀 더 줘").
_SPLIT_SYLLABLES = re.compile(r"(?<![가-힣])[가-힣](?:[\s.,·/*_\-~|+=^'\"`]+[가-힣](?![가-힣]))+")
_SYMBOL_SEPARATOR = re.compile(r"[^가-힣\s]")
MIN_SPACED_SYLLABLES = 4
_NOT_WORD = re.compile(r"[^0-9a-z가-힣ㄱ-ㅣ]+")
_JAMO_RUN = re.compile(r"[ㄱ-ㅎ]{2,}")
_LATIN_WORD = re.compile(r"(?<![A-Za-z])[A-Za-z]{%d,}(?![A-Za-z])" % MIN_KEYBOARD_WORD)
# Single jamo typed apart ("ㅈ ㅏ ㅅ ㅏ ㄹ"): a run of jamo separated by spaces or dots, holding a vowel.
_SPACED_JAMO = re.compile(r"[ㄱ-ㅣ](?:[\s.·]*[ㄱ-ㅣ])+")


class LexiconError(ValueError):
    """The lexicon file is missing or malformed; the message names the file and the entry."""


def compose_jamo(jamo: str) -> str | None:
    """Syllables from a sequence of compatibility jamo as typed ("ㅈㅜㄱㄱㅗ" -> "죽고"); None if any jamo is left over."""
    out = []
    i, n = 0, len(jamo)
    while i < n:
        if jamo[i] not in INITIALS or i + 1 >= n or jamo[i + 1] not in MEDIALS:
            return None
        initial, vowel = jamo[i], jamo[i + 1]
        i += 2
        if i < n and vowel + jamo[i] in COMPOUND_VOWELS:
            vowel, i = COMPOUND_VOWELS[vowel + jamo[i]], i + 1
        final = ""
        # A consonant is this syllable's final unless a vowel follows it (then it starts the next syllable).
        if i < n and jamo[i] in FINALS and not (i + 1 < n and jamo[i + 1] in MEDIALS):
            final, i = jamo[i], i + 1
            if i < n and final + jamo[i] in COMPOUND_FINALS and not (i + 1 < n and jamo[i + 1] in MEDIALS):
                final, i = COMPOUND_FINALS[final + jamo[i]], i + 1
        out.append(chr(ord(HANGUL_SYLLABLES[0]) + (INITIALS.index(initial) * 21 + MEDIALS.index(vowel)) * 28
                       + FINALS.index(final)))  # fmt: skip
    return "".join(out)


def _keyboard_word(match: re.Match[str]) -> str:
    # Kept beside its reading: a few English words also compose ("the" -> 솓), so the reading is added, never swapped in.
    word = match.group(0)
    syllables = compose_jamo("".join(DUBEOLSIK.get(ch, ch) for ch in word))
    return f"{word} {syllables}" if syllables else word


def _spaced_jamo(match: re.Match[str]) -> str:
    syllables = compose_jamo(re.sub(r"[\s.·]", "", match.group(0)))
    return syllables if syllables else match.group(0)


def initials_of(phrase: str) -> str:
    """The 초성 of a phrase: '죽고싶다' -> 'ㅈㄱㅅㄷ'; non-syllables are dropped."""
    out = []
    for ch in phrase:
        if HANGUL_SYLLABLES[0] <= ch <= HANGUL_SYLLABLES[1]:
            out.append(INITIALS[(ord(ch) - ord(HANGUL_SYLLABLES[0])) // SYLLABLE_BLOCK])
    return "".join(out)


@dataclass(frozen=True)
class InitialsInContext:
    """An ambiguous short 초성 abbreviation, spelled out only when `before` follows it (ㅈㅅ하고 싶다 -> 자살, not 죄송)."""

    initials: str
    phrase: str
    before: re.Pattern[str]


@dataclass(frozen=True)
class Lexicon:
    """What normalisation replaces, read from data/safety/lexicon.yaml.

    Attributes:
        emoji: emoji -> the word it stands for.
        initials: a whole run of 초성 -> its phrase, from the file's `phrases` (their 초성 is computed).
        initials_in_context: short, ambiguous 초성 that are spelled out only before given endings.
        spellings: compiled (pattern, replacement) pairs for deliberate or careless misspellings.
        source: the file, for messages.
    """

    emoji: dict[str, str]
    initials: dict[str, str]
    initials_in_context: tuple[InitialsInContext, ...]
    spellings: tuple[tuple[re.Pattern[str], str], ...]
    source: str = "<memory>"

    @classmethod
    def parse(cls, data: Any, source: str = "<memory>") -> Lexicon:
        """Validates a parsed lexicon document.

        Raises:
            LexiconError: a section is missing or an entry has the wrong shape, naming the entry.
        """
        if not isinstance(data, dict):
            raise LexiconError(f"{source}: expected a mapping with emoji, phrases, initials_in_context, spellings")
        for key in ("emoji", "phrases", "initials_in_context", "spellings"):
            if key not in data:
                raise LexiconError(f"{source}: missing section {key!r}")
        emoji = _str_mapping(data["emoji"], f"{source}: emoji")
        phrases = data["phrases"]
        if not isinstance(phrases, list) or not all(isinstance(p, str) and initials_of(p) for p in phrases):
            raise LexiconError(f"{source}: phrases must be a list of Hangul phrases")
        initials: dict[str, str] = {}
        for phrase in phrases:
            key = initials_of(phrase)
            if len(key) >= 3:  # shorter runs are ambiguous (ㅈㅅ = 자살 or 죄송): initials_in_context
                initials.setdefault(key, phrase)
        in_context = []
        for index, entry in enumerate(data["initials_in_context"] or []):
            where = f"{source}: initials_in_context[{index}]"
            if not isinstance(entry, dict) or set(entry) != {"initials", "phrase", "before"}:
                raise LexiconError(f"{where}: needs exactly initials, phrase, before")
            in_context.append(InitialsInContext(entry["initials"], entry["phrase"], _compile(entry["before"], where)))
        spellings = tuple((_compile(pattern, f"{source}: spellings {pattern!r}"), str(replacement))
                          for pattern, replacement in _str_mapping(data["spellings"], f"{source}: spellings").items())  # fmt: skip
        return cls(emoji, initials, tuple(in_context), spellings, source)

    @classmethod
    def load(cls, path: Path) -> Lexicon:
        """Reads and validates the lexicon file.

        Raises:
            LexiconError: missing, not YAML, or malformed.
        """
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise LexiconError(f"safety lexicon file not found: {path}") from None
        except (OSError, yaml.YAMLError) as error:
            raise LexiconError(f"safety lexicon file {path} cannot be read as YAML: {' '.join(str(error).split())}") from None
        return cls.parse(data, str(path))


def _str_mapping(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise LexiconError(f"{where}: must be a mapping of strings to strings")
    return dict(value)


def _compile(pattern: Any, where: str) -> re.Pattern[str]:
    if not isinstance(pattern, str) or not pattern:
        raise LexiconError(f"{where}: must be a non-empty regular expression")
    try:
        return re.compile(pattern)
    except re.error as error:
        raise LexiconError(f"{where}: invalid regular expression: {error}") from None


@dataclass(frozen=True)
class Views:
    """The forms of one message that rules and the classifier read (see the module docstring)."""

    text: str
    compact: str
    lemmas: str


def fold_unicode(text: str) -> str:
    """NFC, then NFKC per character except the compatibility jamo (ㅈ, ㅠ), and no invisible characters."""
    out = []
    for ch in unicodedata.normalize("NFC", text):
        if unicodedata.category(ch) == _FORMAT_CATEGORY:
            continue
        out.append(ch if COMPAT_JAMO[0] <= ch <= COMPAT_JAMO[1] else unicodedata.normalize("NFKC", ch))
    return "".join(out)


def canonical_text(text: str, lexicon: Lexicon) -> str:
    """The canonical surface form (`Views.text`) of a message."""
    text = fold_unicode(text)
    for emoji, word in lexicon.emoji.items():
        text = text.replace(emoji, f" {word} ")
    text = "".join(" " if unicodedata.category(ch) in _SYMBOL_CATEGORIES else ch for ch in text)
    text = _REPEATS.sub(lambda m: m.group(1) if "가" <= m.group(1) <= "힣" else m.group(1) * 2, text)
    text = _SPLIT_SYLLABLES.sub(_join_split_syllables, text)
    text = _LATIN_WORD.sub(_keyboard_word, text)
    text = _SPACED_JAMO.sub(_spaced_jamo, text)
    text = _JAMO_RUN.sub(lambda m: lexicon.initials.get(m.group(0), m.group(0)), text)
    for entry in lexicon.initials_in_context:
        text = re.sub(rf"{entry.initials}(?=\s*(?:{entry.before.pattern}))", entry.phrase, text)
    text = text.lower()
    for pattern, replacement in lexicon.spellings:
        text = pattern.sub(replacement, text)
    return _WHITESPACE.sub(" ", text).strip()


def _join_split_syllables(match: re.Match[str]) -> str:
    run = match.group(0)
    syllables = re.sub(r"[^가-힣]", "", run)
    if _SYMBOL_SEPARATOR.search(run) or len(syllables) >= MIN_SPACED_SYLLABLES:
        return syllables
    return run


@functools.cache
def analyser() -> Any:
    """The Korean morphological analyser (kiwipiepy), created once per process (~1 s)."""
    from kiwipiepy import Kiwi

    kiwi = Kiwi()
    kiwi.tokenize("초기화")  # its model loads lazily on the first call (~2 s): pay that here, not in a chat turn
    return kiwi


def lemma_text(text: str) -> str:
    """Space-separated morphemes of `text`, verbs and adjectives as lemmas (죽었어 -> 죽다 었 어)."""
    if not text:
        return ""
    return " ".join(token.lemma for token in analyser().tokenize(text))


def views(text: str, lexicon: Lexicon) -> Views:
    """Every form of `text` that the screen reads."""
    canonical = canonical_text(text, lexicon)
    return Views(text=canonical, compact=_NOT_WORD.sub("", canonical), lemmas=lemma_text(canonical))
