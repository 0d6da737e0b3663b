import pytest

from maeum.metrics import (
    asks_question,
    chrf,
    distinct_n,
    emotion_reflection,
    exploration_rate,
    length_ratio,
    morphemes,
    repetition_rate,
)

LOOP = "좋아요 좋아요 좋아요"  # Kiwi: 좋, 어요 three times
PLAIN = "오늘 정말 힘드셨겠어요"  # no morpheme trigram twice


# === chrf ===


def test_chrf_of_identical_replies_is_100():
    assert chrf(["마음이 많이 힘드셨겠어요."], ["마음이 많이 힘드셨겠어요."]) == pytest.approx(100.0)


def test_chrf_of_replies_sharing_no_character_is_0():
    assert chrf(["가나다라"], ["마바사아"]) == pytest.approx(0.0)


def test_chrf_pairs_replies_with_references_in_order():
    replies = ["오늘 정말 힘드셨겠어요", "축하해 정말 기쁘겠다"]
    assert chrf(replies, replies) > chrf(replies, replies[::-1])


# === morphemes and distinct_n ===


def test_morphemes_split_conjugations_and_drop_punctuation():
    assert morphemes("힘들었어요.") == ["힘들", "었", "어요"]


def test_morphemes_of_blank_text_are_empty():
    assert morphemes("  ") == []


def test_distinct_n_counts_morphemes_not_whitespace_words():
    # Two different whitespace words, but 힘들, 었 and 어요 recur: 4 unique of 7 morphemes.
    assert distinct_n(["힘들었어요", "힘들었겠어요"], 1) == pytest.approx(4 / 7)


def test_distinct_n_ignores_punctuation():
    assert distinct_n(["좋아요.", "좋아요!"], 1) == distinct_n(["좋아요", "좋아요"], 1) == pytest.approx(0.5)


def test_distinct_n_pools_n_grams_across_replies():
    assert distinct_n(["정말 힘드셨겠어요", "정말 힘드셨겠어요"], 2) == pytest.approx(0.5)


def test_distinct_n_without_any_n_gram_is_0():
    assert distinct_n(["", "좋아"], 3) == 0.0


def test_distinct_n_rejects_n_below_1():
    with pytest.raises(ValueError, match="at least 1"):
        distinct_n(["좋아"], 0)


# === repetition_rate ===


def test_repetition_rate_of_a_looping_reply():
    assert repetition_rate([LOOP]) == pytest.approx(2 / 4)


def test_repetition_rate_of_a_reply_without_repeats_is_0():
    assert repetition_rate([PLAIN]) == 0.0


def test_repetition_rate_averages_over_replies_not_over_n_grams():
    # Pooled n-grams would give 2 / (4 + 5); each reply counts once instead.
    assert repetition_rate([LOOP, PLAIN]) == pytest.approx(0.25)


def test_repetition_rate_ignores_repeats_across_replies():
    assert repetition_rate([PLAIN, PLAIN]) == 0.0


def test_repetition_rate_leaves_out_replies_shorter_than_n():
    assert repetition_rate(["", "네", LOOP]) == pytest.approx(0.5)


def test_repetition_rate_with_unigrams_counts_every_recurring_morpheme():
    assert repetition_rate([LOOP], n=1) == pytest.approx(4 / 6)


def test_repetition_rate_without_any_long_enough_reply_is_0():
    assert repetition_rate(["네", ""]) == 0.0


# === length_ratio ===


def test_length_ratio_does_not_count_whitespace():
    assert length_ratio(["힘들었 겠어요 "], ["힘들었겠어요"]) == pytest.approx(1.0)


def test_length_ratio_is_a_ratio_of_means_not_a_mean_of_ratios():
    # Mean of per-pair ratios would be (2/1 + 4/5) / 2 = 1.4.
    assert length_ratio(["가가", "가가가가"], ["가", "가가가가가"]) == pytest.approx(1.0)


def test_length_ratio_of_shorter_replies_is_below_1():
    assert length_ratio(["네"], ["네, 많이 힘드셨겠어요"]) == pytest.approx(1 / 10)


@pytest.mark.parametrize(("replies", "references", "message"), [
    (["네"], ["네", "아니요"], "paired"),
    ([], [], "empty"),
    (["네"], ["   "], "no characters"),
])  # fmt: skip
def test_length_ratio_rejects_unusable_input(replies, references, message):
    with pytest.raises(ValueError, match=message):
        length_ratio(replies, references)


# === exploration_rate ===


@pytest.mark.parametrize("reply", [
    "앞으로 어떤 계획이 있어?",           # question mark after a statement-like ending
    "정말?!",                             # combined punctuation
    "요즘 잠은 잘 자니",                   # 니 without a question mark
    "많이 힘드셨나요",                     # 나요
    "괜찮으신가요",                        # ㄴ가요 (Kiwi: ᆫ가요)
    "어떤가요",                           # ㄴ가 + a separate 요 particle
    "지금 가장 필요한 건 무엇일까요.",      # ㄹ까요 with a full stop
    "무슨 일이 있었습니까",                 # 습니까
    "그랬구나. 어떤 기분이셨는지요",        # the question is the second sentence
    "뭘까 😊",                            # an emoji after the ending
])  # fmt: skip
def test_reply_that_asks_is_a_question(reply):
    assert asks_question(reply)


@pytest.mark.parametrize("reply", [
    "힘들었겠어요",                         # statement
    "그랬구나 ㅠㅠ",                        # statement, symbols after it
    "할까 말까 고민했어.",                  # 까 inside the sentence, not at its end
    "'왜 나만?' 하는 생각이 드셨군요.",      # a quoted question inside a statement
    "기분이 어때",                         # ambiguous ending without "?": missed by design
    "정말 대단하세요!",                     # 세요 states here
    "",
])  # fmt: skip
def test_reply_that_does_not_ask_is_not_a_question(reply):
    assert not asks_question(reply)


def test_exploration_rate_is_the_share_of_replies_that_ask():
    assert exploration_rate(["어떤 계획이 있어?", "힘들었겠어요", "뭘까", "그랬구나"]) == pytest.approx(0.5)


def test_exploration_rate_counts_a_reply_once_however_many_questions():
    assert exploration_rate(["왜 그랬어? 무슨 일 있었니?", "그랬구나"]) == pytest.approx(0.5)


def test_exploration_rate_of_no_replies_is_0():
    assert exploration_rate([]) == 0.0


# === emotion_reflection ===


def test_emotion_reflection_overall_and_per_group():
    overall, per_group = emotion_reflection(["분노", "슬픔", "슬픔", "기쁨"], ["분노", "분노", "슬픔", "기쁨"])
    assert overall == pytest.approx(0.75)
    assert per_group == {"분노": 0.5, "슬픔": 1.0, "기쁨": 1.0}


def test_emotion_reflection_per_group_is_recall_not_precision():
    _, per_group = emotion_reflection(["분노", "분노"], ["분노", "슬픔"])
    assert per_group == {"분노": 1.0, "슬픔": 0.0}


def test_emotion_reflection_lists_only_groups_of_the_dialogues_in_corpus_order():
    _, per_group = emotion_reflection(["불안", "불안", "불안"], ["기쁨", "분노", "기쁨"])
    assert list(per_group) == ["분노", "기쁨"]


def test_emotion_reflection_of_no_replies():
    assert emotion_reflection([], []) == (0.0, {})


def test_emotion_reflection_rejects_unpaired_lists():
    with pytest.raises(ValueError, match="2 items"):
        emotion_reflection(["분노", "슬픔"], ["분노"])
