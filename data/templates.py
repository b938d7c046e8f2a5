"""Flan-style templates: several phrasings of one task, one chosen per example by hash.

A template is a pair of `str.format` patterns over an example's fields, one for the
model's `inputs` and one for its `targets`. Which phrasing an example gets depends
only on its key, so it is the same on every run, in every shard and in every split.
"""

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from t5x_lite.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Template:
    inputs: str    # e.g. 'What is {a} + {b}?\n'
    targets: str   # e.g. '{answer}'

    def render(self, fields: Mapping[str, Any]) -> dict[str, str]:
        return {"inputs": self.inputs.format(**fields), "targets": self.targets.format(**fields)}


def as_templates(pairs: Sequence[Template | Sequence[str]]) -> tuple[Template, ...]:
    """Templates from Template objects or (inputs pattern, targets pattern) pairs (gin)."""
    templates = []
    for pair in pairs:
        if isinstance(pair, Template):
            templates.append(pair)
        elif isinstance(pair, Sequence) and not isinstance(pair, str) and len(pair) == 2:
            templates.append(Template(*pair))
        else:
            raise ConfigError(f"Bad template {pair!r}: give (inputs pattern, targets pattern) "
                              "pairs, e.g. ('Question: {input}\\n', '{target}').")
    if not templates:
        raise ConfigError("No templates given: give at least one (inputs, targets) pattern pair.")
    return tuple(templates)


def choose(templates: Sequence[Template], key: str) -> Template:
    """The template for the example with this key."""
    digest = hashlib.sha256(key.encode()).digest()
    return templates[int.from_bytes(digest[:8], "big") % len(templates)]


def render(templates: Sequence[Template], fields: Mapping[str, Any], key: str) -> dict[str, str]:
    """{'inputs': ..., 'targets': ...} of the example with these fields and key."""
    return choose(templates, key).render(fields)
