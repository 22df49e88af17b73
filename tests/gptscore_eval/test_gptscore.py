"""gptscore(): the F formulas on hand-computed values, and directions/references plumbing
(with a stub scorer whose scores are known, so no model is needed)."""

import math

import pytest

from gptscore_eval import gptscore
from gptscore_eval.gptscore import avg_f, legacy_harm_f, prob_hm_f
from gptscore_eval.scorer import TargetScore


def test_f_formulas_on_hand_computed_values():
    rh, hr = -1.0, -3.0
    assert avg_f(rh, hr) == -2.0
    assert legacy_harm_f(rh, hr) == pytest.approx(3 / -4)  # -0.75: above BOTH directions
    assert prob_hm_f(rh, hr) == pytest.approx(math.log(2 * math.exp(-4) / (math.exp(-1) + math.exp(-3))), abs=1e-12)
    assert hr < prob_hm_f(rh, hr) < rh  # a true F: between, pulled towards the worse direction
    assert prob_hm_f(rh, hr) < avg_f(rh, hr)


def test_f_formulas_edge_cases():
    assert prob_hm_f(-2.5, -2.5) == pytest.approx(-2.5, abs=1e-12)  # equal directions: the value itself
    assert legacy_harm_f(0.0, 0.0) == 0.0
    # Very negative log-probabilities: exp() underflows, the log-space form does not.
    assert prob_hm_f(-2000.0, -2001.0) == pytest.approx(math.log(2) - 4001 + 2000 - math.log1p(math.exp(-1)), abs=1e-9)
    assert math.isfinite(prob_hm_f(-1e6, -1.0))


class StubScorer:
    """Score = -(number of words of the target) - (1 if the context is 'bad'); records calls."""

    name = "stub"

    def __init__(self):
        self.calls = []

    def score(self, contexts, targets, *, template, prefix):
        self.calls.append((list(contexts), list(targets), template, prefix))
        return [
            TargetScore(-len(t.split()) - (c == "bad"), -(len(t.split()) + (c == "bad")) * 2.0, 2, c == "long")
            for c, t in zip(contexts, targets)
        ]


def test_directions_and_f_per_sample():
    stub = StubScorer()
    [result] = gptscore(["one two"], ["a b c"], scorer=stub)
    assert result["ref_hyp"] == {"mean": -2, "sum": -4.0, "count": 2, "truncated": False}
    assert result["hyp_ref"]["mean"] == -3
    assert result["avg_f"] == avg_f(-2, -3) and result["prob_hm_f"] == prob_hm_f(-2, -3)
    assert result["legacy_harm_f"] == legacy_harm_f(-2, -3)
    (ctx1, tgt1, template, prefix), (ctx2, tgt2, _, _) = stub.calls
    assert (ctx1, tgt1, ctx2, tgt2) == (["a b c"], ["one two"], ["one two"], ["a b c"])
    assert template == "{context} In other words , {target}" and prefix == ""


def test_single_direction_has_no_f_and_src_hyp_uses_the_question():
    stub = StubScorer()
    [result] = gptscore(["x y"], ["r"], srcs=["why?"], scorer=stub, directions=("src_hyp",), aspect="relevance")
    assert set(result) == {"src_hyp"}
    [(contexts, targets, template, prefix)] = stub.calls
    assert contexts == ["why?"] and template.startswith("Question: {context}") and prefix.startswith("Write an answer")


@pytest.mark.parametrize("multi_ref", ["mean", "max"])
def test_multiple_references(multi_ref):
    stub = StubScorer()
    [result] = gptscore(["h"], [["bad", "one two three"]], srcs=["q"], scorer=stub, multi_ref=multi_ref,
                        directions=("ref_hyp", "hyp_ref", "src_hyp"))
    # ref "bad": rh = -2, hr = -1;  ref "one two three": rh = -1, hr = -3
    f = [prob_hm_f(-2, -1), prob_hm_f(-1, -3)]
    if multi_ref == "mean":
        assert result["ref_hyp"]["mean"] == -1.5 and result["hyp_ref"]["mean"] == -2
        assert result["prob_hm_f"] == pytest.approx(sum(f) / 2)
    else:
        assert result["ref_hyp"]["mean"] == -1 and result["hyp_ref"]["mean"] == -1
        assert result["prob_hm_f"] == max(f)
    assert len(stub.calls[2][0]) == 1  # src_hyp scored once per sample, not once per reference


def test_multiple_references_average_sums_and_token_counts():
    class CountingStub(StubScorer):
        """A target's count is its number of words, its sum minus that."""

        def score(self, contexts, targets, *, template, prefix):
            return [TargetScore(-1.0, -float(len(t.split())), len(t.split()), False) for t in targets]

    # hyp_ref scores each reference as the target: 1 and 3 words
    [result] = gptscore(["h"], [["bad", "one two three"]], scorer=CountingStub(), directions=("hyp_ref",))
    assert result["hyp_ref"] == {"mean": -1.0, "sum": -2.0, "count": 2, "truncated": False}


def test_input_errors():
    stub = StubScorer()
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        gptscore(["a", "b"], ["r"], scorer=stub)
    with pytest.raises(ValueError, match="src_hyp needs one source"):
        gptscore(["a"], ["r"], scorer=stub, directions=("src_hyp",))
    with pytest.raises(ValueError, match="unknown direction"):
        gptscore(["a"], ["r"], scorer=stub, directions=("hyp_src",))
    with pytest.raises(ValueError, match="unknown aspect"):
        gptscore(["a"], ["r"], scorer=stub, aspect="beauty")
    with pytest.raises(ValueError, match="multi_ref"):
        gptscore(["a"], [["r", "s"]], scorer=stub, multi_ref="min")
