"""Each shared public dataset loads through its preset, unchanged on disk (skips without ../shared/data)."""

import pytest

from tunelab.config import DataConfig
from tunelab.data.presets import PRESETS, get_preset
from tunelab.data.read import read_records
from tunelab.data.records import ClassifyRecord, PreferenceRecord, SFTRecord, TextRecord
from tunelab.errors import DataError

pytestmark = pytest.mark.shared_data


def _read(shared_data, folder, preset, task, limit=None):
    return read_records(str(shared_data / folder), task, DataConfig(preset=preset, limit=limit))


def test_banking77(shared_data):
    result = _read(shared_data, "banking77", "banking77", "classify", limit=200)
    assert not result.errors and len(result.records) == 200
    first = result.records[0]
    assert isinstance(first, ClassifyRecord) and first.label == "card_arrival" and first.source.endswith("train.csv:2")


def test_snips_reads_every_intent_including_the_non_utf8_file(shared_data):
    result = _read(shared_data, "snips", "snips", "classify")
    assert not result.errors and len(result.records) == 13_784
    labels = {r.label for r in result.records}
    assert len(labels) == 7 and "PlayMusic" in labels
    play = [r for r in result.records if "Pop Punk Perfection" in r.text]
    assert play and "\ufffd" not in play[0].text and "\udced" not in play[0].text  # emoji repaired, not mangled


def test_hwu64(shared_data):
    result = _read(shared_data, "hwu64", "hwu64", "classify", limit=300)
    assert not result.errors and result.records[0].label == "alarm_query"
    assert result.records[0].text == "What alarms do I have set right now?"


def test_text_presets(shared_data):
    fdr = _read(shared_data, "fdr_speeches", "fdr_speeches", "text")
    assert len(fdr.records) == 39 and all(isinstance(r, TextRecord) for r in fdr.records)
    assert not any(r.text.startswith("President:") for r in fdr.records)
    shakespeare = _read(shared_data, "tinyshakespeare", "tinyshakespeare", "text")
    assert len(shakespeare.records) > 100 and shakespeare.records[0].text.startswith("First Citizen:")


def test_sft_presets(shared_data):
    scitldr = _read(shared_data, "scitldr/train.jsonl", "scitldr", "sft", limit=50)
    record = scitldr.records[0]
    assert isinstance(record, SFTRecord) and record.references and record.completion == record.references[0]
    dev = _read(shared_data, "scitldr/dev.jsonl", "scitldr", "sft", limit=50)
    assert any(len(r.references) > 1 for r in dev.records)  # the dev set's several references are all kept
    gsm8k = _read(shared_data, "gsm8k", "gsm8k", "sft", limit=20)
    assert "####" in gsm8k.records[0].completion and not gsm8k.errors
    self_instruct = _read(shared_data, "self_instruct", "self_instruct", "sft")
    assert len(self_instruct.records) >= 175 and not self_instruct.errors


def test_hh_rlhf(shared_data):
    result = _read(shared_data, "hh_rlhf_helpful", "hh_rlhf", "preference", limit=300)
    assert len(result.records) + len(result.errors) == 300
    record = result.records[0]
    assert isinstance(record, PreferenceRecord) and record.prompt[-1]["role"] == "user"
    # The few malformed pairs in the real file are reported with their line, never dropped silently.
    assert all(":" in error.source for error in result.errors)


def test_preset_task_mismatch_and_unknown():
    assert set(PRESETS) >= {"banking77", "snips", "hwu64", "fdr_speeches", "tinyshakespeare", "self_instruct", "scitldr", "gsm8k", "hh_rlhf"}
    with pytest.raises(DataError, match="unknown data preset"):
        get_preset("imagenet")
