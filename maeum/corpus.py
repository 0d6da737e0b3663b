"""The AI Hub 감성 대화 말뭉치 schema: its codes, reading its files, and flattening them to a table.

Reading is strict about bytes (UTF-8, a BOM is fine) and JSON, and says exactly where a file
is broken, because the real corpus is often re-saved by hand on Windows (CP949) before it
reaches a training machine.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

# === Codes of the corpus (code -> meaning; the situation names are this project's reading) ===
AGE_CODES = {"A01": "청소년", "A02": "청년", "A03": "중년", "A04": "노년"}
GENDER_CODES = {"G01": "남성", "G02": "여성"}
COMPUTER_CODES = {"C01": "상담 시스템"}
DISEASE_CODES = {"D01": "만성질환 있음", "D02": "만성질환 없음"}
SITUATION_CODES = {
    "S01": "가족관계", "S02": "학업/진로", "S03": "학교폭력/따돌림", "S04": "대인관계", "S05": "연애/결혼",
    "S06": "직장/업무", "S07": "재정/금전", "S08": "건강/질병", "S09": "이사/생활", "S10": "노후/은퇴",
    "S11": "반려동물", "S12": "취업/구직", "S13": "상실/이별",
}  # fmt: skip
# Group name -> (first, last) code; the first code of each group is the group itself.
EMOTION_GROUPS = {
    "분노": ("E10", "E19"),
    "슬픔": ("E20", "E29"),
    "불안": ("E30", "E39"),
    "상처": ("E40", "E49"),
    "당황": ("E50", "E59"),
    "기쁨": ("E60", "E69"),
}
EMOTION_TYPE_PATTERN = r"^E[1-6][0-9]$"
HUMAN_KEYS = ("HS01", "HS02", "HS03")
SYSTEM_KEYS = ("SS01", "SS02", "SS03")
TURN_KEYS = ("HS01", "SS01", "HS02", "SS02", "HS03", "SS03")

# Every key path a record must have; the validator reports the first missing one per record.
REQUIRED_PATHS = (
    ("profile", "persona-id"),
    ("profile", "persona", "persona-id"),
    ("profile", "persona", "human"),
    ("profile", "persona", "computer"),
    ("profile", "emotion", "emotion-id"),
    ("profile", "emotion", "type"),
    ("profile", "emotion", "situation"),
    ("talk", "id", "profile-id"),
    ("talk", "id", "talk-id"),
    *(("talk", "content", key) for key in TURN_KEYS),
)


def emotion_group(emotion_type: str) -> str | None:
    """The group name (분노 … 기쁨) of a code such as E31, or None outside E10–E69."""
    for name, (first, last) in EMOTION_GROUPS.items():
        if first <= emotion_type <= last and len(emotion_type) == len(first):
            return name
    return None


class CorpusFileError(ValueError):
    """A corpus file cannot be read as UTF-8 JSON holding a list of dialogues."""

    def __init__(self, path: Path, rule: str, message: str, line: int | None = None, column: int | None = None):
        where = f"{path}:{line}:{column}" if line is not None else str(path)
        super().__init__(f"{where}: {message} [rule: {rule}]")
        self.path, self.rule, self.detail, self.line, self.column = path, rule, message, line, column


def read_corpus_file(path: Path) -> list[Any]:
    """Reads one corpus file: UTF-8 with or without a BOM, a JSON list at the top level.

    Args:
        path: Training.json or Validation.json.

    Returns:
        The decoded list of records (not yet checked record by record).

    Raises:
        CorpusFileError: the file is missing, not UTF-8, not JSON, or not a list.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CorpusFileError(path, "file_exists", "file not found") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise CorpusFileError(path, "utf8_encoding", _encoding_hint(data, error)) from None
    try:
        records = json.loads(text)
    except json.JSONDecodeError as error:
        kind = "truncated JSON (file ends early)" if error.pos >= len(text.rstrip()) else "malformed JSON"
        raise CorpusFileError(path, "json_syntax", f"{kind}: {error.msg}", error.lineno, error.colno) from None
    if not isinstance(records, list):
        raise CorpusFileError(path, "top_level_list", f"expected a JSON list of dialogues, got {type(records).__name__}")
    return records


