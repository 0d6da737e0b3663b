"""validate stage: reject a broken corpus before any GPU time is spent on it.

Two layers: structural checks that Great Expectations cannot express on a table (bytes, JSON,
nested keys, value types), then a Great Expectations suite over a flat table of dialogues for
everything that is a property of a column. Every failure names the file, the record (talk-id,
or the list index where there is none) and the rule it broke.

    python -m tasks.validate [--params params.yaml]
"""

from __future__ import annotations

import logging
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from maeum import atomic
from maeum.config import Params
from maeum.runtime import stage_params
from maeum.corpus import (
    AGE_CODES,
    COMPUTER_CODES,
    DISEASE_CODES,
    EMOTION_TYPE_PATTERN,
    GENDER_CODES,
    HUMAN_KEYS,
    REQUIRED_PATHS,
    SITUATION_CODES,
    SYSTEM_KEYS,
    TURN_KEYS,
    CorpusFileError,
    data_version,
    dialogue_row,
    get_path,
    read_corpus_file,
    talk_id_of,
)

log = logging.getLogger(__name__)

SUITE_NAME = "aihub_empathetic_dialogue"
DATA_DOCS_SITE = "maeum_validate"  # the ephemeral context already owns "local_site"
INDEX_COLUMNS = ["file", "record", "talk_id"]
MAX_PRINTED_FAILURES = 20


@dataclass(frozen=True)
class Failure:
    file: str
    rule: str
    message: str
    record: int | None = None
    talk_id: str | None = None
    line: int | None = None
    column: int | None = None
    evidence: Any = None

    def describe(self) -> str:
        if self.line is not None:
            where = f"{self.file}:{self.line}:{self.column}"
        elif self.talk_id is not None:
            where = f"{self.file}: talk-id {self.talk_id} (record {self.record})"
        elif self.record is not None:
            where = f"{self.file}: record {self.record}"
        else:
            where = self.file
        return f"{where}: {self.message} [rule: {self.rule}]"


@dataclass
class ValidationReport:
    data_version: str
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    expectations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        by_rule: dict[str, int] = {}
        for failure in self.failures:
            by_rule[failure.rule] = by_rule.get(failure.rule, 0) + 1
        return {
            "status": "passed" if self.passed else "failed",
            "data_version": self.data_version,
            "files": self.files,
            "counts": {
                "records": sum(f["records"] for f in self.files.values()),
                "dialogues_checked": sum(f["dialogues_checked"] for f in self.files.values()),
                "failures": len(self.failures),
                "failures_by_rule": by_rule,
            },
            "failures": [{k: v for k, v in asdict(f).items() if v is not None} for f in self.failures],
            "expectations": self.expectations,
        }


# === Structural checks (what a flat table cannot show) ===


def check_structure(records: list[Any], file: str) -> tuple[list[dict], list[Failure]]:
    """Checks every record's keys and value types; flattens the sound ones.

    Args:
        records: the decoded list from one corpus file.
        file: the file name used in messages.

    Returns:
        The flat rows of structurally sound records, and one failure per unsound record.
    """
    rows, failures = [], []
    for index, record in enumerate(records):
        problem = _structural_problem(record)
        if problem is None:
            rows.append(dialogue_row(record, file, index))
        else:
            rule, message = problem
            failures.append(Failure(file=file, record=index, talk_id=talk_id_of(record), rule=rule, message=message))
    return rows, failures


def _structural_problem(record: Any) -> tuple[str, str] | None:
    if not isinstance(record, dict):
        return "record_is_object", f"a dialogue must be a JSON object, got {type(record).__name__}"
    for path in REQUIRED_PATHS:
        found, _ = get_path(record, path)
        if not found:
            return "required_key", f"missing key {'.'.join(path)}"
    persona, emotion = record["profile"]["persona"], record["profile"]["emotion"]
    if not _is_str_list(persona["human"], 2):
        return "persona_codes", f"profile.persona.human must be [age, gender], got {persona['human']!r}"
    if not _is_str_list(persona["computer"], 1):
        return "persona_codes", f"profile.persona.computer must be [computer code], got {persona['computer']!r}"
    if not _is_str_list(emotion["situation"], 2):
        return "emotion_codes", f"profile.emotion.situation must be [situation, disease], got {emotion['situation']!r}"
    for path in (("talk", "id", "talk-id"), ("talk", "id", "profile-id"), ("profile", "emotion", "type")):
        _, value = get_path(record, path)
        if not isinstance(value, str) or not value.strip():
            return "id_is_text", f"{'.'.join(path)} must be a non-empty string, got {value!r}"
    for key in TURN_KEYS:
        value = record["talk"]["content"][key]
        if not isinstance(value, str):
            return "utterance_is_text", f"talk.content.{key} must be a string (\"\" when absent), got {value!r}"
    return None


