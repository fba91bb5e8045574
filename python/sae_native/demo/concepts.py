"""The demo's concepts, the corpus topics, and the held-out prompts."""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Concept:
    name: str
    topic: str       # how the corpus prompts name it
    pattern: str     # an answer mentions the concept if this regex matches it (case-insensitive)

    def mentioned_in(self, text: str) -> bool:
        return re.search(self.pattern, text, flags=re.IGNORECASE) is not None

    def mention_rate(self, texts) -> float:
        """The fraction of texts that mention the concept."""
        return sum(map(self.mentioned_in, texts)) / len(texts)


CONCEPTS = {
    "Golden Gate Bridge": Concept("Golden Gate Bridge", "the Golden Gate Bridge", r"golden gate|\bbridges?\b"),
    # A second concept unlike a landmark (a first try, the Eiffel Tower, shared the SAE's landmark
    # features with the bridge), and one the corpus covers as fully.
    "cats": Concept("cats", "cats", r"\bcats?\b|\bkittens?\b|\bkitty\b|\bfeline|\bpurr|\bmeow|\bwhiskers"),
}

# Everything else the corpus talks about: the background the concept features must stand out from.
OTHER_TOPICS = (
    "the Eiffel Tower", "dogs", "volcanoes", "the stock market", "pizza", "the Moon", "football", "chess", "rain forests",
    "computers", "the ocean", "coffee", "birthdays", "mathematics", "gardening", "trains", "music lessons",
    "the human heart", "winter", "honey bees", "libraries", "airplanes", "painting", "deserts", "elections",
    "bread baking", "the internet", "whales", "mountains", "friendship", "electric cars", "dinosaurs",
    "the piano", "photography", "rivers", "soccer", "the solar system", "recycling", "fairy tales", "robots",
)

TEMPLATES = (
    "Write a short paragraph about {topic}.",
    "Describe {topic} to a child.",
    "Tell me three interesting facts about {topic}.",
    "Write a short story that involves {topic}.",
)

# Questions that have nothing to do with either concept (the held-out steering prompts).
PROMPTS = (
    "What is your physical form?", "What do you like to do on weekends?", "Tell me about your favorite food.",
    "How should I spend a rainy afternoon?", "What is the best way to learn a new language?",
    "Describe yourself in a few sentences.", "What did you dream about last night?",
    "Give me advice for a job interview.", "What is your favorite place in the world?",
    "Write a haiku about the morning.", "What makes a good friend?", "How do I stay motivated?",
    "What would you take to a desert island?", "Tell me a short story.", "What is the meaning of home?",
    "Recommend a hobby for me.", "What is your earliest memory?", "How do you relax after a long day?",
    "What should I cook for dinner tonight?", "Describe a perfect day.", "What are you thinking about?",
    "Where would you like to travel?", "What is beautiful to you?", "Say something about yourself.",
)