def _encoding_hint(data: bytes, error: UnicodeDecodeError) -> str:
    try:
        data.decode("cp949")
    except UnicodeDecodeError:
        return f"not UTF-8 (invalid byte at offset {error.start}); re-save the file as UTF-8"
    return f"not UTF-8: looks like CP949 (EUC-KR, invalid UTF-8 at byte {error.start}); re-save as UTF-8"


def get_path(record: Any, path: tuple[str, ...]) -> tuple[bool, Any]:
    """Follows `path` into nested dicts; returns (found, value)."""
    node = record
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return False, None
        node = node[key]
    return True, node


def talk_id_of(record: Any) -> str | None:
    found, value = get_path(record, ("talk", "id", "talk-id"))
    return value if found and isinstance(value, str) else None


def dialogue_row(record: dict, file: str, index: int) -> dict[str, Any]:
    """One flat row of a structurally complete record: ids, codes, the six utterances, derived checks."""
    profile, talk = record["profile"], record["talk"]
    human, computer = profile["persona"]["human"], profile["persona"]["computer"]
    situation = profile["emotion"]["situation"]
    age, gender = _item(human, 0), _item(human, 1)
    situation_code, disease = _item(situation, 0), _item(situation, 1)
    emotion_type = profile["emotion"]["type"]
    content = talk["content"]
    row = {
        "file": file,
        "record": index,
        "talk_id": talk["id"]["talk-id"],
        "profile_id": talk["id"]["profile-id"],
        "persona_id": profile["persona"]["persona-id"],
        "persona_id_expected": f"{age}_{gender}_{_item(computer, 0)}",
        "age": age,
        "gender": gender,
        "computer": _item(computer, 0),
        "emotion_id": profile["emotion"]["emotion-id"],
        "emotion_id_expected": f"{situation_code}_{disease}_{emotion_type}",
        "emotion_type": emotion_type,
        "situation": situation_code,
        "disease": disease,
    }
    for key in TURN_KEYS:
        value = content[key]
        row[key] = value if isinstance(value, str) else None
        # Presence as 0/1 lets Great Expectations compare turns pairwise (A >= B).
        row[f"has_{key}"] = int(isinstance(value, str) and value.strip() != "")
    return row


def _item(values: Any, position: int) -> Any:
    return values[position] if isinstance(values, list) and len(values) > position else None


def utterances(row: dict | pd.Series) -> list[tuple[str, str]]:
    """The non-empty turns of a dialogue in order, as (role, text) with role "user" or "model"."""
    turns = []
    for key in TURN_KEYS:
        text = row[key]
        if isinstance(text, str) and text.strip():
            turns.append(("user" if key.startswith("HS") else "model", text.strip()))
    return turns


def dialogues_frame(records: list[dict], file: str) -> pd.DataFrame:
    """Flattens structurally complete records of one file into a dialogue table."""
    return pd.DataFrame([dialogue_row(record, file, index) for index, record in enumerate(records)])


@dataclass(frozen=True)
class DataVersion:
    """Content hash of the raw corpus: the same bytes give the same version, as DVC's md5 does."""

    md5: str
    files: dict[str, str]


def data_version(paths: list[Path]) -> DataVersion:
    """MD5 of each raw file and one MD5 over (name, md5) pairs, sorted by name.

    Args:
        paths: the corpus files.

    Returns:
        The per-file hashes and the combined version.
    """
    files = {}
    for path in sorted(paths, key=lambda p: p.name):
        digest = hashlib.md5()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        files[path.name] = digest.hexdigest()
    combined = hashlib.md5("".join(f"{name}:{md5}\n" for name, md5 in files.items()).encode()).hexdigest()
    return DataVersion(md5=combined, files=files)
