"""`sweeps schema`: the study file's JSON Schema, generated from the dataclasses that validate the
file. Every shipped example passes it, docs/study.schema.json is what `main` prints, and documents
the loader rejects for a key or a type the schema rejects too."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from sweeps.config.study_file import parse_config
from sweeps.errors import ConfigError
from sweeps.schema_cmd import main, study_schema
from tests.conftest import TINY, merged

REPO = Path(__file__).resolve().parents[1]
SCHEMA_FILE = REPO / "docs" / "study.schema.json"
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))
EDITOR_LINE = "# yaml-language-server: $schema=../docs/study.schema.json"


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = study_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_schema_file_is_what_main_prints(capsys):
    assert main([]) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed)["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert SCHEMA_FILE.read_text() == printed, (
        "docs/study.schema.json is stale: run `PYTHONPATH=. python -m sweeps.schema_cmd > docs/study.schema.json`")


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_example_passes_the_schema_and_names_it(example, validator):
    text = example.read_text()
    assert text.splitlines()[0] == EDITOR_LINE
    document = yaml.safe_load(text)
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(document)]
    assert errors == []


def test_the_schema_has_every_section_and_its_keys(validator):
    schema = validator.schema
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["study", "objective", "budget", "search"]
    study = schema["$defs"]["StudySection"]
    assert study["required"] == ["name", "metric", "n_trials"]
    assert study["properties"]["direction"] == {"enum": ["maximize", "minimize"], "default": "maximize"}
    assert study["properties"]["storage"] == {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None}
    batch = schema["$defs"]["SearchSection"]["properties"]["batch_size"]
    assert batch == {"anyOf": [{"$ref": "#/$defs/IntRange"}, {"type": "array", "items": {"type": "integer"}},
                               {"type": "integer"}]}
    assert "base_dir" not in schema["properties"]  # set by the loader, not a key of the file


def valid_document() -> dict:
    return merged(TINY, {"sampler": None, "early_stopping": {"patience": 3},
                         "objective": {"betas": [0.9, 0.99], "loader": {"workers": 0}},
                         "search": {"batch_size": {"low": 8, "high": 64, "power_of_two": True},
                                    "coupling": ["none", "sqrt"], "warmup_fraction": 0.1}})


def test_a_valid_document_passes_both(validator):
    document = valid_document()
    parse_config(copy.deepcopy(document))
    validator.validate(document)


@pytest.mark.parametrize(("change", "path"), [
    ({"study": {"storgae": "sqlite:///x.db"}}, "study"),  # unknown key
    ({"serach": {}}, ""),  # unknown section
    ({"search": {"batch_size": {"low": 8, "hihg": 64}}}, "search.batch_size"),  # unknown key of a range
    ({"sampler": {"name": "tps"}}, "sampler"),  # wrong enum
    ({"search": {"coupling": ["none", "cubic"]}}, "search.coupling"),  # wrong enum in a list
    ({"budget": {"unit": "steps"}}, "budget.unit"),  # wrong enum
    ({"study": {"n_trials": "many"}}, "study.n_trials"),  # wrong type
    ({"objective": {"compile": "yes"}}, "objective.compile"),  # wrong type
    ({"objective": {"betas": [0.9]}}, "objective.betas"),  # a pair
    ({"search": {"batch_size": None}}, "search.batch_size"),  # not nullable
])
def test_an_invalid_document_is_rejected_by_the_schema_and_the_loader(validator, change, path):
    document = merged(valid_document(), change)
    errors = list(validator.iter_errors(document))
    assert path in {".".join(map(str, e.absolute_path)) for e in errors}, [e.message for e in errors]
    with pytest.raises(ConfigError):
        parse_config(copy.deepcopy(document))


def test_a_required_key_left_out_is_rejected(validator):
    document = valid_document()
    del document["study"]["metric"]
    assert any("'metric' is a required property" in e.message for e in validator.iter_errors(document))
    with pytest.raises(ConfigError, match="study.metric: required key is missing"):
        parse_config(document)
