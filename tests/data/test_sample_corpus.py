import importlib.util
import json
import os
import random
import re
import subprocess
import sys
from collections import Counter
import pytest
import yaml

from maeum import corpus as schema
from tests.conftest import REPO, SAMPLE_DIR

GENERATOR = SAMPLE_DIR / "generate.py"

MIN_TRAIN, MIN_VALIDATION = 400, 80
MIN_DISTINCT_HS01_SHARE = 0.95
MIN_DISTINCT_TOKENS = 2000
MIN_SITUATIONS = 10
SCALE_N = 6000


def _load_generator():
    """data/sample/generate.py is a script beside the data, not a package: import it by path."""
    spec = importlib.util.spec_from_file_location("sample_generate", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


sc = _load_generator()


@pytest.fixture(scope="module")
def phrases():
    return sc.load_phrases()


@pytest.fixture(scope="module")
def train() -> list[dict]:
    return json.loads((SAMPLE_DIR / sc.TRAIN_FILE).read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def validation() -> list[dict]:
    return json.loads((SAMPLE_DIR / sc.VALIDATION_FILE).read_text(encoding="utf-8"))


# === The shipped files are the generator's output ===
def test_shipped_files_equal_regenerated_defaults(tmp_path):
    written = sc.write_corpus(tmp_path, sc.DEFAULT_TRAIN, sc.DEFAULT_VALIDATION, sc.DEFAULT_SEED)
    for path in written:
        assert path.read_bytes() == (SAMPLE_DIR / path.name).read_bytes(), f"rerun the CLI: {path.name} is stale"


def test_cli_output_does_not_depend_on_hash_seed(tmp_path):
    for hash_seed in ("1", "2"):
        out = tmp_path / hash_seed
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        subprocess.run([sys.executable, str(GENERATOR), "--out", str(out)],
                       cwd=REPO, env=env, check=True, capture_output=True)
    for name in (sc.TRAIN_FILE, sc.VALIDATION_FILE):
        assert (tmp_path / "1" / name).read_bytes() == (tmp_path / "2" / name).read_bytes()


def test_files_are_utf8_without_bom_and_unescaped():
    data = (SAMPLE_DIR / sc.TRAIN_FILE).read_bytes()
    assert not data.startswith(b"\xef\xbb\xbf")  # no BOM
    assert re.search("[가-힣]", data.decode("utf-8"))  # Korean stored as UTF-8 text
    assert b"\\u" not in data  # ensure_ascii=False


def test_same_seed_same_dialogues_other_seed_other_dialogues(phrases):
    first = sc.generate_dialogues(50, seed=7, phrases=phrases)
    assert first == sc.generate_dialogues(50, seed=7, phrases=phrases)
    assert first != sc.generate_dialogues(50, seed=8, phrases=phrases)


# === Schema ===
def _check_record(record: dict) -> None:
    profile, talk = record["profile"], record["talk"]
    assert set(record) == {"profile", "talk"}
    assert set(profile) == {"persona-id", "persona", "emotion"}
    assert set(profile["persona"]) == {"persona-id", "human", "computer"}
    assert set(profile["emotion"]) == {"emotion-id", "type", "situation"}
    assert set(talk) == {"id", "content"}
    assert set(talk["id"]) == {"profile-id", "talk-id"}
    assert list(talk["content"]) == list(schema.TURN_KEYS)

    age, gender = profile["persona"]["human"]
    assert age in schema.AGE_CODES and gender in schema.GENDER_CODES  # persona codes in range
    assert profile["persona"]["computer"] == list(schema.COMPUTER_CODES)
    assert profile["persona"]["persona-id"] == f"{age}_{gender}_{sc.COMPUTER}"  # id matches its list

    situation, disease = profile["emotion"]["situation"]
    code = profile["emotion"]["type"]
    assert situation in schema.SITUATION_CODES and disease in schema.DISEASE_CODES  # emotion codes in range
    assert code in sc.EMOTION_NAMES and re.fullmatch(r"E[1-6]\d", code)
    assert profile["emotion"]["emotion-id"] == f"{situation}_{disease}_{code}"  # id matches its parts

    assert re.fullmatch(r"Pro_\d{5}", profile["persona-id"])
    assert talk["id"]["profile-id"] == profile["persona-id"]
    assert re.fullmatch(re.escape(profile["persona-id"]) + r"_\d{5}", talk["id"]["talk-id"])

    content = talk["content"]
    assert all(isinstance(content[key], str) for key in schema.TURN_KEYS)
    assert all(content[key].strip() for key in ("HS01", "SS01", "HS02", "SS02"))  # no other empty turns
    assert bool(content["HS03"]) == bool(content["SS03"])  # a missing third pair is missing on both sides
    assert not re.search(r"[{}\[\]|/]", "".join(content.values()))  # no unrendered template markup


def test_every_record_has_the_schema(train, validation):
    for record in train + validation:
        _check_record(record)


def test_split_sizes(train, validation):
    assert len(train) == sc.DEFAULT_TRAIN >= MIN_TRAIN
    assert len(validation) == sc.DEFAULT_VALIDATION >= MIN_VALIDATION


def test_talk_ids_unique_across_both_files(train, validation):
    ids = [r["talk"]["id"]["talk-id"] for r in train + validation]
    assert len(ids) == len(set(ids))


def test_validation_profiles_follow_training_profiles(train, validation):
    assert {r["profile"]["persona-id"] for r in train}.isdisjoint(r["profile"]["persona-id"] for r in validation)


# === Coverage ===
def test_training_covers_every_emotion_group_and_most_situations(train):
    groups = Counter(schema.emotion_group(r["profile"]["emotion"]["type"]) for r in train)
    situations = {r["profile"]["emotion"]["situation"][0] for r in train}
    assert set(groups) == set(schema.EMOTION_GROUPS)
    assert len(situations) >= MIN_SITUATIONS


def test_every_situation_appears_at_full_size(phrases):
    dialogues = sc.generate_dialogues(SCALE_N, sc.DEFAULT_SEED, phrases)
    assert {r["profile"]["emotion"]["situation"][0] for r in dialogues} == set(schema.SITUATION_CODES)
    assert {r["profile"]["emotion"]["situation"][1] for r in dialogues} == set(schema.DISEASE_CODES)
    assert {r["profile"]["persona"]["human"][0] for r in dialogues} == set(schema.AGE_CODES)


def test_both_two_and_three_turn_dialogues(train):
    three = sum(1 for r in train if r["talk"]["content"]["HS03"])
    assert 0 < three < len(train)
    assert 0.3 < three / len(train) < 0.5  # roughly THREE_TURN_RATE


def test_some_utterances_keep_a_trailing_space(train):
    utterances = [u for r in train for u in r["talk"]["content"].values() if u]
    share = sum(u.endswith(" ") for u in utterances) / len(utterances)
    assert 0.02 < share < 0.1  # roughly TRAILING_SPACE_RATE


# === Variety ===
def test_first_utterances_are_nearly_all_distinct(train):
    firsts = [r["talk"]["content"]["HS01"] for r in train]
    assert len(set(firsts)) >= MIN_DISTINCT_HS01_SHARE * len(firsts)


def test_training_has_thousands_of_distinct_tokens(train):
    tokens = {t for r in train for u in r["talk"]["content"].values() for t in u.split()}
    assert len(tokens) >= MIN_DISTINCT_TOKENS


# === Phrase banks ===
def test_every_situation_has_an_event_for_every_emotion_group(phrases):
    for situation in schema.SITUATION_CODES:
        for group in schema.EMOTION_GROUPS:
            assert sc._candidates(phrases.events[situation], group, "A02"), (situation, group)


def test_every_age_finds_a_fitting_event_where_its_situations_are_drawn(phrases):
    for age, weights in sc.SITUATION_WEIGHTS.items():
        for situation in (s for s, w in weights.items() if w):
            for group in schema.EMOTION_GROUPS:
                events = sc._candidates(phrases.events[situation], group, age)
                assert all(not e.ages or age in e.ages for e in events), (age, situation, group)


def test_event_causes_are_clauses_that_a_feeling_can_follow(phrases):
    for events in phrases.events.values():
        for event in events:
            assert event.cause.endswith("서"), event.cause
            assert event.details and all(d.endswith((".", "?", "!")) for d in event.details)


def test_every_emotion_code_has_a_name_and_feelings(phrases):
    codes = [f"E{group}{fine}" for group in range(1, 7) for fine in range(10)]
    assert list(sc.EMOTION_NAMES) == codes
    assert set(phrases.feelings) == set(codes)


def test_listener_echo_turns_first_person_into_second_person(phrases):
    cause = "회사 동료가 내 아이디어를 자기 것처럼 발표해서"
    casual = sc._Dialogue(random.Random(0), phrases, "A02", "G01", polite=False)
    polite = sc._Dialogue(random.Random(0), phrases, "A02", "G01", polite=True)
    assert casual.echo(cause) == "회사 동료가 네 아이디어를 자기 것처럼 발표해서"
    assert polite.echo(cause) == "회사 동료가 아이디어를 자기 것처럼 발표해서"


def test_particles_follow_the_final_consonant(phrases):
    d = sc._Dialogue(random.Random(0), phrases, "A02", "G01", polite=False)
    assert d.text("동생이/가 강아지을/를 집으로/로 교실으로/로 선생님과/와") == "동생이 강아지를 집으로 교실로 선생님과"


def _strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict | list):
        for child in node.values() if isinstance(node, dict) else node:
            yield from _strings(child)


def test_every_slot_a_phrase_names_is_filled_for_every_persona(phrases):
    raw = yaml.safe_load(sc.PHRASES_FILE.read_text(encoding="utf-8"))
    named = {name for text in _strings(raw) for name in re.findall(r"\{(\w+)\}", text)}
    assert named  # the banks do use slots
    for persona, slots in phrases.slots.items():
        assert named <= set(slots), (persona, named - set(slots))  # a typo in a {slot} would fail mid-run


# === Scale ===
def test_generation_scales_with_unique_talk_ids(phrases):
    dialogues = sc.generate_dialogues(SCALE_N, sc.DEFAULT_SEED, phrases)
    ids = [r["talk"]["id"]["talk-id"] for r in dialogues]
    assert len(dialogues) == SCALE_N and len(set(ids)) == SCALE_N


def test_cli_writes_requested_sizes(tmp_path):
    assert sc.main(["--out", str(tmp_path), "--train", "12", "--validation", "5", "--seed", "3"]) == 0
    train = json.loads((tmp_path / sc.TRAIN_FILE).read_text(encoding="utf-8"))
    validation = json.loads((tmp_path / sc.VALIDATION_FILE).read_text(encoding="utf-8"))
    assert (len(train), len(validation)) == (12, 5)
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write leaves no temp files
