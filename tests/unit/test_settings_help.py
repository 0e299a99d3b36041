"""Every component's ``--help`` says what each flag does (issue 19, defect 4).

The flags of the server, the router and the operator are generated from their pydantic
settings models by one helper (:mod:`voicefleet_api.flags`); the help of each flag must be
the field's own documentation, not only its variable and default. Before the shared helper,
``voicefleet-router --help`` showed ``[env $VOICEFLEET_ROUTER_MAX_ATTEMPTS; default: 3]`` and
nothing else for every flag (the field docstrings never reached it).
"""

from __future__ import annotations

import argparse
import re

import pytest
from pydantic import BaseModel, Field

from voicefleet_api.flags import UndocumentedFlag, add_flags, flag, given
from voicefleet_inference.router.settings import RouterSettings
from voicefleet_inference.router.settings import build_parser as router_parser
from voicefleet_inference.settings import Settings
from voicefleet_inference.settings import build_parser as server_parser
from voicefleet_operator.settings import OperatorConfig
from voicefleet_operator.settings import build_parser as operator_parser

SUFFIX = re.compile(r"\s*\[(env [^;]+; )?default: [^\]]*\]$")


def _helps(parser: argparse.ArgumentParser) -> dict[str, str]:
    """dest -> help of every option a settings field generated (not -h, not -A)."""
    return {
        action.dest: " ".join((action.help or "").split())
        for action in parser._actions
        if action.dest not in ("help", "all_namespaces")
    }


@pytest.mark.parametrize(
    ("parser", "model", "hidden"),
    [
        (router_parser(), RouterSettings, set()),
        (server_parser(cores=4), Settings, {"cores"}),
        (operator_parser(), OperatorConfig, set()),
    ],
    ids=["router", "server", "operator"],
)
def test_every_flag_says_what_it_does(
    parser: argparse.ArgumentParser, model: type[BaseModel], hidden: set[str]
) -> None:
    helps = _helps(parser)
    assert set(helps) == set(model.model_fields) - hidden  # one flag per field
    for dest, text in helps.items():
        assert SUFFIX.search(text), f"{dest}: no [env ...; default: ...] in {text!r}"
        own = SUFFIX.sub("", text).strip()
        assert len(own.split()) >= 2, f"{dest}: help says only {text!r}"


def test_router_help_is_the_field_docstring() -> None:
    text = router_parser().format_help()
    assert "Pods tried for one request before giving up" in " ".join(text.split())
    assert "$VOICEFLEET_ROUTER_MAX_ATTEMPTS" in text


def test_operator_help_keeps_env_names_and_defaults() -> None:
    text = " ".join(operator_parser().format_help().split())
    assert "[env $VOICEFLEET_OPERATOR_WORKERS; default: 32]" in text
    assert "[env $VOICEFLEET_OPERATOR_HEALTH_PORT; default: 8081]" in text
    assert "Threads running reconciles in parallel" in text


class _Undocumented(BaseModel):
    documented: int = Field(default=1, description="a documented field")
    bare: int = 2


def test_an_undocumented_field_cannot_become_a_flag() -> None:
    with pytest.raises(UndocumentedFlag, match="'bare'"):
        add_flags(argparse.ArgumentParser(), _Undocumented, env_names=lambda _: ())


class _Shapes(BaseModel):
    names: list[str] = Field(
        default_factory=list, description="names", json_schema_extra=flag("-N", kind="repeat")
    )
    loud: bool = Field(default=False, description="be loud", json_schema_extra=flag(kind="switch"))
    ratio: float = Field(default=0.5, description="a ratio")


def test_unset_flags_stay_absent_so_env_and_defaults_decide() -> None:
    parser = argparse.ArgumentParser()
    add_flags(parser, _Shapes, env_names=lambda f: (f"X_{f.upper()}",))
    assert given(parser.parse_args([])) == {}
    assert given(parser.parse_args(["-N", "a", "-N", "b", "--loud", "--ratio", "2"])) == {
        "names": ["a", "b"],
        "loud": True,
        "ratio": "2",
    }
    assert "[env $X_RATIO; default: 0.5]" in " ".join(parser.format_help().split())