def _is_str_list(value: Any, length: int) -> bool:
    return isinstance(value, list) and len(value) == length and all(isinstance(v, str) for v in value)


# === Great Expectations suite over the dialogue table ===


def build_suite(gx: Any) -> Any:
    """The expectation suite; each expectation's `meta.rule` is the rule id reported on failure."""
    import great_expectations.expectations as gxe

    def rule(name: str, description: str) -> dict[str, str]:
        return {"rule": name, "description": description}

    expectations = [
        gxe.ExpectColumnValuesToNotBeNull(column="talk_id", meta=rule("talk_id_present", "every dialogue has a talk-id")),
        gxe.ExpectColumnValuesToBeUnique(column="talk_id", meta=rule("talk_id_unique", "no duplicate talk-id within or across splits (leakage)")),  # fmt: skip
        gxe.ExpectColumnValuesToMatchRegex(column="emotion_type", regex=EMOTION_TYPE_PATTERN, meta=rule("emotion_type_range", "emotion type within E10-E69")),  # fmt: skip
        gxe.ExpectColumnPairValuesToBeEqual(column_A="emotion_id", column_B="emotion_id_expected", meta=rule("emotion_id_consistent", "emotion-id equals <situation>_<disease>_<type>")),  # fmt: skip
        gxe.ExpectColumnPairValuesToBeEqual(column_A="persona_id", column_B="persona_id_expected", meta=rule("persona_id_consistent", "persona-id equals <age>_<gender>_<computer>")),  # fmt: skip
        gxe.ExpectColumnValuesToBeInSet(column="age", value_set=list(AGE_CODES), meta=rule("age_code", "age code A01-A04")),
        gxe.ExpectColumnValuesToBeInSet(column="gender", value_set=list(GENDER_CODES), meta=rule("gender_code", "gender code G01-G02")),
        gxe.ExpectColumnValuesToBeInSet(column="computer", value_set=list(COMPUTER_CODES), meta=rule("computer_code", "computer code C01")),
        gxe.ExpectColumnValuesToBeInSet(column="situation", value_set=list(SITUATION_CODES), meta=rule("situation_code", "situation code S01-S13")),
        gxe.ExpectColumnValuesToBeInSet(column="disease", value_set=list(DISEASE_CODES), meta=rule("disease_code", "disease code D01-D02")),
        gxe.ExpectColumnValuesToBeInSet(column="has_HS01", value_set=[1], meta=rule("first_turn_nonempty", "HS01 is not empty or whitespace")),
        gxe.ExpectColumnValuesToBeInSet(column="has_SS01", value_set=[1], meta=rule("first_turn_nonempty", "SS01 is not empty or whitespace")),
    ]
    for human, system in zip(HUMAN_KEYS, SYSTEM_KEYS):
        expectations += [
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A=f"has_{human}", column_B=f"has_{system}", or_equal=True, meta=rule("system_turn_has_human_turn", f"{system} present only after a non-empty {human}")),  # fmt: skip
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A=f"has_{system}", column_B=f"has_{human}", or_equal=True, meta=rule("human_turn_has_system_turn", f"{human} present only with a non-empty {system} reply")),  # fmt: skip
        ]
    for earlier, later in zip(HUMAN_KEYS, HUMAN_KEYS[1:]):
        expectations.append(
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A=f"has_{earlier}", column_B=f"has_{later}", or_equal=True, meta=rule("turns_in_order", f"{later} present only after {earlier}")),  # fmt: skip
        )
    return gx.ExpectationSuite(name=SUITE_NAME, expectations=expectations)


