"""Scores of generated replies that speak to empathetic dialogue, computed offline on CPU.

Every function takes lists of strings (or group names) and returns plain numbers, so evaluate
can score the base and the tuned model's replies the same way, and tests can call them directly.
Korean words carry their grammar in suffixes (먹었어요 = 먹 + 었 + 어요), so counting
whitespace tokens treats every conjugation as a new word; the variety and repetition scores
count kiwipiepy morphemes instead (`morphemes`).

- `chrf`: character n-gram F-score against the reference replies (sacrebleu).
- `distinct_n`: variety of wording across all replies.
- `repetition_rate`: how much a reply repeats itself (a degenerate model loops).
- `length_ratio`: whether replies are as long as the listener's in the corpus.
- `exploration_rate`: how often a reply asks the speaker something, as counsellors do.
- `emotion_reflection`: whether a reply reflects the emotion of its dialogue, given the groups
  that the emotion classifier (`maeum.emotion`) predicts for the replies.
"""

from __future__ import annotations

from collections.abc import Sequence

from maeum.corpus import EMOTION_GROUPS
from maeum.safety.normalise import analyser

# Kiwi tags of punctuation, brackets, emoji and other symbols: not words, and not where a
# sentence's grammar ends. SL (Latin letters), SH (Hanja) and SN (numbers) are words and stay.
SYMBOL_TAGS = frozenset({"SF", "SP", "SS", "SSO", "SSC", "SE", "SO", "SW", "SB", "W_EMOJI"})
QUESTION_MARKS = ("?", "？")
POLITE_PARTICLE = ("요", "JX")  # Kiwi splits 어떤가요 into ㄴ가 (EF) + 요 (JX)
# Kiwi writes the ㄴ/ㄹ/ㅂ that begin an ending as final-consonant jamo (ᆫ가, ᆯ까요, ᆸ니까);
# folding them to the keyboard jamo lets the table below be read and written as people type it.
_FINAL_JAMO = str.maketrans("\u11ab\u11af\u11b8", "ㄴㄹㅂ")
# Sentence endings that only ever ask. Endings that ask or state depending on intonation
# (어, 어요, 아요, 지, 죠, 세요, 야, ㄹ래) are left out: written without a question mark they
# are as often statements ("힘들었어요", "잘할 거예요"), so counting them would count statements.
INTERROGATIVE_ENDINGS = frozenset({
    "니", "으니", "냐", "으냐", "느냐",          # 잘 지냈니, 어디 가냐
    "나", "나요",                               # 힘들었나, 괜찮았나요
    "ㄴ가", "은가", "는가", "ㄴ가요", "은가요", "는가요",  # 최선인가, 괜찮으신가요, 좋은가요
    "ㄴ지요", "은지요", "는지요",                # 어떤 기분이셨는지요
    "까", "ㄹ까", "을까", "ㄹ까요", "을까요",       # 뭘까, 무엇일까요, 있을까요
    "습니까", "ㅂ니까",                          # 있었습니까, 괜찮습니까
})  # fmt: skip


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus-level chrF (sacrebleu's defaults: character 6-grams, beta 2) of replies against references.

    Args:
        hypotheses: generated replies.
        references: the corpus reply for each, in the same order.

    Returns:
        chrF on sacrebleu's 0-100 scale.
    """
    import sacrebleu

    return float(sacrebleu.corpus_chrf(list(hypotheses), [list(references)]).score)


def morphemes(text: str) -> list[str]:
    """The morpheme forms of `text` (kiwipiepy), punctuation and other symbols dropped.

    Symbols go because "." and "?" would otherwise be the most frequent "words" of every reply.
    Forms are kept as Kiwi writes them: 했어요 -> 하, 었, 어요.
    """
    if not text.strip():
        return []
    return [token.form for token in analyser().tokenize(text) if token.tag not in SYMBOL_TAGS]


def _ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def _check_n(n: int) -> None:
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n over morphemes: unique morpheme n-grams / all morpheme n-grams, pooled over all texts.

    Pooled across replies (not averaged per reply) because the failure it measures is the same
    reply, or the same stock phrase, given to every prompt.

    Args:
        texts: replies.
        n: n-gram length (1: morphemes, 2: morpheme pairs).

    Returns:
        A share in [0, 1]; 0.0 when the texts hold no n-gram at all.

    Raises:
        ValueError: n is below 1.
    """
    _check_n(n)
    total, unique = 0, set()
    for text in texts:
        grams = _ngrams(morphemes(text), n)
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else 0.0


def repetition_rate(texts: Sequence[str], n: int = 3) -> float:
    """How much replies repeat themselves: per reply, the share of its morpheme n-grams that
    already occurred earlier in the same reply, averaged over replies.

    For a reply with n-grams g_1 .. g_k (k >= 1) the rate is |{i : g_i = g_j for some j < i}| / k;
    "좋아요 좋아요 좋아요" (Kiwi: 좋, 어요 three times; four trigrams, the last two repeat the first two) is 2/4.
    Replies with no n-gram (fewer than n morphemes) have nothing to repeat and are left out of
    the average, so empty replies neither raise nor lower it. The default n = 3 is where natural
    replies score near 0: single morphemes such as 이 or 어요 recur in any fluent sentence, a
    looping model repeats whole phrases.

    Args:
        texts: replies.
        n: n-gram length in morphemes.

    Returns:
        A share in [0, 1]; 0.0 when no reply has n morphemes.

    Raises:
        ValueError: n is below 1.
    """
    _check_n(n)
    rates = []
    for text in texts:
        grams = _ngrams(morphemes(text), n)
        if not grams:
            continue
        seen, repeated = set(), 0
        for gram in grams:
            repeated += gram in seen
            seen.add(gram)
        rates.append(repeated / len(grams))
    return sum(rates) / len(rates) if rates else 0.0


def _visible_length(text: str) -> int:
    return sum(not ch.isspace() for ch in text)


def length_ratio(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Mean reply length over mean reference length, in characters other than whitespace.

    Whitespace is not counted because Korean spacing is loose: 힘들었겠어요 and 힘들었 겠어요
    say the same at the same length. Replies and references are paired, so this equals the
    total reply characters over the total reference characters.

    Args:
        hypotheses: generated replies.
        references: the corpus reply for each, in the same order.

    Returns:
        1.0 when replies are as long as the references on average; below 1 shorter, above longer.

    Raises:
        ValueError: the lists differ in length, are empty, or the references hold no character.
    """
    _check_paired(hypotheses, references, "hypotheses", "references")
    reference_chars = sum(_visible_length(text) for text in references)
    if not reference_chars:
        raise ValueError("references hold no characters: the length ratio is undefined")
    return sum(_visible_length(text) for text in hypotheses) / reference_chars


def asks_question(text: str) -> bool:
    """Whether `text` asks the speaker something (see `exploration_rate` for the rule)."""
    if not text.strip():
        return False
    return any(_sentence_asks(sentence.tokens) for sentence in analyser().split_into_sents(text, return_tokens=True))


def _sentence_asks(tokens: list) -> bool:
    end = len(tokens)
    while end and tokens[end - 1].tag in SYMBOL_TAGS:  # trailing punctuation, quotes, emoji
        if any(mark in tokens[end - 1].form for mark in QUESTION_MARKS):  # ?, ?!, ??
            return True
        end -= 1
    if not end:
        return False
    last = tokens[end - 1]
    ending = last.form
    if (last.form, last.tag) == POLITE_PARTICLE and end >= 2:
        last = tokens[end - 2]
        ending = last.form + POLITE_PARTICLE[0]
    return last.tag.startswith("E") and ending.translate(_FINAL_JAMO) in INTERROGATIVE_ENDINGS


def exploration_rate(texts: Sequence[str]) -> float:
    """Share of replies that ask the speaker a question, as counsellors do to explore feelings.

    A reply asks when one of its sentences (Kiwi's sentence split) ends in a question mark
    (? or ？, after any closing quotes or emoji), or ends in an ending that only ever asks
    (`INTERROGATIVE_ENDINGS`: 니, 냐, 나요, ㄴ가요, ㄹ까요, 습니까 ...; a trailing 요 counts with it).
    Only sentence ends count: 할까 말까 고민했어 does not ask. Questions written without a
    question mark in an ending that can also state (기분이 어때, 어떻게 하고 싶으세요) are
    missed on purpose: counted, they would bring every statement in 어/어요 with them. A question
    mark inside a quotation at a sentence's end ('왜 나만?' 하는 생각) is not its end and does
    not count.

    Args:
        texts: replies.

    Returns:
        A share in [0, 1]; 0.0 for no replies.
    """
    return sum(asks_question(text) for text in texts) / len(texts) if texts else 0.0


def emotion_reflection(predicted_groups: Sequence[str | None], dialogue_groups: Sequence[str]) -> tuple[float, dict[str, float]]:
    """How often a reply reads as the emotion of its dialogue, overall and per emotion group.

    Args:
        predicted_groups: the emotion group the classifier reads in each reply; None for an empty
            reply, which reflects nothing (a classifier would still name a group for "").
        dialogue_groups: the emotion group of each reply's dialogue (the corpus label).

    Returns:
        (overall, per_group): the share of replies whose predicted group is their dialogue's
        group, and for each group present in `dialogue_groups` the same share among that group's
        replies (its recall), in `EMOTION_GROUPS` order, unknown names after. (0.0, {}) for no replies.

    Raises:
        ValueError: the lists differ in length.
    """
    if len(predicted_groups) != len(dialogue_groups):
        raise ValueError(f"predicted_groups has {len(predicted_groups)} items, dialogue_groups {len(dialogue_groups)}")
    if not dialogue_groups:
        return 0.0, {}
    hits: dict[str, list[bool]] = {}
    for predicted, truth in zip(predicted_groups, dialogue_groups):
        hits.setdefault(truth, []).append(predicted == truth)
    order = list(EMOTION_GROUPS)
    groups = sorted(hits, key=lambda group: (order.index(group) if group in order else len(order), group))
    overall = sum(sum(group_hits) for group_hits in hits.values()) / len(dialogue_groups)
    return overall, {group: sum(hits[group]) / len(hits[group]) for group in groups}


def _check_paired(first: Sequence[str], second: Sequence[str], first_name: str, second_name: str) -> None:
    if len(first) != len(second):
        raise ValueError(f"{first_name} has {len(first)} items, {second_name} {len(second)}: they must be paired")
    if not first:
        raise ValueError(f"{first_name} and {second_name} are empty")


# Kiwi tags that cannot begin a word: particles (J*), endings (E*) and suffixes (XS*). A reply whose
# first morpheme is one of them starts in the middle of a word ("셨겠어요.", "를 했어").
WORD_INTERNAL_TAGS = ("J", "E", "XS")
# Kiwi reads a particle standing alone at the start of a text as a noun ("를 했어" -> 르/NNG), so the
# particles and endings that never stand as a first word are listed too. 이 and 다 are left out:
# they are also words (이 사람, 다 괜찮아).
WORD_INTERNAL_FIRST_WORDS = frozenset({
    "은", "는", "을", "를", "가", "도", "만", "에", "의", "와", "과", "로", "으로", "에서", "께서", "한테", "님",
    "요", "죠", "군요", "네요", "셨", "었", "았", "겠",
})  # fmt: skip
REPLACEMENT_CHARACTER = "\ufffd"  # what broken byte-fallback pieces decode to


def starts_mid_word(text: str) -> bool:
    """Whether a reply begins with a particle, an ending or a suffix: a fragment of a word, not a word."""
    words = text.split()
    if not words:
        return False
    if words[0].rstrip(".,!?~") in WORD_INTERNAL_FIRST_WORDS:
        return True
    tokens = [token for token in analyser().tokenize(text.strip()) if token.tag not in SYMBOL_TAGS]
    return bool(tokens) and tokens[0].tag.startswith(WORD_INTERNAL_TAGS)


def mid_word_start_rate(texts: Sequence[str]) -> float:
    """Share of replies that start inside a word (`starts_mid_word`)."""
    return sum(starts_mid_word(text) for text in texts) / len(texts) if texts else 0.0


def replacement_character_rate(texts: Sequence[str]) -> float:
    """Share of replies holding U+FFFD: byte-fallback pieces generated out of order."""
    return sum(REPLACEMENT_CHARACTER in text for text in texts) / len(texts) if texts else 0.0

