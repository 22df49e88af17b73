"""The registry of templates, aspects and demonstrations."""

import json

import pytest

from gptscore_eval.templates import (
    ASPECTS, DEFAULT_TEMPLATE, TEMPLATES, Demo, build_prefix, get_aspect, load_demos, resolve_template, templates_for,
)


def test_registry_has_the_seed_and_qa_aspects():
    data_to_text = {a.name for a in ASPECTS.values() if a.task == "data-to-text"}
    assert {"quality", "naturalness", "informativeness"} <= data_to_text
    assert {"relevance", "consistency", "fluency", "coherence", "completeness"} <= set(ASPECTS)
    assert get_aspect(None).instruction == "" and get_aspect("plain") is get_aspect(None)
    assert all(a.instruction for name, a in ASPECTS.items() if name != "plain")


def test_templates_by_name_or_string():
    assert resolve_template("paraphrase") == DEFAULT_TEMPLATE == "{context} In other words , {target}"
    assert resolve_template("{context} TL;DR {target}") == "{context} TL;DR {target}"
    defaults = templates_for(["ref_hyp", "src_hyp"], None)
    assert defaults == {"ref_hyp": TEMPLATES["paraphrase"], "src_hyp": TEMPLATES["answer"]}
    for bad, reason in [("nonsense", "unknown template"), ("{target} after {context}", "must end with"),
                        ("no context {target}", "needs {context}")]:
        with pytest.raises(ValueError, match=reason):
            resolve_template(bad)


def test_shipped_and_user_demonstrations(tmp_path):
    shipped = load_demos("qa")
    assert len(shipped) >= 3 and all(d.source and d.reference and d.hypothesis for d in shipped)
    path = tmp_path / "demos.json"
    path.write_text(json.dumps([{"reference": "R.", "hypothesis": "H."}]))
    assert load_demos(path) == [Demo("R.", "H.")]
    bad_files = [('[{"reference": "R"}]', "demonstration 0"), ("{oops", "invalid JSON"), ("{}", "JSON list")]
    for content, reason in bad_files:
        path.write_text(content)
        with pytest.raises(ValueError, match=reason):
            load_demos(path)
    with pytest.raises(ValueError, match="no such demonstrations file"):
        load_demos(tmp_path / "none.json")
    path.write_bytes(b'[{"reference": "a\xff", "hypothesis": "b"}]')
    with pytest.raises(ValueError, match=r"demos.json: not valid UTF-8 \(byte 0xff at offset 17\)"):
        load_demos(path)


def test_prefix_shows_demos_in_the_scored_direction():
    demos = [Demo("Ref {x}.", "Hyp.", "Q?"), Demo("Ref2.", "Hyp2.")]
    aspect = get_aspect("consistency")
    assert build_prefix(aspect, demos, "ref_hyp", DEFAULT_TEMPLATE) == (
        f"{aspect.instruction}\nRef {{x}}. In other words , Hyp.\nRef2. In other words , Hyp2.\n"
    )
    assert build_prefix(get_aspect("plain"), demos, "hyp_ref", DEFAULT_TEMPLATE) == (
        "Hyp. In other words , Ref {x}.\nHyp2. In other words , Ref2.\n"
    )
    # src_hyp needs a source: the demo without one is left out.
    assert build_prefix(get_aspect("plain"), demos, "src_hyp", TEMPLATES["answer"]) == "Question: Q?\nAnswer: Hyp.\n"
    assert build_prefix(get_aspect("plain"), [], "ref_hyp", DEFAULT_TEMPLATE) == ""


def test_data_to_text_prefix_is_gptscore_s_for_gpt2():
    """The seed study's GPT-2 numbers come from GPTScore's code, which builds the ref->hyp input
    for GPT-2 as: aspect definition (stripped, ':' -> '. '), newline, the demonstrations through
    "X In other words , Y" one per line, newline, then the pair. Rebuilt here from its recipe."""
    definitions = {  # GPTScore's data-to-text aspect definitions, as published
        "informativeness": "Convert the following text into another expression that preserves key information:",
        "naturalness": "Convert the following text into another expression that is as natural as a native speaker:",
        "quality": "Convert the following text into another expression that is fluent and grammatically correct:",
    }
    demos = [Demo(reference="A la turca is cheap .", hypothesis="A la turca , is cheap ."),
             Demo(reference="It allows dogs .", hypothesis="dogs are allowed .")]
    ref, hyp = "The inn has internet .", "the inn does have internet ."
    for name, definition in definitions.items():
        upstream = (definition.strip().replace(":", ". ") + "\n"
                    + "\n".join(f"{d.reference} In other words , {d.hypothesis}" for d in demos) + "\n"
                    + ref + " In other words , " + hyp)
        ours = build_prefix(get_aspect(name), demos, "ref_hyp", DEFAULT_TEMPLATE) + DEFAULT_TEMPLATE.format(
            context=ref, target=hyp)
        assert ours == upstream, name
