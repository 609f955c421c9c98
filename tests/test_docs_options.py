"""The options table of the README and of docs/options.md is the one ``adafactor.options``
derives from the options' single definition."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from adafactor import Adafactor
from adafactor.options import DEFAULTS, OPTIONS, markdown_table

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("page", ["README.md", "docs/options.md"])
def test_the_options_table_is_the_one_derived_from_the_options(page):
    assert markdown_table() in (ROOT / page).read_text()


def test_the_constructor_takes_exactly_the_options_with_their_defaults():
    # Then the optimizer's own switches, which are not options of a group.
    *parameters, in_backward, accumulation = list(
        inspect.signature(Adafactor.__init__).parameters.values()
    )[2:]
    assert [p.name for p in parameters] == [o.name for o in OPTIONS]
    assert {p.name: p.default for p in parameters} == DEFAULTS
    assert (in_backward.name, in_backward.default) == ("step_in_backward", False)
    assert (accumulation.name, accumulation.default) == ("accumulation_steps", 1)


def test_the_docstring_documents_every_option():
    doc = Adafactor.__doc__ or ""
    for option in OPTIONS:
        assert f"    {option.name}: " in doc, option.name
