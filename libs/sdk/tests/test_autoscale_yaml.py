"""The autoscale YAML form (docs/autoscale.md): every bad input is a one-line error that
names the field (a SluiceError, which the CLI prints without a traceback, before any call:
nothing is stored), and `enabled: "false"` means false."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from sluice.sdk.autoscale import load_setting
from sluice.sdk.cli import main
from sluice.sdk.client import SluiceError

RESOURCE = (
    "/subscriptions/s/resourceGroups/r/providers/Microsoft.MachineLearningServices/"
    "workspaces/w/onlineEndpoints/shop/deployments/blue"
)


def setting_yaml(
    profile: str = "  - name: default\n    capacity: {default: 2}\n", **top: str
) -> str:
    head = "".join(f"{k}: {v}\n" for k, v in top.items())
    return f"name: x\nresource: {RESOURCE}\n{head}profiles:\n{profile}"


def load(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "autoscale.yml"
    path.write_text(text)
    return load_setting(path)


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        (
            "  - name: default\n    capacity: {minimum: one, default: 2, maximum: 5}\n",
            r"profiles\[0\]\.capacity\.minimum 'one' is not a whole number",
        ),
        (
            "  - name: default\n    capacity: {default: 1.5}\n",
            r"profiles\[0\]\.capacity\.default 1\.5 is not a whole number",
        ),
        (
            "  - name: default\n    capacity: {maximum: true}\n",
            r"profiles\[0\]\.capacity\.maximum True is not a whole number",
        ),
        (
            "  - name: default\n    capacity: [1, 2, 5]\n",
            r"profiles\[0\]\.capacity must be a mapping",
        ),
        (
            "  - name: weekend\n    capacity: {default: 2}\n    recurrence: [sat, sun]\n",
            r"profiles\[0\]\.recurrence must be a mapping, e\.g\. \{days: \[sat, sun\]",
        ),
        (
            "  - name: weekend\n    capacity: {default: 2}\n    recurrence: {days: []}\n",
            r"profiles\[0\]\.recurrence\.days must list days, e\.g\. \[sat, sun\]",
        ),
        (
            "  - name: weekend\n    capacity: {default: 2}\n    recurrence: {days: {sat: 1}}\n",
            r"profiles\[0\]\.recurrence\.days must be a list",
        ),
        (
            "  - name: weekend\n    capacity: {default: 2}\n    recurrence: {day: [sat]}\n",
            r"profiles\[0\]\.recurrence: unknown field\(s\) day; allowed: days, end, start",
        ),
        (  # YAML reads an unquoted 10:30 as 630 (base 60)
            "  - name: w\n    capacity: {default: 2}\n"
            "    recurrence: {days: [sat], start: 10:30, end: '18:00'}\n",
            r'profiles\[0\]\.recurrence\.start 630 is not a time: quote it, e\.g\. "10:30"',
        ),
        (
            "  - name: launch\n    capacity: {default: 2}\n    fixed_date: 2026-12-01\n",
            r"profiles\[0\]\.fixed_date must be a mapping",
        ),
        (
            "  - name: launch\n    capacity: {default: 2}\n"
            "    fixed_date: {start: '2026-12-01T09:00'}\n",
            r"profiles\[0\]\.fixed_date needs both start and end",
        ),
        (
            "  - name: both\n    capacity: {default: 2}\n    recurrence: {days: [sat]}\n"
            "    fixed_date: {start: '2026-12-01T09:00', end: '2026-12-02T09:00'}\n",
            r"profiles\[0\]: a profile has a recurrence or a fixed_date, not both",
        ),
        (
            "  - name: default\n    capacity: {default: 2}\n    rules: {condition: x}\n",
            r"profiles\[0\]\.rules must be a list",
        ),
        (
            "  - name: default\n    capacity: {default: 2}\n    rules:\n"
            "      - {condition: RequestsPerMinute > 70 avg 5m, scale: out 1, cooldown: yes}\n",
            r"cooldown True is not a duration: minutes \(5\) or a period \(5m\)",
        ),
        (
            "  - name: default\n    capacity: {default: 2}\n    rules:\n"
            "      - {condition: RequestsPerMinute > 70 avg 5m, scale: out 1, resource: 5}\n",
            r"--resource '5' is not an online endpoint or deployment id",
        ),
        ("  - default\n", r"profiles\[0\] must be a mapping"),
    ],
)
def test_a_bad_profile_is_a_clear_error(tmp_path: Path, profile: str, message: str) -> None:
    with pytest.raises(SluiceError, match=message):
        load(tmp_path, setting_yaml(profile))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (setting_yaml(enabled='"no"'), r"enabled 'no' must be true or false"),
        (setting_yaml(enabled="1"), r"enabled 1 must be true or false"),
        (f"resource: {RESOURCE}\nprofiles: {{name: default}}\n", r"profiles must be a list"),
        ("profiles: []\n", r"resource \(the deployment's id\) is required"),
        ("- a\n- b\n", r"autoscale\.yml must be a mapping"),
        ("name: [unclosed\n", r"cannot read .*autoscale\.yml"),
    ],
)
def test_a_bad_setting_is_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(SluiceError, match=message):
        load(tmp_path, text)


def test_a_file_that_is_not_text_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "autoscale.yml"
    path.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(SluiceError, match=r"cannot read .*autoscale\.yml"):
        load_setting(path)


@pytest.mark.parametrize(
    ("written", "enabled"),
    [("false", False), ('"false"', False), ("'False'", False), ('"true"', True), ("true", True)],
)
def test_enabled_as_a_word_means_what_it_says(tmp_path: Path, written: str, enabled: bool) -> None:
    assert load(tmp_path, setting_yaml(enabled=written)).enabled is enabled


def test_the_good_forms_still_load(tmp_path: Path) -> None:
    setting = load(
        tmp_path,
        setting_yaml(
            "  - name: default\n    capacity: {minimum: '1', default: 2, maximum: 5}\n"
            "    rules:\n"
            "      - {condition: RequestsPerMinute > 70 avg 5m, scale: out 2, cooldown: 5m}\n"
            "  - name: weekend\n    capacity: {default: 2}\n    timezone: Pacific Standard Time\n"
            "    recurrence: {days: sat sun, start: '08:00', end: '18:00'}\n"
            "  - name: launch\n    capacity: {minimum: 4, maximum: 8}\n"
            "    fixed_date: {start: '2026-12-01T09:00', end: '2026-12-02T09:00'}\n"
        ),
    )
    default, weekend, launch = setting.profiles
    assert (default.min_count, default.default_count, default.max_count) == (1, 2, 5)
    assert default.rules[0].cooldown_s == 300
    assert list(weekend.recurrence.days) == ["sat", "sun"]
    assert (weekend.recurrence.start, weekend.recurrence.end) == ("08:00", "18:00")
    assert (launch.default_count, launch.fixed_date.start) == (4, "2026-12-01T09:00")


def test_a_rule_on_requests_per_instance(tmp_path: Path) -> None:
    """Azure's dividePerInstance, which az has no flag for: `divide_per_instance: true`."""
    rules = (
        "  - name: default\n    capacity: {minimum: 1, default: 2, maximum: 8}\n    rules:\n"
        "      - {condition: RequestsPerMinute > 300 avg 5m, scale: out 1, "
        "divide_per_instance: true}\n"
        "      - {condition: RequestsPerMinute < 100 avg 5m, scale: in 1}\n"
    )
    per_instance, total = load(tmp_path, setting_yaml(rules)).profiles[0].rules
    assert (per_instance.divide_per_instance, total.divide_per_instance) == (True, False)
    bad = rules.replace("divide_per_instance: true", "divide_per_instance: yes please")
    with pytest.raises(SluiceError, match=r"rules\[0\]\.divide_per_instance 'yes please' must be"):
        load(tmp_path, setting_yaml(bad))


def test_the_cli_prints_one_line_and_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "autoscale.yml"
    path.write_text(setting_yaml("  - name: default\n    capacity: {minimum: one}\n"))
    monkeypatch.setattr(sys, "argv", ["sluice", "monitor", "autoscale", "create", "-f", str(path)])
    with pytest.raises(SystemExit) as exited:
        main()  # refused before any call: no metrics service is needed
    assert exited.value.code == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "Traceback" not in err
    assert err.startswith("error:") and "capacity.minimum 'one' is not a whole number" in err
