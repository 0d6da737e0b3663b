"""The validation suite: the sample corpus passes; each broken fixture fails naming file, record and rule."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.validate import validate_files, write_reports

SUBSET = 12  # records per file in the fixtures: enough for every case, small enough to stay fast


def write_split(folder: Path, name: str, records, encoding: str = "utf-8") -> Path:
    path = folder / f"{name}.json"
    path.write_bytes(json.dumps(records, ensure_ascii=False, indent=2).encode(encoding))
    return path


@pytest.fixture
def corpus(sample_records, tmp_path):
    """A small valid copy of the sample corpus that each test may break."""
    return {name: copy.deepcopy(records[:SUBSET]) for name, records in sample_records.items()}


def run(tmp_path: Path, corpus: dict) -> list:
    paths = [write_split(tmp_path, name, records) for name, records in corpus.items()]
    report, _ = validate_files(paths)
    return report.failures


def talk_id(record: dict) -> str:
    return record["talk"]["id"]["talk-id"]


def only(failures, rule):
    matching = [f for f in failures if f.rule == rule]
    assert matching, f"expected a failure of rule {rule}, got {[f.describe() for f in failures]}"
    return matching


def test_sample_corpus_passes(sample_records, sample_dir):
    report, _ = validate_files([sample_dir / "Training.json", sample_dir / "Validation.json"])
    assert report.passed, [f.describe() for f in report.failures[:5]]
    assert report.to_json()["counts"]["dialogues_checked"] == sum(len(r) for r in sample_records.values())


def test_small_fixture_passes(tmp_path, corpus):
    assert run(tmp_path, corpus) == []


def test_utf8_with_bom_is_accepted(tmp_path, corpus):
    paths = [write_split(tmp_path, name, records, encoding="utf-8-sig") for name, records in corpus.items()]
    assert (tmp_path / "Training.json").read_bytes().startswith(b"\xef\xbb\xbf")
    report, _ = validate_files(paths)
    assert report.passed


def test_trailing_whitespace_in_utterances_is_accepted(tmp_path, corpus):
    corpus["Training"][0]["talk"]["content"]["HS01"] += "  "
    corpus["Training"][0]["talk"]["content"]["SS01"] += " "
    assert run(tmp_path, corpus) == []


def test_cp949_file_is_rejected_with_a_hint(tmp_path, corpus):
    write_split(tmp_path, "Training", corpus["Training"], encoding="cp949")
    report, _ = validate_files([tmp_path / "Training.json"])
    failure = only(report.failures, "utf8_encoding")[0]
    assert failure.file.endswith("Training.json")
    assert "CP949" in failure.message and "re-save as UTF-8" in failure.message


def test_malformed_json_names_line_and_column(tmp_path, corpus):
    path = write_split(tmp_path, "Training", corpus["Training"])
    lines = path.read_text(encoding="utf-8").splitlines()
    broken_line = next(i for i, line in enumerate(lines) if '"HS02"' in line)
    lines[broken_line] = lines[broken_line].rstrip(",")  # drop one comma
    path.write_text("\n".join(lines), encoding="utf-8")
    report, _ = validate_files([path])
    failure = only(report.failures, "json_syntax")[0]
    assert failure.line == broken_line + 2  # the next key is where the parser notices
    assert failure.column is not None
    assert f"Training.json:{failure.line}:{failure.column}" in failure.describe()


def test_truncated_json_is_reported_as_truncated(tmp_path, corpus):
    path = write_split(tmp_path, "Validation", corpus["Validation"])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    report, _ = validate_files([path])
    failure = only(report.failures, "json_syntax")[0]
    assert "truncated" in failure.message


@pytest.mark.parametrize(
    "key_path",
    [("profile", "emotion", "type"), ("profile", "persona"), ("talk", "content", "SS02"), ("talk", "id", "profile-id")],
)
def test_missing_key_names_the_record_and_key(tmp_path, corpus, key_path):
    record = corpus["Training"][3]
    node = record
    for key in key_path[:-1]:
        node = node[key]
    del node[key_path[-1]]
    failure = only(run(tmp_path, corpus), "required_key")[0]
    assert failure.talk_id == talk_id(record) and failure.record == 3
    assert ".".join(key_path) in failure.message


def test_missing_talk_id_names_the_list_index(tmp_path, corpus):
    del corpus["Validation"][5]["talk"]["id"]["talk-id"]
    failure = only(run(tmp_path, corpus), "required_key")[0]
    assert failure.talk_id is None and failure.record == 5
    assert "record 5" in failure.describe() and "Validation.json" in failure.describe()


def set_emotion(record: dict, emotion_type: str, emotion_id: str | None = None) -> None:
    emotion = record["profile"]["emotion"]
    emotion["type"] = emotion_type
    situation, disease = emotion["situation"]
    emotion["emotion-id"] = emotion_id or f"{situation}_{disease}_{emotion_type}"


@pytest.mark.parametrize("bad_type", ["E70", "E09", "E5", "X31"])
def test_emotion_type_outside_range(tmp_path, corpus, bad_type):
    set_emotion(corpus["Training"][2], bad_type)
    failure = only(run(tmp_path, corpus), "emotion_type_range")[0]
    assert failure.talk_id == talk_id(corpus["Training"][2])
    assert bad_type in failure.message


def test_emotion_type_inconsistent_with_emotion_id(tmp_path, corpus):
    record = corpus["Training"][4]
    situation, disease = record["profile"]["emotion"]["situation"]
    set_emotion(record, "E31", f"{situation}_{disease}_E32")
    failures = run(tmp_path, corpus)
    assert [f.rule for f in failures] == ["emotion_id_consistent"]
    assert failures[0].talk_id == talk_id(record)


@pytest.mark.parametrize(
    "field, position, bad_code, rule",
    [("human", 0, "A05", "age_code"), ("human", 1, "G03", "gender_code"), ("situation", 0, "S14", "situation_code"),
     ("situation", 1, "D03", "disease_code"), ("computer", 0, "C02", "computer_code")],
)  # fmt: skip
def test_unknown_codes(tmp_path, corpus, field, position, bad_code, rule):
    record = corpus["Validation"][1]
    profile = record["profile"]
    if field == "situation":
        profile["emotion"]["situation"][position] = bad_code
        set_emotion(record, profile["emotion"]["type"])  # keep emotion-id consistent: isolate the rule
    else:
        profile["persona"][field][position] = bad_code
        age, gender = profile["persona"]["human"]
        profile["persona"]["persona-id"] = f"{age}_{gender}_{profile['persona']['computer'][0]}"
    failures = run(tmp_path, corpus)
    assert [f.rule for f in failures] == [rule]
    assert failures[0].talk_id == talk_id(record) and failures[0].file.endswith("Validation.json")


@pytest.mark.parametrize("key, value", [("HS01", ""), ("SS01", "   "), ("HS01", "\t\n")])
def test_empty_or_blank_first_turn(tmp_path, corpus, key, value):
    corpus["Training"][6]["talk"]["content"][key] = value
    failures = only(run(tmp_path, corpus), "first_turn_nonempty")
    assert failures[0].talk_id == talk_id(corpus["Training"][6])


def three_turn_index(records) -> int:
    return next(i for i, r in enumerate(records) if r["talk"]["content"]["HS03"].strip())


def two_turn_index(records) -> int:
    return next(i for i, r in enumerate(records) if not r["talk"]["content"]["HS03"].strip())


def test_system_turn_without_human_turn(tmp_path, corpus):
    index = two_turn_index(corpus["Training"])
    corpus["Training"][index]["talk"]["content"]["SS03"] = "그랬구나."
    failure = only(run(tmp_path, corpus), "system_turn_has_human_turn")[0]
    assert failure.talk_id == talk_id(corpus["Training"][index]) and "SS03" in failure.message


def test_human_turn_without_system_reply(tmp_path, corpus):
    index = three_turn_index(corpus["Training"])
    corpus["Training"][index]["talk"]["content"]["SS03"] = ""
    failure = only(run(tmp_path, corpus), "human_turn_has_system_turn")[0]
    assert failure.talk_id == talk_id(corpus["Training"][index]) and "HS03" in failure.message


def test_third_turn_after_missing_second(tmp_path, corpus):
    index = three_turn_index(corpus["Training"])
    content = corpus["Training"][index]["talk"]["content"]
    content["HS02"] = content["SS02"] = ""
    failure = only(run(tmp_path, corpus), "turns_in_order")[0]
    assert failure.talk_id == talk_id(corpus["Training"][index])


def test_duplicate_talk_id_within_a_file(tmp_path, corpus):
    corpus["Training"][7]["talk"]["id"]["talk-id"] = talk_id(corpus["Training"][8])
    failures = only(run(tmp_path, corpus), "talk_id_unique")
    assert {f.record for f in failures} == {7, 8}
    assert all(f.talk_id == talk_id(corpus["Training"][8]) for f in failures)


def test_duplicate_talk_id_across_splits_names_both_files(tmp_path, corpus):
    leaked = copy.deepcopy(corpus["Training"][0])
    corpus["Validation"].append(leaked)
    failures = only(run(tmp_path, corpus), "talk_id_unique")
    assert {Path(f.file).name for f in failures} == {"Training.json", "Validation.json"}
    assert "Training.json record 0" in failures[0].message and f"Validation.json record {SUBSET}" in failures[0].message


def test_wrong_value_types_are_structural_failures(tmp_path, corpus):
    corpus["Training"][1]["talk"]["content"]["HS02"] = None
    corpus["Training"][2]["profile"]["persona"]["human"] = "A02"
    failures = run(tmp_path, corpus)
    assert {(f.rule, f.record) for f in failures} == {("utterance_is_text", 1), ("persona_codes", 2)}


def test_cli_fails_with_named_record_and_writes_reports(tmp_path, corpus):
    set_emotion(corpus["Training"][2], "E75")
    for name, records in corpus.items():
        write_split(tmp_path, name, records)
    (tmp_path / "params.yaml").write_text(f"data:\n  raw_dir: {tmp_path}\nvalidate:\n  reports_dir: {tmp_path / 'reports'}\n")
    done = subprocess.run([sys.executable, "-m", "tasks.validate", "--params", str(tmp_path / "params.yaml")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode != 0
    expected = f"Training.json: talk-id {talk_id(corpus['Training'][2])} (record 2)"
    assert expected in done.stderr and "[rule: emotion_type_range]" in done.stderr
    report = json.loads((tmp_path / "reports" / "report.json").read_text())
    assert report["status"] == "failed" and report["counts"]["failures_by_rule"]["emotion_type_range"] == 1
    assert (tmp_path / "reports" / "data_docs" / "index.html").exists()


def test_reports_replace_the_previous_ones_whole(tmp_path, corpus):
    paths = [write_split(tmp_path, name, records) for name, records in corpus.items()]
    reports = tmp_path / "reports"
    report, context = validate_files(paths)
    write_reports(report, context, reports)
    (reports / "stale.txt").write_text("from an older run")
    write_reports(report, context, reports)
    assert not (reports / "stale.txt").exists()
    assert json.loads((reports / "report.json").read_text())["status"] == "passed"


@pytest.mark.parametrize("empty", ["Training.json", "Validation.json"])
def test_an_empty_split_fails_naming_the_file_and_the_rule(empty, sample_dir, tmp_path):
    for name in ("Training.json", "Validation.json"):
        shutil.copy(sample_dir / name, tmp_path / name)
    (tmp_path / empty).write_text("[]", encoding="utf-8")
    report, _ = validate_files([tmp_path / "Training.json", tmp_path / "Validation.json"])
    assert not report.passed
    (failure,) = [f for f in report.failures if f.rule == "min_dialogues"]
    assert failure.file == str(tmp_path / empty) and "0 dialogue" in failure.describe()
    assert f"{tmp_path / empty}: holds 0 dialogue(s)" in failure.describe() and "[rule: min_dialogues]" in failure.describe()


def test_min_dialogues_is_a_validate_param(sample_dir, tmp_path):
    report, _ = validate_files([sample_dir / "Validation.json"], min_dialogues=10_000)
    assert [f.rule for f in report.failures] == ["min_dialogues"]