def run_expectations(table: pd.DataFrame) -> tuple[list[Failure], list[dict[str, Any]], Any]:
    """Runs the suite over the dialogue table of all files together (so duplicates across splits show).

    Args:
        table: rows from `check_structure` for every file.

    Returns:
        The failures (one per offending row and rule), a summary per expectation, and the GX
        context holding the result (for Data Docs).
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = context.data_sources.add_pandas("corpus").add_dataframe_asset("dialogues").add_batch_definition_whole_dataframe("all")
    suite = context.suites.add(build_suite(gx))
    definition = context.validation_definitions.add(gx.ValidationDefinition(name="corpus", data=batch, suite=suite))
    result = definition.run(
        batch_parameters={"dataframe": table},
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": INDEX_COLUMNS},
    )
    failures, summary = [], []
    for outcome in result.results:
        config = outcome.expectation_config
        rule, description = config.meta["rule"], config.meta["description"]
        summary.append({"rule": rule, "expectation": config.type, "kwargs": _plain(config.kwargs), "success": outcome.success,
                        "unexpected_count": outcome.result.get("unexpected_count", 0)})  # fmt: skip
        for row in outcome.result.get("unexpected_index_list") or []:
            evidence = {k: v for k, v in row.items() if k not in INDEX_COLUMNS}
            failures.append(Failure(file=row["file"], record=int(row["record"]), talk_id=row.get("talk_id"), rule=rule,
                                    message=f"{description} (found {_plain(evidence)})", evidence=_plain(evidence)))  # fmt: skip
    return _explain_duplicates(failures, table), summary, context


def _explain_duplicates(failures: list[Failure], table: pd.DataFrame) -> list[Failure]:
    """Rewrites duplicate-talk-id failures to say where the other copies are."""
    explained = []
    for failure in failures:
        if failure.rule == "talk_id_unique":
            copies = table[table["talk_id"] == failure.talk_id]
            places = ", ".join(f"{f} record {r}" for f, r in zip(copies["file"], copies["record"]))
            failure = Failure(file=failure.file, record=failure.record, talk_id=failure.talk_id, rule=failure.rule,
                              message=f"talk-id appears {len(copies)} times ({places}); duplicates leak between splits",
                              evidence={"copies": places})  # fmt: skip
        explained.append(failure)
    return explained


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


MIN_DIALOGUES_RULE = "min_dialogues"


def validate_files(paths: list[Path], min_dialogues: int = 1) -> tuple[ValidationReport, Any]:
    """Reads and checks corpus files. A file that cannot be read is reported and skipped.

    Args:
        paths: Training.json, Validation.json (any number of files).
        min_dialogues: a file holding fewer dialogues fails (`validate.min_dialogues`): an empty
            split would otherwise pass here and break a later stage, or train on nothing.

    Returns:
        The report and the GX context of the table checks (None if no file could be read).
    """
    existing = [p for p in paths if p.exists()]
    report = ValidationReport(data_version=data_version(existing).md5 if existing else "")
    rows: list[dict] = []
    for path in paths:
        try:
            records = read_corpus_file(path)
        except CorpusFileError as error:
            report.failures.append(Failure(file=str(path), rule=error.rule, message=error.detail, line=error.line, column=error.column))
            report.files[str(path)] = {"records": 0, "dialogues_checked": 0, "readable": False}
            continue
        file_rows, failures = check_structure(records, str(path))
        rows += file_rows
        report.failures += failures
        if len(records) < min_dialogues:
            report.failures.append(Failure(file=str(path), rule=MIN_DIALOGUES_RULE,
                                           message=f"holds {len(records)} dialogue(s); every split needs at least {min_dialogues}"))  # fmt: skip
        report.files[str(path)] = {"records": len(records), "dialogues_checked": len(file_rows), "readable": True}
    context = None
    if rows:
        table_failures, report.expectations, context = run_expectations(pd.DataFrame(rows))
        report.failures += table_failures
    return report, context


# === Edge: files, Data Docs, exit status ===


def write_reports(report: ValidationReport, context: Any, reports_dir: Path) -> Path:
    """Writes report.json and the GX Data Docs into `reports_dir`, replacing it as a whole."""
    with atomic.atomic_dir(reports_dir) as staging:
        atomic.write_json(staging / "report.json", report.to_json())
        if context is not None:
            docs = staging / "data_docs"
            site_config = {
                "class_name": "SiteBuilder",
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs.resolve())},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            }
            if DATA_DOCS_SITE in context.get_site_names():  # a context reused for a second write
                context.update_data_docs_site(site_name=DATA_DOCS_SITE, site_config=site_config)
            else:
                context.add_data_docs_site(site_name=DATA_DOCS_SITE, site_config=site_config)
            context.build_data_docs(site_names=[DATA_DOCS_SITE])
    return reports_dir / "report.json"


class ValidationFailed(RuntimeError):
    """The corpus broke at least one rule; the message lists the first failures."""

    def __init__(self, report: ValidationReport, report_path: Path):
        lines = [failure.describe() for failure in report.failures[:MAX_PRINTED_FAILURES]]
        hidden = len(report.failures) - len(lines)
        if hidden > 0:
            lines.append(f"... and {hidden} more failures")
        lines.append(f"validate: FAILED with {len(report.failures)} failure(s); full report in {report_path}")
        super().__init__("\n".join(lines))
        self.report, self.report_path = report, report_path


def run(params: Params) -> dict[str, Any]:
    """The stage: validate both splits, write the reports, raise `ValidationFailed` on any failure.

    Returns:
        The report as JSON (status, data version, counts).
    """
    report, context = validate_files(list(params.data.split_paths.values()), params.validate.min_dialogues)
    report_path = write_reports(report, context, params.validate.reports_dir)
    if not report.passed:
        raise ValidationFailed(report, report_path)
    summary = report.to_json()
    log.info("validate: %d dialogues passed (%s)", summary["counts"]["dialogues_checked"], report_path)
    return summary


def main(argv: list[str] | None = None) -> int:
    params = stage_params(__doc__, argv)
    try:
        run(params)
    except ValidationFailed as failed:
        print(failed, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
