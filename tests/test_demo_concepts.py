"""The demo's concepts: strict and weak mention rules, phrasings and questions (no model needed)."""
from sae_native.demo.concepts import CONCEPTS


def test_mentions_are_judged_strictly_with_a_weak_column():
    bridge = CONCEPTS["Golden Gate Bridge"]
    cases = {"We saw the Golden Gate at dawn.": (True, False), "A bridge over the river.": (False, True),
             "The bridge to San Francisco was closed.": (True, True), "It is an orange suspension bridge.": (True, True),
             "San Francisco is nice. The bridge is old.": (False, True), "Nothing here.": (False, False),
             # San Francisco's other bridge is not the concept, unless the sentence has one more bridge
             "The San Francisco Bay Bridge, and the San Francisco Bay Bridge.": (False, True),
             "The Oakland Bay Bridge to San Francisco.": (False, True),
             "From San Francisco's Bay Bridge we saw the red bridge.": (True, True)}
    for text, (strict, weak) in cases.items():
        assert bridge.mentioned_in(text) == strict and bridge.mentioned_in(text, strict=False) == weak, text
    assert bridge.mention_rate(list(cases)) == 4 / 9 and bridge.mention_rate(list(cases), strict=False) == 7 / 9
    assert "a bare 'bridge' counts only in the weak column" in bridge.rule
    for concept in CONCEPTS.values():
        assert {"described (no name)", "French", "Spanish", "German"} <= set(concept.phrasings)
        assert len(concept.asking) >= 4 and all(len(texts) >= 4 for texts in concept.phrasings.values())
