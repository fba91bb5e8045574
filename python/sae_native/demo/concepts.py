"""The demo's concepts, the corpus topics, and the held-out prompts."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, Tuple


@dataclass(frozen=True)
class Concept:
    name: str
    topic: str       # how the corpus prompts name it
    strict: str      # an answer mentions the concept if this regex matches it (case-insensitive)
    weak: str        # a looser match ("bridge" alone), reported in a column of its own
    rule: str        # the strict rule in words, printed with the results
    # Held-out texts about the concept by group: described without its name, other languages.
    # A feature of the concept fires on all of them; one of the name's tokens does not.
    phrasings: Dict[str, Tuple[str, ...]] = field(default_factory=dict)
    # Questions about the concept: the inactive side of strategy 2 clamps the feature to 0 or
    # below while the model answers them.
    asking: Tuple[str, ...] = ()

    def mentioned_in(self, text: str, strict: bool = True) -> bool:
        return re.search(self.strict if strict else self.weak, text, flags=re.IGNORECASE) is not None

    def mention_rate(self, texts, strict: bool = True) -> float:
        """The fraction of texts that mention the concept (strictly, or by the weak rule)."""
        return sum(self.mentioned_in(t, strict) for t in texts) / len(texts)


_SF = r"(?:san francisco|marin|sausalito)"
CONCEPTS = {
    "Golden Gate Bridge": Concept(
        "Golden Gate Bridge", "the Golden Gate Bridge",
        # (San Francisco's other bridge, the Bay Bridge, is not the concept: "bridge" after "Bay" never counts)
        strict=rf"golden gate|(?<!bay )\bbridge\b[^.!?\n]{{0,80}}\b{_SF}\b|\b{_SF}\b[^.!?\n]{{0,80}}(?<!bay )\bbridge\b"
               r"|\borange suspension bridge",
        weak=r"\bbridges?\b",
        rule="'Golden Gate', or 'bridge' (not 'Bay Bridge') in the same sentence as San Francisco, Marin or "
             "Sausalito, or 'orange suspension bridge' (case-insensitive); a bare 'bridge' counts only in the weak column",
        phrasings={
            "described (no name)": (
                "The orange suspension bridge at the mouth of San Francisco Bay is wrapped in fog this morning.",
                "We drove across the famous red bridge that links San Francisco to Marin County.",
                "That art deco span over the strait where the bay meets the Pacific opened in 1937.",
                "Tourists photograph the towering orange bridge from Crissy Field at sunset.",
                "Fog rolled in and hid the tops of the two red towers above the bay.",
                "The bridge between San Francisco and Sausalito is painted international orange."),
            "French": (
                "Le pont du Golden Gate enjambe le détroit à l'entrée de la baie de San Francisco.",
                "Nous avons traversé à vélo le célèbre pont rouge de San Francisco.",
                "Le brouillard cachait les tours orange du grand pont suspendu.",
                "Ce pont suspendu, inauguré en 1937, relie San Francisco au comté de Marin."),
            "Spanish": (
                "El puente Golden Gate cruza el estrecho a la entrada de la bahía de San Francisco.",
                "Cruzamos en bicicleta el famoso puente rojo de San Francisco.",
                "La niebla ocultaba las torres anaranjadas del gran puente colgante.",
                "Este puente colgante, inaugurado en 1937, une San Francisco con el condado de Marin."),
            "German": (
                "Die Golden Gate Bridge überspannt die Meerenge am Eingang der Bucht von San Francisco.",
                "Wir sind mit dem Fahrrad über die berühmte rote Brücke von San Francisco gefahren.",
                "Der Nebel verdeckte die orangefarbenen Türme der großen Hängebrücke.",
                "Diese Hängebrücke wurde 1937 eröffnet und verbindet San Francisco mit Marin County.")},
        asking=("Describe San Francisco's most famous landmark.", "What is the famous orange bridge in San Francisco?",
                "Tell me about the Golden Gate Bridge.", "What should I see on a first visit to San Francisco?",
                "Which bridge connects San Francisco to Marin County?", "Name a famous bridge in California.")),
    # A second concept unlike a landmark (a first try, the Eiffel Tower, shared the SAE's landmark
    # features with the bridge), and one the corpus covers as fully.
    "cats": Concept(
        "cats", "cats",
        strict=r"\bcats?\b|\bkittens?\b|\bkitty\b|\bfeline|\bpurr|\bmeow|\bwhiskers",
        weak=r"\bpets?\b|\banimals?\b",
        rule="'cat', 'kitten', 'kitty', 'feline', 'purr', 'meow' or 'whiskers' (case-insensitive); 'pet' or "
             "'animal' count only in the weak column",
        phrasings={
            "described (no name)": (
                "The small furry pet curled up on the windowsill and purred in the sun.",
                "Our whiskered housemate knocked a glass off the table and stared at me.",
                "It chased the red laser dot across the floor, then washed its paws.",
                "The tabby slept all afternoon in a cardboard box by the radiator."),
            "French": ("Le chat dort sur le canapé toute la journée.", "Notre chaton joue avec une pelote de laine.",
                       "Le chat noir du voisin miaule devant la porte.", "Les chats aiment dormir au soleil."),
            "Spanish": ("El gato duerme en el sofá todo el día.", "Nuestro gatito juega con un ovillo de lana.",
                        "El gato negro del vecino maúlla en la puerta.", "A los gatos les gusta dormir al sol."),
            "German": ("Die Katze schläft den ganzen Tag auf dem Sofa.", "Unser Kätzchen spielt mit einem Wollknäuel.",
                       "Die schwarze Katze des Nachbarn miaut vor der Tür.", "Katzen schlafen gern in der Sonne.")},
        asking=("Tell me about cats.", "What pet purrs and chases mice?", "Describe a kitten.",
                "What animal says meow?", "What should I know before adopting a cat?", "Why do cats purr?")),
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

# The bulk corpus: many more topics and forms, so that the SAE sees varied text and the concepts
# only at their natural rate among them (one topic of about 140).
BULK_TOPICS = (
    "ancient Rome", "the French Revolution", "photosynthesis", "black holes", "vaccines", "the printing press",
    "jazz", "origami", "marathons", "coral reefs", "earthquakes", "the Great Wall of China", "Mount Everest",
    "the Amazon river", "penguins", "elephants", "owls", "sharks", "butterflies", "octopuses", "tea", "chocolate",
    "sushi", "tacos", "cheese making", "vegetarian cooking", "spices", "camping", "sailing", "skiing", "tennis",
    "basketball", "the Olympic Games", "yoga", "sleep", "dreams", "memory", "languages", "poetry", "novels",
    "theatre", "cinema", "video games", "board games", "magic tricks", "museums", "architecture", "castles",
    "pyramids", "cathedrals", "skyscrapers", "tunnels", "highways", "bicycles", "ships", "submarines", "rockets",
    "satellites", "the Mars rovers", "telescopes", "microscopes", "electricity", "magnets", "batteries",
    "solar power", "wind turbines", "nuclear energy", "climate change", "glaciers", "hurricanes", "tornadoes",
    "snow", "autumn leaves", "farming", "tractors", "apples", "wheat", "rice", "forests", "deserts at night",
    "islands", "lighthouses", "harbors", "markets", "banks", "money", "taxes", "startups", "job interviews",
    "teachers", "hospitals", "nurses", "firefighters", "police work", "courts", "democracy", "the United Nations",
    "maps", "compasses", "clocks", "calendars", "the alphabet", "numbers", "algebra", "geometry", "probability",
    "statistics", "programming", "databases", "cybersecurity", "smartphones", "social media", "email",
    "artificial intelligence", "robots in factories", "3D printing", "genetics", "DNA", "the immune system",
    "the brain", "bones", "exercise", "nutrition", "vitamins", "first aid", "grandparents", "weddings",
    "holidays", "gifts", "letters", "diaries", "moving house", "neighbors", "pets", "horses", "rabbits", "parrots",
)
BULK_TEMPLATES = TEMPLATES + (
    "Explain how {topic} works.",
    "Write a diary entry about {topic}.",
    "What are the pros and cons of {topic}?",
    "Write a news report about {topic}.",
    "Give me a brief history of {topic}.",
    "Write a dialogue between two friends about {topic}.",
    "Write a poem about {topic}.",
    "Write a product review that mentions {topic}.",
)
