"""The registry of GPTScore templates, aspects and demonstrations (one source of truth).

A *template* is a string with ``{context}`` and ending in ``{target}``: how a (context, target)
pair is shown to the scorer. An *aspect* is an instruction that goes first in the prefix and says
what a good target is. *Demonstrations* are example (source, reference, hypothesis) triples shown
after the instruction, each through the same template and in the same direction as the pair
being scored. The prefix is therefore::

    instruction \\n  demo_1 \\n  ...  demo_k \\n  template(context) target
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from gptscore_eval.records import DIRECTIONS

# GPTScore's template for reference-based scoring (the seed study's GPT-2 numbers use it).
DEFAULT_TEMPLATE = "{context} In other words , {target}"

TEMPLATES = {
    "paraphrase": DEFAULT_TEMPLATE,
    # Scoring an answer given the question (src -> hyp).
    "answer": "Question: {context}\nAnswer: {target}",
}

# Which template each direction uses when none is given.
DEFAULT_TEMPLATES = {"ref_hyp": "paraphrase", "hyp_ref": "paraphrase", "src_hyp": "answer"}


@dataclass(frozen=True)
class Aspect:
    name: str
    instruction: str  # "" for none
    task: str  # what outputs it was written for: "data-to-text", "qa" or "any"


_ASPECTS = (
    Aspect("plain", "", "any"),
    # The three data-to-text aspects of the seed study, as the GPTScore paper's code gives them to
    # GPT-2 and OPT scorers: its aspect definition with the final ':' turned into '. ' (so the
    # instruction line ends in ". "). Reproducing its numbers needs this exact text.
    Aspect("quality", "Convert the following text into another expression that is fluent and grammatically "
           "correct. ", "data-to-text"),
    Aspect("naturalness", "Convert the following text into another expression that is as natural as a native "
           "speaker. ", "data-to-text"),
    Aspect("informativeness", "Convert the following text into another expression that preserves key "
           "information. ", "data-to-text"),
    # Answers to questions, scored against a reference answer or the question (this project).
    Aspect("relevance", "Write an answer that stays relevant to the question and the reference answer.", "qa"),
    Aspect("consistency", "Write an answer whose facts agree with the reference answer.", "qa"),
    Aspect("fluency", "Write a fluent, grammatical answer.", "qa"),
    Aspect("coherence", "Write a coherent, well-organized answer in which each sentence follows from the last.", "qa"),
    Aspect("completeness", "Write an answer that covers all the information in the reference answer.", "qa"),
)
ASPECTS = {aspect.name: aspect for aspect in _ASPECTS}


def get_aspect(name: str | None) -> Aspect:
    """The aspect called ``name``; None means "plain" (no instruction)."""
    name = name or "plain"
    if name not in ASPECTS:
        raise ValueError(f"unknown aspect {name!r}; choose from {', '.join(ASPECTS)}")
    return ASPECTS[name]


def split_template(template: str) -> str:
    """The part of a template before ``{target}``, which must end it; ``{context}`` must be in it."""
    if not template.endswith("{target}") or "{context}" not in template:
        raise ValueError(f"a template needs {{context}} and must end with {{target}}: {template!r}")
    return template[: -len("{target}")]


def fill_template(head: str, context: str) -> str:
    """``head`` (a template's part before {target}) with the context in place."""
    # Replace rather than str.format: contexts may hold literal braces (code, JSON).
    return head.replace("{context}", context)


def resolve_template(name_or_text: str) -> str:
    """A registered template by name, or a template string (checked)."""
    if name_or_text in TEMPLATES:
        return TEMPLATES[name_or_text]
    if "{target}" not in name_or_text:
        raise ValueError(f"unknown template {name_or_text!r}; choose from {', '.join(TEMPLATES)} "
                         "or give one with {context} ... {target}")
    split_template(name_or_text)  # raises with the reason when it is malformed
    return name_or_text


def templates_for(directions, template: str | None) -> dict[str, str]:
    """The template of each direction: ``template`` for all, else each direction's default."""
    for direction in directions:
        if direction not in DIRECTIONS:
            raise ValueError(f"unknown direction {direction!r}; choose from {', '.join(DIRECTIONS)}")
    return {d: resolve_template(template or DEFAULT_TEMPLATES[d]) for d in directions}


@dataclass(frozen=True)
class Demo:
    """One demonstration: a good hypothesis for a reference (and optionally its source)."""

    reference: str
    hypothesis: str
    source: str | None = None

    def pair(self, direction: str) -> tuple[str, str] | None:
        """(context, target) in ``direction``; None when the demo lacks the source it needs."""
        if direction == "ref_hyp":
            return self.reference, self.hypothesis
        if direction == "hyp_ref":
            return self.hypothesis, self.reference
        return (self.source, self.hypothesis) if self.source else None


def load_demos(path: str | Path) -> list[Demo]:
    """Demonstrations from a JSON list of {"reference", "hypothesis", optional "source"}.

    ``path`` may also name a file shipped in ``gptscore_eval/resources`` ("qa" -> demos_qa.json).
    """
    shipped = resources.files("gptscore_eval") / "resources" / f"demos_{path}.json"
    source = shipped if shipped.is_file() else Path(path)
    try:
        items = json.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such demonstrations file") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON: {err.msg} at line {err.lineno}") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not valid UTF-8 (byte 0x{err.object[err.start]:02x} at offset {err.start})") from None
    if not isinstance(items, list):
        raise ValueError(f"{path}: expected a JSON list of demonstrations")
    demos = []
    for i, item in enumerate(items):
        texts = ("reference", "hypothesis")
        ok = isinstance(item, dict) and all(isinstance(item.get(k), str) and item[k].strip() for k in texts)
        if not ok or not isinstance(item.get("source", ""), str):
            raise ValueError(f"{path}: demonstration {i}: needs non-empty strings 'reference' and 'hypothesis' "
                             "(and 'source', if given, a string)")
        demos.append(Demo(item["reference"], item["hypothesis"], item.get("source") or None))
    return demos


def build_prefix(aspect: Aspect, demos: list[Demo], direction: str, template: str) -> str:
    """Instruction, then each demonstration shown like the pair being scored, one per line."""
    lines = [aspect.instruction] if aspect.instruction else []
    head = split_template(template)
    for demo in demos:
        pair = demo.pair(direction)
        if pair is not None:
            context, target = pair
            lines.append(fill_template(head, context) + target)
    return "".join(line + "\n" for line in lines)
