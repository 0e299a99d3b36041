"""Each console script names its missing pip extra instead of a ModuleNotFoundError."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from voicefleet_api import extras
from voicefleet_inference import cli as server_cli
from voicefleet_inference.router import cli as router_cli
from voicefleet_operator import cli as operator_cli

ABSENT = "voicefleet_no_such_module"


def test_installed_modules_are_not_reported() -> None:
    assert extras.missing_extra("voicefleet-server", "server", extras.SERVER_MODULES) is None
    assert extras.missing_extra("voicefleet-router", "router", extras.ROUTER_MODULES) is None
    assert extras.missing_extra("x", "operator", extras.OPERATOR_MODULES) is None


def test_a_missing_module_names_the_extra_and_the_pip_command() -> None:
    message = extras.missing_extra("voicefleet-server", "server", ("json", ABSENT))
    assert message is not None
    assert f"missing: {ABSENT}" in message
    assert "pip install 'voicefleet[server]'" in message


@pytest.mark.parametrize(
    ("main", "argv", "target", "attribute", "extra"),
    [
        (server_cli.main, [], extras, "SERVER_MODULES", "server"),
        (router_cli.main, [], extras, "ROUTER_MODULES", "router"),
        (operator_cli.main, ["-A"], operator_cli, "OPERATOR_MODULES", "operator"),
    ],
)
def test_each_script_exits_1_naming_its_extra(
    main: Callable[[list[str]], int],
    argv: list[str],
    target: object,
    attribute: str,
    extra: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(target, attribute, (ABSENT,))
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"'{extra}' extra is not installed" in err
    assert ABSENT in err
