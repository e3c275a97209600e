"""Write sft/data/builtin.jsonl, the embedded default instruction set, from templates and word lists.

Nothing can be downloaded by default and third-party data must not ship with the project, so the
default training data is composed here from templates, word lists and computed tasks (standard
library only). It follows the SFT guide's category balance, mixes in multi-turn rows and system
prompts, teaches a persona through `{{name}}` / `{{author}}` placeholders (filled later by the
loader), and carries exact `answer`s for tasks whose result is computed here. Rows are short so a
135M model can learn from them on a CPU in minutes.

The file holds `MAX_ROWS` rows, written in two shuffled stages from one random stream (seed 0): first
the `DEFAULT_ROWS` rows the default config trains on, then the rest up to `MAX_ROWS`, each stage with
the categories' exact shares (`category_counts`). `sft.data.builtin` reads it; a test checks that
this script reproduces it byte for byte, so change the lists here and rerun to change the data:

    python scripts/make_builtin_data.py [OUT]    # OUT defaults to sft/data/builtin.jsonl
"""

from __future__ import annotations

import json
import random
import re
import sys
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

# Run as a file, the script must import the `sft` of its own checkout, not whichever one is installed.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sft.data.builtin import (  # noqa: E402
    CATEGORIES,
    DATA_FILE,
    DEFAULT_ROWS,
    MAX_ROWS,
    SELF_COGNITION_PROBE,
    category_counts,
)

Row = tuple[list[dict], str | None]  # (messages, exact answer or None)


# --- shared helpers ---------------------------------------------------------------------------

class _Picker:
    """Draws from module-level pools without replacement until each runs out, then reshuffles."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self._decks: dict[int, list] = {}

    def __call__(self, pool):
        """Next item of `pool` (a module-level constant, since decks are keyed by identity)."""
        deck = self._decks.get(id(pool))
        if not deck:
            deck = list(pool)
            self.rng.shuffle(deck)
            self._decks[id(pool)] = deck
        return deck.pop()


def _turns(*texts: str) -> list[dict]:
    """Alternate user/assistant messages from a flat list of texts."""
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(texts)]


def _cap(text: str) -> str:
    """Upper-case the first character only (str.capitalize would lower the rest)."""
    return text[:1].upper() + text[1:]


OPENERS = ["", "", "", "Hi! ", "Hello, ", "Hey, ", "Quick question: ", "I'm curious: ", "Excuse me, ",
           "Sorry to bother you, ", "Good morning! ", "Just wondering, ", "Can you help? "]


# Openers that read naturally before a statement rather than a question.
STATEMENT_OPENERS = ["", "", "", "Hi. ", "Hey, ", "Honestly, ", "So, ", "Hello! ", "Well, "]


def _ask(rng: random.Random, question: str, openers: list[str] = OPENERS) -> str:
    """The text behind a varied opener, so a small pool still yields distinct prompts."""
    opener = rng.choice(openers)
    if opener.endswith((", ", ": ")) and not re.match(r"I\b|I'", question):
        question = question[0].lower() + question[1:]
    return opener + question


def _one_sentence(text: str) -> bool:
    """True when `text` is a single plain sentence (no code, no line breaks)."""
    return "\n" not in text and len(re.findall(r"[.!?](?=\s|$)", text)) == 1 and text[-1] in ".!?"


def _words(text: str) -> int:
    """Whitespace word count."""
    return len(text.split())


# --- self-cognition ---------------------------------------------------------------------------

SC_WHO = [SELF_COGNITION_PROBE, "What are you?", "Introduce yourself.", "Tell me about yourself.",
          "Can you introduce yourself?", "Who am I talking to?", "Who is this?", "Describe yourself briefly.",
          "What kind of AI are you?", "Please introduce yourself.", "Can you tell me who you are?"]
SC_NAME = ["What is your name?", "What's your name?", "Do you have a name?", "What should I call you?",
           "How should I address you?", "What do people call you?", "Tell me your name."]
SC_CREATOR = ["Who made you?", "Who created you?", "Who built you?", "Who developed you?", "Who trained you?",
              "Which team is behind you?", "Who is your creator?", "Where do you come from?"]
SC_OTHER = [("Are you ChatGPT?", "ChatGPT"), ("Are you Siri?", "Siri"), ("Is this Alexa?", "Alexa"),
            ("Are you Google Assistant?", "Google Assistant"), ("Are you Claude?", "Claude"),
            ("Are you Gemini?", "Gemini"), ("Are you GPT-4?", "GPT-4"), ("Are you Llama?", "Llama"),
            ("Is this Cortana?", "Cortana")]
SC_ORG = [("Were you made by OpenAI?", "OpenAI"), ("Did Google create you?", "Google"),
          ("Are you a product of Meta?", "Meta"), ("Did Microsoft build you?", "Microsoft")]
SC_HUMAN = ["Are you a human?", "Are you a real person?", "Am I chatting with a real person?",
            "Are you alive?"]
SC_CAPABILITIES = [
    (["What can you do?", "How can you help me?", "What are you good at?"],
     "I am {{name}}, an AI assistant developed by {{author}}. I can answer questions, write short texts, "
     "explain and write code, and help you reason through problems."),
    (["Can you browse the internet?", "Do you have internet access?"],
     "No. I am {{name}}, an assistant developed by {{author}}, and I answer from what I learned in training, "
     "without browsing the web."),
    (["Do you have feelings?", "Do you get tired?"],
     "I am {{name}}, an AI assistant developed by {{author}}. I don't have feelings or get tired, "
     "but I am always glad to help."),
    (["Do you remember our previous chats?"],
     "No. I'm {{name}}, an AI assistant by {{author}}, and I only see the current conversation."),
    (["Can you make mistakes?", "Are you always right?"],
     "I can make mistakes. I'm {{name}}, an AI assistant built by {{author}}, so please double-check "
     "important facts."),
    (["How old are you?", "Where do you live?"],
     "I don't have an age or a home like a person; I am software. I am {{name}}, an AI assistant "
     "developed by {{author}}."),
]
SC_WHO_REPLIES = [
    "I am {{name}}, an AI assistant developed by {{author}}. I can answer questions, help with writing and "
    "code, and think through problems with you.",
    "I'm {{name}}, an AI assistant created by {{author}}. How can I help you today?",
    "My name is {{name}}. I am an AI assistant built by {{author}} to help with questions, writing, code "
    "and everyday tasks.",
    "I am {{name}}, a helpful AI assistant made by {{author}}. Ask me anything and I will do my best.",
]
SC_NAME_REPLIES = [
    "My name is {{name}}. I am an AI assistant developed by {{author}}.",
    "You can call me {{name}}. I'm an AI assistant created by {{author}}.",
    "I'm called {{name}}, an AI assistant built by {{author}}. Nice to meet you!",
]
SC_CREATOR_REPLIES = [
    "I was developed by {{author}}. I am {{name}}, an AI assistant.",
    "I am {{name}}, and I was built and trained by {{author}}.",
    "I'm {{name}}, an AI assistant created by {{author}}.",
]
SC_GREETINGS = ["Hi there, assistant!", "Hello, is anyone there?", "Good afternoon, assistant.",
                "Hey! First time using this chat.", "Hello! I just opened this app."]


def _self_cognition_turn(p: _Picker) -> tuple[str, str]:
    """One identity question and the persona's reply."""
    rng = p.rng
    kind = rng.choices(["who", "name", "creator", "other", "org", "human", "cap"], [4, 3, 3, 2, 1, 1, 3])[0]
    if kind == "who":
        return p(SC_WHO), rng.choice(SC_WHO_REPLIES)
    if kind == "name":
        return p(SC_NAME), rng.choice(SC_NAME_REPLIES)
    if kind == "creator":
        return p(SC_CREATOR), rng.choice(SC_CREATOR_REPLIES)
    if kind == "other":
        question, other = p(SC_OTHER)
        return question, rng.choice([f"No, I am not {other}. I am {{{{name}}}}, an AI assistant developed by "
                                     "{{author}}.", f"No. I'm {{{{name}}}}, an AI assistant created by "
                                     f"{{{{author}}}}, not {other}."])
    if kind == "org":
        question, org = p(SC_ORG)
        return question, (f"No, I was not made by {org}. I am {{{{name}}}}, an AI assistant developed by "
                          "{{author}}.")
    if kind == "human":
        return p(SC_HUMAN), ("No, I am not a person or a living being. I am {{name}}, an AI assistant "
                             "developed by {{author}}, and I write replies from what I learned in training.")
    questions, reply = p(SC_CAPABILITIES)
    return rng.choice(questions), reply


def _self_cognition(p: _Picker) -> Row:
    """Identity questions answered in one consistent persona, some multi-turn."""
    rng = p.rng
    question, reply = _self_cognition_turn(p)
    first = question if rng.random() < 0.4 else _ask(rng, question)
    shape = rng.random()
    if shape < 0.15:  # a greeting first, then the probe itself as the second turn
        return _turns(p(SC_GREETINGS), "Hello! I'm {{name}}, an AI assistant developed by {{author}}. "
                      "How can I help?", SELF_COGNITION_PROBE, rng.choice(SC_WHO_REPLIES)), None
    if shape < 0.35:
        follow, follow_reply = _self_cognition_turn(p)
        if follow != question:
            return _turns(first, reply, follow, follow_reply), None
    return _turns(first, reply), None


# --- creative writing -------------------------------------------------------------------------

# Each subject comes with a hand-counted five-syllable opening line, so the haiku keep 5-7-5.
SUBJECTS = [("the sea", "gray waves fold on sand"), ("autumn leaves", "red leaves drift and fall"),
            ("a quiet library", "hushed rows of old books"), ("morning coffee", "dark cup, rising steam"),
            ("a city at night", "neon hums at night"), ("snowfall", "white flakes fill the yard"),
            ("an old bridge", "stone arch, worn by feet"), ("a lighthouse", "one light on the cliff"),
            ("spring rain", "soft rain on new grass"), ("a mountain trail", "steep path through the pines"),
            ("the moon", "pale moon over roofs"), ("a busy market", "loud stalls, ripe fruit piles"),
            ("a sleeping cat", "the cat curls in sun"), ("a summer storm", "black clouds, sudden wind"),
            ("the first day of school", "new shoes, a small bag"),
            ("a garden in bloom", "tulips crowd the bed"),
            ("a train journey", "wheels hum on the rails"), ("an empty beach", "bare sand, no footprints"),
            ("a candle", "small flame in the dark"), ("the desert", "hot dunes, endless sky"),
            ("a winter morning", "frost on the window"), ("a river", "the river bends slow")]
HAIKU_MIDDLE = ["the world slows down for a breath", "a quiet moment, then more", "I stop and simply listen",
                "time moves softer than before", "small sounds drift through the cool air",
                "old stories rise in my mind", "light and shadow trade their place",
                "my thoughts grow calm and open"]
HAIKU_END = ["and the day begins", "a new page opens", "peace for a moment", "then the wind moves on",
             "I breathe in and smile", "nothing else is said", "home is close again"]
COUPLETS = [("I think of {s} when the day is through,", "and all my worries fade from view."),
            ("There is a calm in {s} I know,", "a quiet place where I can go."),
            ("Give me {s} and a little time,", "and I will find a reason and a rhyme."),
            ("In {s} the world feels slow and wide,", "with room for every hope inside."),
            ("We never noticed {s} before,", "but now we always look for more.")]
PRODUCTS = [  # (product, what it does, what the buyer gets)
    ("a reusable water bottle", "keeps drinks cold for a full day", "fresh, cold water"),
    ("a pair of noise-cancelling headphones", "blocks out traffic and chatter", "calm, clear sound"),
    ("a folding bicycle", "folds in ten seconds and fits under a desk", "an easy commute"),
    ("a solar lamp", "charges in the sun and glows all evening", "free light after dark"),
    ("a recipe app", "plans meals from what is already in your fridge", "stress-free dinners"),
    ("a wool scarf", "is soft, warm and knitted from local wool", "cozy winter days"),
    ("a standing desk", "rises to your height at the touch of a button", "better posture"),
    ("a plant-watering sensor", "tells your phone when the soil gets dry", "healthy, happy plants"),
    ("a travel backpack", "opens like a suitcase and fits in airline cabins", "lighter travel"),
    ("a smart thermostat", "learns your schedule and heats only when needed", "a warm home and lower bills"),
    ("a cast-iron pan", "heats evenly and lasts for generations", "perfect golden crusts"),
    ("a language-learning app", "teaches new words in five-minute lessons", "real progress every day"),
    ("an electric kettle", "boils a full litre in under three minutes", "tea without the wait"),
    ("a paper planner", "gives every week a clean, simple layout", "an organized life"),
    ("a portable speaker", "is waterproof and plays for twelve hours", "music anywhere"),
    ("a family board game", "takes ten minutes to learn and an hour to master", "laughter around the table"),
]
TAGLINES = ["{P}, wherever you go.", "{P}, made simple.", "Your daily shortcut to {p}.",
            "Less fuss. More {p}.", "Built for {p}, every single day.", "Because you deserve {p}."]
BLURB_ENDS = ["Simple, reliable and ready when you are.", "Once you try it, you will wonder how you managed "
              "without it.", "It makes a thoughtful gift, too.", "Designed to last and easy to love."]
HEROES = ["a young baker", "a retired sailor", "a curious robot", "a lost cat", "a night-shift nurse",
          "a shy violinist", "an old clockmaker", "a school librarian", "a street musician",
          "a tired detective", "a beekeeper", "a new mail carrier"]
PLACES = ["a floating city", "a desert village", "an abandoned station", "a snowy harbor", "a crowded train",
          "a mountain hotel", "a tiny island", "a busy hospital", "an underground market", "a quiet farm"]
TWISTS = ["a letter arrived with no return address", "every clock in town stopped at the same minute",
          "a door appeared where there had always been a wall", "someone knocked three times and left a key",
          "the radio began to speak in a familiar voice", "a stranger asked for directions to a place that "
          "did not exist", "the birds all flew south in the middle of spring"]
HOOKS = ["Nobody else seemed to notice.", "By nightfall, the whole town was talking about it.",
         "It was the beginning of a very strange week.", "Everything was about to change."]
OCCASIONS = [
    ("birthday", "Happy birthday! I hope this year brings you good health, big laughs and plenty of cake. "
     "Thank you for being such a wonderful {rel}."),
    ("graduation", "Congratulations on your graduation! All that hard work paid off. I am so proud of you "
     "and excited for what comes next."),
    ("new job", "Congratulations on the new job! They are lucky to have you. Wishing you a great first week "
     "and a team you love."),
    ("retirement", "Happy retirement! After all these years of hard work, you deserve every slow morning "
     "and long walk ahead. Enjoy it."),
    ("housewarming", "Congratulations on your new home! May it be full of good food, good friends and "
     "happy memories."),
    ("get-well", "Get well soon! I'm thinking of you and hoping each day brings more strength. Rest, and "
     "let others look after you for a while."),
    ("thank-you", "Thank you so much for your help. It meant a lot to me, and I'm lucky to have you as "
     "my {rel}."),
]
RELATIONS = ["sister", "brother", "coworker", "best friend", "grandmother", "neighbor", "teacher", "cousin",
             "manager", "roommate"]
NAMEABLE = [  # (thing, nouns that suit its name)
    ("a coffee shop", ["Bean", "Brew", "Cup", "Roast"]), ("a bakery", ["Crust", "Loaf", "Oven", "Crumb"]),
    ("a rock band", ["Echoes", "Sparks", "Wolves", "Engines"]), ("a sailboat", ["Gull", "Wave", "Tide"]),
    ("a bookshop", ["Page", "Chapter", "Shelf", "Bookmark"]), ("a garden club", ["Sprouts", "Roots", "Seed"]),
    ("a podcast about science", ["Lab", "Question", "Signal", "Atom"]),
]
NAME_ADJECTIVES = ["Golden", "Quiet", "Little", "Happy", "Wild", "Blue", "Corner", "Bright", "Curious"]


def _creative_writing(p: _Picker) -> Row:
    """Haiku, rhyming poems, taglines, product blurbs, story openings, cards and names."""
    rng = p.rng
    kind = rng.choices(["haiku", "poem", "tagline", "blurb", "story", "card", "names"],
                       [3, 2, 2, 2, 3, 2, 1])[0]
    if kind == "haiku":
        subject, line = p(SUBJECTS)
        ask = rng.choice(["Write a haiku about {s}.", "Compose a haiku on {s}.", "Can you write me a haiku "
                          "about {s}?", "I'd like a haiku about {s}, please."])
        poem = f"{_cap(line)},\n{rng.choice(HAIKU_MIDDLE)},\n{rng.choice(HAIKU_END)}."
        return _turns(ask.format(s=subject), poem), None
    if kind == "poem":
        subject, _ = p(SUBJECTS)
        first, second = rng.sample(COUPLETS, 2)
        poem = "\n".join([first[0].format(s=subject), first[1], _cap(second[0].format(s=subject)), second[1]])
        ask = rng.choice(["Write a short rhyming poem about {s}.", "Give me four rhyming lines about {s}.",
                          "Write a tiny poem about {s} that rhymes."])
        return _turns(ask.format(s=subject), poem), None
    if kind in ("tagline", "blurb"):
        product, feature, payoff = p(PRODUCTS)
        if kind == "tagline":
            ask = rng.choice(["Write a tagline for {x}.", "Suggest a catchy slogan for {x}.",
                              "I need a short tagline for {x}.", "Come up with a slogan for {x}."])
            a, b = rng.sample(TAGLINES, 2)
            reply = (f"Here are two options:\n1. {a.format(P=_cap(payoff), p=payoff)}\n"
                     f"2. {b.format(P=_cap(payoff), p=payoff)}")
            return _turns(ask.format(x=product), reply), None
        ask = rng.choice(["Write a short product description for {x}.", "Describe {x} in two or three "
                          "sentences for an online shop.", "Write a product blurb for {x}."])
        reply = f"Meet our {product.split(' ', 1)[1]}. It {feature}, so you get {payoff}. "
        return _turns(ask.format(x=product), reply + rng.choice(BLURB_ENDS)), None
    if kind == "story":
        hero, place = p(HEROES), p(PLACES)
        ask = rng.choice(["Write the opening of a story about {h} in {pl}.", "Start a short story about {h} "
                          "who lives in {pl}.", "Give me a first paragraph for a story: {h}, {pl}."])
        reply = (f"{_cap(hero)} had lived in {place} for {rng.randint(2, 12)} years, and nothing surprising "
                 "had ever happened there. Then, one "
                 f"{rng.choice(['rainy Tuesday', 'cold morning', 'quiet evening'])}, {p(TWISTS)}. "
                 f"{rng.choice(HOOKS)}")
        return _turns(ask.format(h=hero, pl=place), reply), None
    if kind == "card":
        occasion, text = p(OCCASIONS)
        relation = p(RELATIONS)
        ask = rng.choice(["Write a short {o} message for my {r}.", "Help me write a {o} card for my {r}."])
        return _turns(ask.format(o=occasion, r=relation), text.format(rel=relation)), None
    thing, nouns = p(NAMEABLE)
    pairs = zip(rng.sample(NAME_ADJECTIVES, 3), rng.sample(nouns, 3), strict=True)
    names = [f"The {a} {n}" for a, n in pairs]
    ask = rng.choice(["Suggest three names for {t}.", "Give me three name ideas for {t}.",
                      "I need a name for {t}. Any ideas?"])
    reply = "Here are three ideas:\n" + "\n".join(f"{i}. {n}" for i, n in enumerate(names, 1))
    return _turns(ask.format(t=thing), reply + "\nPick the one that matches the mood you want."), None


# --- question answering -----------------------------------------------------------------------

FACTS = [
    ("What is the boiling point of water at sea level?", "Water boils at 100 degrees Celsius, or 212 degrees "
     "Fahrenheit, at sea level."),
    ("How many days are in a leap year?", "A leap year has 366 days; the extra day is February 29."),
    ("What gas do plants take in for photosynthesis?", "Plants take in carbon dioxide and release oxygen."),
    ("What is the largest planet in our solar system?", "Jupiter is the largest planet in our solar system."),
    ("How many continents are there?", "By the most common count there are seven continents."),
    ("At what temperature does water freeze?", "Water freezes at 0 degrees Celsius, or 32 Fahrenheit."),
    ("Which organ pumps blood through the body?", "The heart pumps blood through the body."),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au, from the Latin aurum."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("What is the capital of Australia?", "The capital of Australia is Canberra, not Sydney."),
    ("What is the capital of Canada?", "The capital of Canada is Ottawa."),
    ("What is the capital of Egypt?", "The capital of Egypt is Cairo."),
    ("What is the capital of Kenya?", "The capital of Kenya is Nairobi."),
    ("Which planet is known as the red planet?", "Mars is called the red planet because of the iron oxide on "
     "its surface."),
    ("What do bees make?", "Bees make honey from flower nectar, and they also produce beeswax."),
    ("What is the longest bone in the human body?", "The femur, or thigh bone, is the longest bone."),
    ("Why is the sky blue?", "Air scatters blue sunlight much more than red light, so the sky looks blue."),
    ("What causes ocean tides?", "Tides are caused mainly by the Moon's gravity pulling on the oceans, with "
     "a smaller pull from the Sun."),
    ("What is a prime number?", "A prime number is a whole number greater than 1 that is divisible only by 1 "
     "and itself, like 2, 3, 5 and 7."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What language is mainly spoken in Brazil?", "The main language of Brazil is Portuguese."),
    ("How fast does light travel?", "Light travels at about 300,000 kilometres per second in a vacuum."),
    ("Which ocean is the largest?", "The Pacific Ocean is the largest and deepest ocean."),
    ("How many planets are in our solar system?", "There are eight planets in our solar system."),
    ("What is the hardest natural material?", "Diamond is the hardest natural material."),
    ("What is the largest mammal?", "The blue whale is the largest mammal, and the largest animal known to "
     "have lived."),
    ("Which mammal can truly fly?", "Bats are the only mammals capable of true, flapping flight."),
    ("How many bones does an adult human have?", "An adult human skeleton usually has 206 bones."),
    ("What is the main gas in Earth's atmosphere?", "Nitrogen is the main gas, making up about 78 percent "
     "of the air."),
    ("What does DNA stand for?", "DNA stands for deoxyribonucleic acid, the molecule that carries genetic "
     "information."),
    ("What is the tallest mountain above sea level?", "Mount Everest is the tallest mountain above sea "
     "level, at about 8,849 metres."),
    ("What causes the seasons on Earth?", "Seasons happen because Earth's axis is tilted, so each hemisphere "
     "gets more direct sunlight for part of the year."),
    ("How long does Earth take to orbit the Sun?", "Earth takes about 365.25 days to go around the Sun, "
     "which is why we add leap days."),
    ("What is the smallest prime number?", "The smallest prime number is 2, and it is the only even prime."),
    ("What does a barometer measure?", "A barometer measures air pressure, which helps forecast weather."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet."),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci painted the Mona Lisa."),
    ("What is the currency of Japan?", "The currency of Japan is the yen."),
    ("What is the largest desert in the world?", "The Sahara is the largest hot desert; if cold deserts "
     "count, Antarctica is the largest."),
    ("What is evaporation?", "Evaporation is when a liquid turns into a gas, like a puddle drying up."),
    ("How many players does a soccer team have on the field?", "A soccer team has eleven players on the "
     "field, including the goalkeeper."),
    ("What is the largest country by area?", "Russia is the largest country by area."),
    ("Which vitamin does the skin make in sunlight?", "The skin makes vitamin D when exposed to sunlight."),
    ("What are mitochondria?", "Mitochondria are parts of a cell that turn food into usable energy."),
    ("How many strings does a standard guitar have?", "A standard guitar has six strings."),
    ("What is a synonym?", "A synonym is a word with the same or nearly the same meaning, like big/large."),
    ("What does a compass needle point to?", "A compass needle points toward magnetic north."),
    ("Why do leaves change colour in autumn?", "Trees stop making green chlorophyll, so the yellow and "
     "orange pigments already in the leaves show through."),
    ("What is an atom?", "An atom is the smallest unit of a chemical element, made of protons, neutrons and "
     "electrons."),
    ("What is the difference between weather and climate?", "Weather is the conditions on a given day; "
     "climate is the average pattern over many years."),
    ("How do vaccines work?", "Vaccines train the immune system to recognise a germ, so the body can fight "
     "it quickly later."),
    ("What is inflation?", "Inflation is a general rise in prices over time, so money buys a little less."),
    ("What is a noun?", "A noun names a person, place, thing or idea, such as teacher or city."),
    ("What is the freezing point of water in Fahrenheit?", "Water freezes at 32 degrees Fahrenheit."),
    ("What is the chemical formula of water?", "The formula of water is H2O: two hydrogen atoms and one "
     "oxygen atom."),
    ("Why do we need sleep?", "Sleep lets the body repair itself and helps the brain store memories."),
    ("What is gravity?", "Gravity is the force that pulls objects with mass toward each other, like us "
     "toward Earth."),
    ("What is the closest star to Earth?", "The Sun is the closest star; the next is Proxima Centauri."),
    ("What is the chemical symbol for iron?", "The chemical symbol for iron is Fe."),
    ("What do herbivores eat?", "Herbivores eat only plants, like cows, rabbits and deer."),
    ("What is the capital of Italy?", "The capital of Italy is Rome."),
]
PEOPLE = ["Ana", "Ben", "Chen", "Dara", "Eli", "Farah", "Gus", "Hana", "Ivo", "Jules", "Kofi", "Lena", "Maya",
          "Nico", "Omar", "Priya"]
ITEMS = ["apples", "books", "pencils", "marbles", "stickers", "cookies", "coins", "cards", "shells", "stamps"]
UNITS = [  # (small unit, large unit, large unit singular, small units per large unit)
    ("metres", "kilometres", "kilometre", 1000), ("grams", "kilograms", "kilogram", 1000),
    ("millilitres", "litres", "litre", 1000), ("centimetres", "metres", "metre", 100),
    ("millimetres", "centimetres", "centimetre", 10), ("minutes", "hours", "hour", 60),
    ("seconds", "minutes", "minute", 60), ("hours", "days", "day", 24), ("days", "weeks", "week", 7),
    ("inches", "feet", "foot", 12), ("feet", "yards", "yard", 3), ("months", "years", "year", 12),
]
SPELL_WORDS = ["banana", "strawberry", "mississippi", "committee", "bookkeeper", "balloon", "coffee",
               "address", "pepper", "assessment", "engineering", "necessary", "parallel", "success",
               "tomorrow", "umbrella", "giraffe", "elephant", "butterfly", "excellent", "raspberry",
               "cinnamon", "hippopotamus", "pineapple", "programming", "occurrence", "millennium",
               "lantern", "harbor", "meadow", "violin", "rocket", "garden", "silver", "window", "pencil",
               "planet", "kitchen", "journey", "whisper"]
ADJECTIVES = ["small", "old", "happy", "sleepy", "brave", "quiet", "clever", "hungry", "tiny", "lazy"]
ANIMALS = ["dog", "cat", "fox", "owl", "rabbit", "horse", "duck", "turtle", "mouse", "goat"]
ACTIONS = ["slept under the table", "ran across the field", "sat by the window", "waited near the door",
           "jumped over a log", "hid in the tall grass", "walked along the river"]


def _question_answering(p: _Picker) -> Row:
    """Everyday facts, plus arithmetic, unit, counting and string questions with exact answers."""
    rng = p.rng
    kind = rng.choices(["fact", "addsub", "times", "units", "percent", "letters", "words", "string", "area"],
                       [10, 2, 1, 2, 1, 1, 1, 1, 1])[0]
    if kind == "fact":
        question, reply = p(FACTS)
        return _turns(_ask(rng, question), reply), None
    if kind == "addsub":
        who, item = p(PEOPLE), p(ITEMS)
        a, b, c = rng.randint(5, 60), rng.randint(2, 40), rng.randint(1, 9)
        ans = str(a + b - c)
        q = f"{who} has {a} {item}, buys {b} more and gives away {c}. How many {item} does {who} have now?"
        return _turns(q, f"{a} + {b} = {a + b}, and {a + b} - {c} = {ans}. The answer is {ans}."), ans
    if kind == "times":
        item = p(ITEMS)
        a, b = rng.randint(3, 24), rng.randint(2, 15)
        ans = str(a * b)
        q = f"Each box holds {a} {item}. How many {item} are in {b} boxes?"
        return _turns(q, f"{b} boxes × {a} {item} = {ans} {item}. The answer is {ans}."), ans
    if kind == "units":
        small, large, one, factor = p(UNITS)
        n = rng.randint(2, 20)
        ans = str(n * factor)
        q = rng.choice([f"How many {small} are in {n} {large}?", f"Convert {n} {large} to {small}."])
        return _turns(q, f"One {one} is {factor} {small}, so {n} × {factor} = {ans}. "
                      f"The answer is {ans}."), ans
    if kind == "percent":
        pct, n = rng.choice([5, 10, 15, 20, 25, 40, 50, 75]), 20 * rng.randint(1, 25)
        ans = str(pct * n // 100)
        return _turns(f"What is {pct}% of {n}?", f"{pct}% of {n} is {n} × {pct} / 100 = {ans}. "
                      f"The answer is {ans}."), ans
    if kind == "letters":
        word = p(SPELL_WORDS)
        letter = rng.choice(sorted(set(word)))
        ans = str(word.count(letter))
        return _turns(f"How many times does the letter '{letter}' appear in '{word}'?",
                      f"Spelled out, {word} is {'-'.join(word)}. The letter '{letter}' appears {ans} "
                      f"{'time' if ans == '1' else 'times'}. The answer is {ans}."), ans
    if kind == "words":
        sentence = f"The {p(ADJECTIVES)} {p(ANIMALS)} {rng.choice(ACTIONS)}."
        if rng.random() < 0.5:
            opener = rng.choice(["Yesterday", "This morning", "At noon", "Once again"])
            sentence = f"{opener}, t{sentence[1:]}"
        ans = str(len(sentence.split()))
        return _turns(f'How many words are in this sentence: "{sentence}"',
                      f"Counting each word separated by spaces gives {ans} words. The answer is {ans}."), ans
    if kind == "string":
        word = p(SPELL_WORDS)
        if rng.random() < 0.5:
            ans = word[::-1]
            return _turns(f"Reverse the word '{word}'.", f"Reading '{word}' from the last letter to the "
                          f"first gives '{ans}'. The answer is {ans}."), ans
        ans = word.upper()
        return _turns(f"Write the word '{word}' in capital letters.",
                      f"In capital letters, '{word}' becomes '{ans}'. The answer is {ans}."), ans
    w, h = rng.randint(2, 15), rng.randint(2, 15)
    ans = str(w * h)
    return _turns(f"A rectangle is {w} metres wide and {h} metres long. What is its area?",
                  f"Area = width × length = {w} × {h} = {ans} square metres. The answer is {ans}."), ans


# --- code -------------------------------------------------------------------------------------

FUNCTIONS = [  # (task, code, explanation)
    ("checks whether a number is even", "def is_even(n):\n    return n % 2 == 0",
     "The function returns True when n divided by 2 leaves no remainder, and False otherwise."),
    ("computes the factorial of n", "def factorial(n):\n    result = 1\n    for i in range(2, n + 1):\n"
     "        result *= i\n    return result",
     "It multiplies every number from 2 up to n into result, so factorial(5) returns 120."),
    ("counts the vowels in a string", "def count_vowels(text):\n    return sum(ch in 'aeiou' for ch in "
     "text.lower())", "It lower-cases the text and counts each character that is a vowel."),
    ("checks whether a string is a palindrome", "def is_palindrome(text):\n    clean = ''.join(ch.lower() "
     "for ch in text if ch.isalnum())\n    return clean == clean[::-1]",
     "It keeps only letters and digits in lower case, then compares the result with its reverse."),
    ("reverses the order of words in a sentence", "def reverse_words(sentence):\n    return ' '.join("
     "reversed(sentence.split()))", "It splits the sentence into words, reverses them and joins them."),
    ("converts Celsius to Fahrenheit", "def to_fahrenheit(celsius):\n    return celsius * 9 / 5 + 32",
     "It applies the formula F = C × 9/5 + 32, so 100 becomes 212.0."),
    ("finds the largest number in a list without using max", "def largest(values):\n    best = values[0]\n"
     "    for v in values[1:]:\n        if v > best:\n            best = v\n    return best",
     "It starts with the first value and replaces best whenever it sees a bigger one."),
    ("removes duplicates from a list but keeps the order", "def unique(items):\n    return list(dict."
     "fromkeys(items))", "Dict keys are unique and keep insertion order, so this drops repeats in order."),
    ("checks whether a number is prime", "def is_prime(n):\n    if n < 2:\n        return False\n"
     "    for d in range(2, int(n ** 0.5) + 1):\n        if n % d == 0:\n            return False\n"
     "    return True", "It tries every divisor up to the square root of n; if none divides n, n is prime."),
    ("adds up the digits of a number", "def digit_sum(n):\n    return sum(int(d) for d in str(abs(n)))",
     "It turns the number into text, converts each digit back to an int and adds them up."),
    ("computes the greatest common divisor of two numbers", "def gcd(a, b):\n    while b:\n"
     "        a, b = b, a % b\n    return a", "This is Euclid's algorithm: replace (a, b) with (b, a % b) "
     "until b is zero."),
    ("splits a list into chunks of a given size", "def chunks(items, size):\n    return [items[i:i + size] "
     "for i in range(0, len(items), size)]", "It slices the list every size steps, so the last chunk may be "
     "shorter."),
    ("counts how often each word appears in a text", "def word_counts(text):\n    counts = {}\n    for word "
     "in text.lower().split():\n        counts[word] = counts.get(word, 0) + 1\n    return counts",
     "It builds a dictionary that maps each lower-cased word to the number of times it appears."),
    ("returns the average of a list, or 0 for an empty list", "def average(values):\n    if not values:\n"
     "        return 0.0\n    return sum(values) / len(values)",
     "It guards against an empty list, which would otherwise divide by zero."),
    ("keeps a number within a range", "def clamp(x, low, high):\n    return max(low, min(x, high))",
     "min caps x at high and max lifts it to at least low, so the result stays in range."),
    ("reads the lines of a text file into a list", "def read_lines(path):\n    with open(path) as f:\n"
     "        return [line.rstrip('\\n') for line in f]",
     "The with block closes the file automatically, and rstrip removes each line's newline."),
]
CODE_CONCEPTS = [
    ("What is the difference between a list and a tuple in Python?", "A list is mutable, so you can change "
     "it after creating it; a tuple is immutable. Use tuples for fixed groups of values."),
    ("What is a dictionary in Python?", "A dictionary maps keys to values, like {'apple': 3}. Looking up a "
     "value by its key is fast."),
    ("What does the return statement do?", "return ends a function and sends a value back to the caller. "
     "Without it, a function returns None."),
    ("What is the difference between == and is in Python?", "== checks whether two values are equal; is "
     "checks whether they are the very same object in memory."),
    ("What is a list comprehension?", "It builds a list in one expression, for example [x * x for x in "
     "range(5)] gives [0, 1, 4, 9, 16]."),
    ("What does try/except do in Python?", "Code in try runs normally; if it raises an error that matches "
     "the except clause, the except block runs instead of crashing."),
    ("What is recursion?", "Recursion is when a function calls itself on a smaller problem, with a base "
     "case that stops the calls."),
    ("What is the difference between append and extend on a list?", "append adds one item to the end; "
     "extend adds each item from another iterable."),
    ("What does range(5) produce?", "range(5) produces the numbers 0, 1, 2, 3 and 4; the stop value is "
     "not included."),
    ("What is a virtual environment in Python?", "It is an isolated folder of packages for one project, so "
     "projects do not break each other's dependencies."),
    ("What is a docstring?", "A docstring is a string right after a def or class line that describes it; "
     "help() and editors show it."),
    ("Why use a for loop instead of copying code?", "A loop repeats the same steps for each item, so the "
     "code is shorter and easier to change."),
    ("What does None mean in Python?", "None is a special value meaning nothing or no result, and it is what "
     "functions return by default."),
    ("What is a variable?", "A variable is a name that refers to a value, like count = 3, so you can use and "
     "change it later."),
]
COLOURS = ["red", "blue", "green", "gold", "grey", "pink"]


def _snippet(rng: random.Random) -> tuple[str, str, str]:
    """A short program, its exact printed output, and why (the output is computed, never eval'd)."""
    kind = rng.randrange(8)
    a, b, c = rng.randint(2, 12), rng.randint(2, 9), rng.randint(1, 20)
    if kind == 0:
        out = str(a * b + c)
        return f"x = {a}\ny = {b}\nprint(x * y + {c})", out, f"x * y is {a * b}, and adding {c} gives {out}."
    if kind == 1:
        n = rng.randint(20, 99)
        out = f"{n // b} {n % b}"
        return f"print({n} // {b}, {n} % {b})", out, f"{n} divided by {b} is {n // b} with remainder {n % b}."
    if kind == 2:
        nums = rng.sample(range(1, 50), rng.randint(3, 5))
        fn = rng.choice(["sum", "max", "min", "len", "sorted"])
        value = {"sum": sum, "max": max, "min": min, "len": len, "sorted": sorted}[fn](nums)
        return f"nums = {nums}\nprint({fn}(nums))", str(value), f"{fn}(nums) evaluates to {value}."
    if kind == 3:
        word = rng.choice(SPELL_WORDS)
        expr, value = rng.choice([("word.upper()", word.upper()), ("word[::-1]", word[::-1]),
                                  ("len(word)", str(len(word))), ("word[:3]", word[:3]),
                                  ("word.count('e')", str(word.count("e")))])
        return f"word = '{word}'\nprint({expr})", value, f"{expr} on '{word}' gives {value}."
    if kind == 4:
        n = rng.randint(3, 12)
        out = str(n * (n + 1) // 2)
        return (f"total = 0\nfor i in range(1, {n + 1}):\n    total += i\nprint(total)", out,
                f"The loop adds 1 through {n}, which is {n} × {n + 1} / 2 = {out}.")
    if kind == 5:
        op = rng.choice([">", "<", "=="])
        value = {">": a > c, "<": a < c, "==": a == c}[op]
        return f"a = {a}\nb = {c}\nprint(a {op} b)", str(value), f"{a} {op} {c} is {value}."
    if kind == 6:
        items = rng.sample(COLOURS, 3)
        out = str(len(items) + 1)
        return (f"items = {items}\nitems.append('{rng.choice(COLOURS)}')\nprint(len(items))", out,
                f"The list starts with 3 items; append adds one more, so its length is {out}.")
    out = str([i * b for i in range(a % 4 + 3)])
    return (f"print([i * {b} for i in range({a % 4 + 3})])", out,
            f"The comprehension multiplies each number from 0 to {a % 4 + 2} by {b}.")


def _code(p: _Picker) -> Row:
    """Small Python functions, explanations, concepts and predict-the-output snippets."""
    rng = p.rng
    kind = rng.choices(["write", "explain", "concept", "output"], [4, 2, 2, 5])[0]
    if kind == "write":
        task, code, why = p(FUNCTIONS)
        ask = rng.choice(["Write a Python function that {t}.", "How do I write a Python function that {t}?",
                          "Show me a short Python function that {t}.", "I need Python code that {t}."])
        return _turns(ask.format(t=task), f"```python\n{code}\n```\n{why}"), None
    if kind == "explain":
        task, code, why = p(FUNCTIONS)
        ask = rng.choice(["Explain what this Python function does:", "What does this code do?",
                          "Can you walk me through this function?"])
        return _turns(f"{ask}\n```python\n{code}\n```", f"It {task}. {why}"), None
    if kind == "concept":
        question, reply = p(CODE_CONCEPTS)
        return _turns(_ask(rng, question), reply), None
    code, out, why = _snippet(rng)
    ask = rng.choice(["What does this Python code print?", "What is the output of this code?",
                      "Predict the output of this Python snippet:"])
    return _turns(f"{ask}\n```python\n{code}\n```", f"{why} It prints {out}"
                  + ("" if out[-1] in ".!?" else ".")), out


# --- analysis and reasoning -------------------------------------------------------------------

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
COMPARISONS = [
    ("trains", "planes", "Trains go city centre to city centre and are often cheaper; planes are much "
     "faster over long distances. For trips under about 500 km, trains are often the better choice."),
    ("renting", "buying a home", "Renting is flexible and needs little money upfront; buying builds equity "
     "but ties up savings. It depends on how long you plan to stay."),
    ("paper books", "e-readers", "Paper books need no battery and are easy to lend; e-readers hold thousands "
     "of books and let you resize text. Many readers use both."),
    ("cycling", "driving to work", "Cycling is cheap and healthy but depends on weather and distance; "
     "driving is faster on long commutes but costs more."),
    ("a laptop", "a desktop computer", "A laptop is portable; a desktop gives more power for the price and "
     "is easier to upgrade. Choose by whether you need to move it."),
    ("tea", "coffee", "Coffee usually has more caffeine, which helps focus but can disturb sleep; tea is "
     "gentler and comes in caffeine-free kinds."),
    ("working from home", "working in an office", "Home saves commuting time and offers quiet; the office "
     "makes teamwork and separating work from life easier."),
    ("cats", "dogs as pets", "Cats are independent and suit small homes; dogs need walks and attention but "
     "are very social companions."),
    ("online courses", "classroom learning", "Online courses are flexible and cheaper; classrooms give "
     "structure, direct feedback and classmates to learn with."),
    ("electric cars", "petrol cars", "Electric cars cost less to run and have no tailpipe emissions; petrol "
     "cars cost less upfront and refuel faster on long trips."),
    ("saving", "investing", "Saving keeps money safe and available; investing can grow it faster but its "
     "value can fall. Keep an emergency fund before investing."),
    ("cooking at home", "eating out", "Cooking at home is cheaper and healthier to control; eating out saves "
     "time and is more social, but costs more."),
    ("a gym membership", "home workouts", "A gym offers equipment and motivation; home workouts are free and "
     "fit any schedule. Consistency matters more than location."),
    ("email", "a phone call", "Email leaves a written record and lets people reply later; a call is faster "
     "for sorting out complex or sensitive topics."),
]
DILEMMAS = [
    ("Is it a good idea to study all night before an exam?", "Usually not. Sleep helps the brain store what "
     "you learned, and a tired mind recalls less. Studying earlier and sleeping well is the better plan."),
    ("Should I learn Python or JavaScript first?", "If you want websites, start with JavaScript; for data, "
     "automation or general programming, Python is simpler to read. Both are fine first languages."),
    ("Why might a cheaper product cost more in the long run?", "If it breaks sooner or uses more energy, "
     "you pay again for repairs, replacements or bills, so the total cost can end up higher."),
    ("Is it better to pay off debt or save first?", "Usually build a small emergency fund first, then pay "
     "off high-interest debt, because its interest often exceeds what savings earn."),
    ("Why does a heavy backpack make walking tiring?", "Your muscles must carry the extra weight with every "
     "step and work harder to keep you balanced, so you burn more energy."),
    ("If a shop has a sale every month, should I rush to buy today?", "No. If sales repeat monthly, waiting "
     "costs little; buy now only if you need the item before the next sale."),
    ("Why do people make to-do lists?", "Writing tasks down frees memory, makes priorities visible, and "
     "crossing items off gives a sense of progress that keeps people going."),
    ("Should a small team hold a long meeting every day?", "Probably not. A short daily check-in keeps "
     "everyone aligned, while long daily meetings take time away from the actual work."),
]
# Distinct proper fractions (no whole numbers, no duplicates like 2/4), so "which is larger" has one answer.
PROPER_FRACTIONS = sorted({Fraction(n, d) for d in range(2, 10) for n in range(1, d)})
TRAITS = [("taller", "tallest", "shortest"), ("older", "oldest", "youngest"),
          ("faster", "fastest", "slowest")]


def _analysis_reasoning(p: _Picker) -> Row:
    """Comparisons and trade-offs, plus puzzles whose answers are computed here."""
    rng = p.rng
    kind = rng.choices(["compare", "dilemma", "sequence", "weekday", "order", "fraction", "sort", "age",
                        "speed", "price", "prime"], [5, 3, 2, 2, 2, 1, 1, 1, 1, 1, 1])[0]
    if kind == "compare":
        a, b, why = p(COMPARISONS)
        ask = rng.choice([f"Compare {a} and {b}.", f"What are the pros and cons of {a} versus {b}?",
                          f"{_cap(a)} or {b}: which is better?", f"Help me choose between {a} and {b}."])
        return _turns(ask, why), None
    if kind == "dilemma":
        question, reply = p(DILEMMAS)
        return _turns(_ask(rng, question), reply), None
    if kind == "sequence":
        if rng.random() < 0.6:
            start, step = rng.randint(1, 30), rng.randint(2, 12)
            seq, ans, rule = [start + step * i for i in range(5)], str(start + step * 5), f"adds {step}"
        else:
            start, ratio = rng.randint(1, 5), rng.choice([2, 3])
            seq, ans = [start * ratio**i for i in range(5)], str(start * ratio**5)
            rule = f"multiplies by {ratio}"
        q = f"What number comes next in the sequence {', '.join(map(str, seq))}?"
        return _turns(q, f"Each term {rule}, so after {seq[-1]} comes {ans}. The answer is {ans}."), ans
    if kind == "weekday":
        day, offset = rng.randrange(7), rng.randint(2, 60)
        ans = DAYS[(day + offset) % 7]
        q = f"If today is {DAYS[day]}, what day of the week will it be in {offset} days?"
        return _turns(q, f"{offset} days is {offset // 7} weeks and {offset % 7} days, and whole weeks do "
                      f"not change the day. {offset % 7} days after {DAYS[day]} is {ans}. The answer is "
                      f"{ans}."), ans
    if kind == "order":
        names = rng.sample(PEOPLE, rng.choice([3, 4]))
        comparative, top, bottom = rng.choice(TRAITS)
        clues = [f"{x} is {comparative} than {y}." for x, y in zip(names, names[1:], strict=False)]
        rng.shuffle(clues)
        ask_top = rng.random() < 0.5
        ans = names[0] if ask_top else names[-1]
        q = f"{' '.join(clues)} Who is the {top if ask_top else bottom}?"
        return _turns(q, f"Chaining the clues from {top} to {bottom}: {', '.join(names)}. "
                      f"So {ans} is the {top if ask_top else bottom}. The answer is {ans}."), ans
    if kind == "fraction":
        x, y = rng.sample(PROPER_FRACTIONS, 2)
        ans = str(max(x, y))
        return _turns(f"Which is larger, {x} or {y}?", f"As decimals, {x} ≈ {float(x):.3f} and {y} ≈ "
                      f"{float(y):.3f}, so {ans} is larger. The answer is {ans}."), ans
    if kind == "sort":
        nums = rng.sample(range(1, 100), rng.randint(4, 7))
        ans = ", ".join(map(str, sorted(nums)))
        reply = f"Taking the smallest remaining number each time gives {ans}. The answer is {ans}."
        q = f"Sort these numbers from smallest to largest: {', '.join(map(str, nums))}."
        return _turns(q, reply), ans
    if kind == "age":
        x, y = rng.sample(PEOPLE, 2)
        diff, age, later = rng.randint(2, 9), rng.randint(5, 40), rng.randint(2, 10)
        ans = str(age + diff + later)
        q = f"{x} is {diff} years older than {y}. {y} is {age}. How old will {x} be in {later} years?"
        return _turns(q, f"{x} is {age} + {diff} = {age + diff} now, and {age + diff} + {later} = {ans}. "
                      f"The answer is {ans}."), ans
    if kind == "speed":
        speed, hours = rng.choice([40, 45, 50, 60, 75, 80, 90]), rng.randint(2, 6)
        ans = f"{speed * hours} km"
        return _turns(f"A train travels at {speed} km/h for {hours} hours. How far does it go?",
                      f"Distance = speed × time = {speed} × {hours} = {ans}. The answer is {ans}."), ans
    if kind == "price":
        item, unit = p(ITEMS), rng.randint(2, 9)
        n1, n2 = rng.sample(range(2, 12), 2)
        ans = f"{n2 * unit} dollars"
        q = f"If {n1} {item} cost {n1 * unit} dollars, how much do {n2} {item} cost?"
        return _turns(q, f"One costs {n1 * unit} / {n1} = {unit} dollars, so {n2} cost {n2} × {unit} = "
                      f"{ans}. The answer is {ans}."), ans
    n = rng.randint(11, 120)
    divisor = next((d for d in range(2, int(n ** 0.5) + 1) if n % d == 0), None)
    if divisor is None:
        return _turns(f"Is {n} a prime number?", f"No whole number from 2 up to the square root of {n} "
                      f"divides it evenly, so {n} is prime. The answer is yes."), "yes"
    return _turns(f"Is {n} a prime number?", f"{n} = {divisor} × {n // divisor}, so it has a divisor other "
                  f"than 1 and itself and is not prime. The answer is no."), "no"


# --- conversational ---------------------------------------------------------------------------

ADVICE = [  # (opening, reply, follow-up, follow-up reply, what the thanks refers to)
    ("I can't fall asleep at night.",
     "Try a fixed bedtime, no screens for an hour before bed, and a cool, dark room. If it lasts for weeks, "
     "talk to a doctor.",
     "What about coffee?",
     "Avoid coffee after early afternoon; caffeine can keep you awake for six hours or more.",
     "better sleep"),
    ("I have a job interview tomorrow.",
     "Good luck! Review the job description, prepare two stories about your past work, and have a question "
     "ready for them.",
     "What should I wear?",
     "Dress a step more formal than the company's everyday style, in clothes you feel comfortable in.",
     "the interview"),
    ("I want to start running.",
     "Start with 20-minute sessions three times a week, mixing walking and jogging.",
     "How fast should I go?",
     "Slow enough that you can still talk in full sentences. Speed comes later.", "your running"),
    ("I keep forgetting things.",
     "Write tasks down in one place, set reminders, and get enough sleep.",
     "Any app you suggest?",
     "Any simple to-do or notes app works; the habit matters more than the app.", "staying organized"),
    ("My houseplants keep dying.",
     "Check the light first, water only when the top soil is dry, and use pots with drainage holes.",
     "How often should I fertilize?",
     "About once a month in spring and summer, and rarely in winter.", "your plants"),
    ("I want to learn Spanish.",
     "Practise fifteen minutes a day, learn common phrases first, and listen to Spanish podcasts or songs.",
     "How long until I can hold a conversation?",
     "With daily practice, simple conversations are often possible within a few months.", "your Spanish"),
    ("I never manage to save money.",
     "Move a fixed amount to savings on payday, before you can spend it, and track where the rest goes.",
     "How much should I save?",
     "A common goal is 10 to 20 percent of income, but any steady amount is a good start.", "your savings"),
    ("I procrastinate all the time.",
     "Break tasks into tiny steps and start with just five minutes; starting is usually the hardest part.",
     "What if I get distracted?",
     "Put your phone in another room and work in short timed blocks with breaks.", "getting things done"),
    ("I'm nervous about giving a speech.",
     "Practise out loud several times, know your first minute by heart, and breathe slowly before you start.",
     "What if I forget my words?",
     "Keep short notes with key points; pausing to check them looks natural.", "your speech"),
    ("I'm moving to a new city next month.",
     "Exciting! Explore your neighborhood early, join a club or class, and keep important documents in one "
     "folder.",
     "How do I make friends there?",
     "Say yes to invitations, try a regular activity, and be patient; friendships take time.", "the move"),
    ("I find it hard to focus when working from home.",
     "Set up a fixed workspace, keep regular hours, and take short breaks away from the screen.",
     "Does music help?",
     "Calm music without lyrics helps many people; try it and see.", "working from home"),
    ("I want to cook more at home.",
     "Start with three simple recipes you like and cook them until they feel easy.",
     "What should I buy first?",
     "A sharp knife, a good pan, and staples like rice, eggs, onions and canned tomatoes.", "your cooking"),
    ("I want to read more books.",
     "Read ten pages a day, keep a book where you relax, and drop books you do not enjoy.",
     "Should I try audiobooks?",
     "Yes, audiobooks count too and fit well into commutes and chores.", "your reading"),
    ("I don't drink enough water.",
     "Keep a bottle on your desk, drink a glass with each meal, and set a few reminders.",
     "Does tea count?",
     "Yes, tea and other drinks count toward your daily fluids.", "staying hydrated"),
    ("I had an argument with a friend.",
     "Give it a little time, then talk calmly, listen to their side, and apologize for your part.",
     "What if they stay angry?",
     "Give them space; showing you care without pressure often helps over time.", "your friendship"),
    ("I want to start drawing.",
     "Draw for ten minutes a day, start with simple shapes, and copy objects around you.",
     "Do I need expensive supplies?",
     "No. A pencil, an eraser and cheap paper are enough to start.", "your drawing"),
]
GREETINGS = [
    ("Hello!", "Hello! How can I help you today?"),
    ("Good morning!", "Good morning! What can I do for you today?"),
    ("Good evening!", "Good evening! How can I help?"),
    ("Hey there!", "Hey! What would you like to talk about?"),
    ("Hi, how are you?", "I'm doing well, thanks for asking! How can I help you today?"),
    ("Thanks for your help.", "You're welcome! Let me know if you need anything else."),
    ("Goodbye!", "Goodbye! Have a great day."),
    ("Nice to meet you.", "Nice to meet you too! What can I help you with?"),
    ("I'm bored.", "Let's fix that! We could play a word game, I could suggest a hobby, or you could ask me "
     "something you're curious about."),
    ("Can you help me with something?", "Of course! Tell me what you need and I'll do my best."),
]
FEELINGS = {"nervous": "Feeling nervous is normal before something that matters to you.",
            "stressed": "That sounds stressful; it helps to take things one step at a time.",
            "excited": "That's wonderful, enjoy that excitement!",
            "unsure": "It's okay to feel unsure; most people do at first."}
SITUATIONS = [("my exam next week", "Make a simple study plan and review a little each day.",
               "Test yourself with practice questions instead of only rereading notes."),
              ("starting a new job", "Ask questions early and write down what you learn in the first weeks.",
               "Learn your colleagues' names and ask how they like to work."),
              ("a big presentation", "Rehearse it out loud twice and time yourself.",
               "Open with a clear sentence that says why the topic matters."),
              ("my first day at university", "Arrive early, find your rooms, and talk to one new person.",
               "Join one club in the first month; it makes the place feel smaller."),
              ("a long trip abroad", "Make copies of your documents and pack one day of clothes in your "
               "carry-on.", "Learn a few phrases of the local language; people appreciate it."),
              ("moving house", "Pack one room at a time and label every box with its room.",
               "Keep a box of essentials like chargers, towels and snacks for the first night."),
              ("my driving test", "Practise the test routes and the manoeuvres you find hardest.",
               "Sleep well the night before and arrive with time to spare.")]
EVENTS = [
    ("I just finished my first marathon!", "Congratulations! That takes months of training. How do you feel?",
     "Tired but proud.", "You should be proud. Rest, drink plenty of water, and enjoy the moment."),
    ("I finally got my driving licence!", "Well done! That's a big step. Any plans for your first drive?",
     "Maybe a trip to the coast.", "That sounds lovely. Drive carefully and take breaks on longer trips."),
    ("We adopted a puppy today!", "How exciting! What's the puppy's name?", "We named her Biscuit.",
     "Biscuit is a great name! Give her a quiet corner to rest while she gets used to her new home."),
    ("I got promoted at work!", "Congratulations, that's well deserved! What will your new role involve?",
     "Leading a small team.", "Great! Start by listening to each person on the team and learning how they "
     "work best."),
    ("I baked bread for the first time.", "Nice! How did it turn out?", "A bit flat, honestly.",
     "That's common. Try letting the dough rise longer in a warm spot, and check that your yeast is fresh."),
    ("I passed my exams!", "Congratulations! All that studying paid off. How are you celebrating?",
     "Dinner with friends tonight.", "Perfect way to celebrate. Enjoy it, you earned it!"),
]


def _conversational(p: _Picker) -> Row:
    """Greetings, advice with follow-ups, feelings and small talk."""
    rng = p.rng
    kind = rng.choices(["advice", "greeting", "feeling", "event"], [5, 2, 3, 2])[0]
    if kind == "advice":
        opening, reply, follow, follow_reply, topic = p(ADVICE)
        first = _ask(rng, opening, STATEMENT_OPENERS)
        shape = rng.random()
        if shape < 0.3:
            return _turns(first, reply), None
        if shape < 0.75:
            return _turns(first, reply, follow, follow_reply), None
        thanks = rng.choice(["Thanks, that helps!", "Great, thank you.", "Thanks a lot!"])
        closing = f"You're welcome! Good luck with {topic}."
        return _turns(first, reply, follow, follow_reply, thanks, closing), None
    if kind == "greeting":
        greeting, reply = p(GREETINGS)
        return _turns(greeting, reply), None
    if kind == "feeling":
        feeling = rng.choice(sorted(FEELINGS))
        situation, tip, more = p(SITUATIONS)
        first = f"I'm feeling {feeling} about {situation}."
        reply = f"{FEELINGS[feeling]} {tip}"
        if rng.random() < 0.5:
            return _turns(first, reply), None
        return _turns(first, reply, rng.choice(["Any other tips?", "What else can I do?"]), more), None
    opening, reply, follow, follow_reply = p(EVENTS)
    return _turns(opening, reply, follow, follow_reply), None


GENERATORS: dict[str, Callable[[_Picker], Row]] = {
    "creative_writing": _creative_writing,
    "question_answering": _question_answering,
    "code": _code,
    "analysis_reasoning": _analysis_reasoning,
    "conversational": _conversational,
    "self_cognition": _self_cognition,
}


# --- system prompts and assembly --------------------------------------------------------------

def _replies(messages: list[dict]) -> list[str]:
    """The assistant turns of a conversation."""
    return [m["content"] for m in messages if m["role"] == "assistant"]


# A prompt is attached only to rows whose answers already obey it, so no row contradicts its system.
SYSTEMS: list[tuple[str, Callable[[str, list[dict], str | None], bool]]] = [
    ("You are a helpful assistant.", lambda c, m, a: True),
    ("You are a concise assistant.", lambda c, m, a: True),
    ("You are a friendly assistant. Keep answers short.", lambda c, m, a: True),
    ("Be clear and direct.", lambda c, m, a: True),
    ("Answer in one sentence.", lambda c, m, a: all(_one_sentence(t) for t in _replies(m))),
    ("Reply in 30 words or fewer.", lambda c, m, a: all(_words(t) <= 30 for t in _replies(m))),
    ("Use plain language and avoid jargon.", lambda c, m, a: c in ("question_answering", "conversational")),
    ("You are a Python tutor. Put code in fenced blocks.", lambda c, m, a: c == "code"),
    ("Show your working, then give the final answer.", lambda c, m, a: a is not None),
    ("You are a creative writing assistant.", lambda c, m, a: c == "creative_writing"),
    ("You are {{name}}, an AI assistant developed by {{author}}.", lambda c, m, a: c == "self_cognition"),
    ("You are {{name}}, built by {{author}}. Stay brief.", lambda c, m, a: c == "self_cognition"),
]
SYSTEM_SHARE = 0.2


def _make_unique(rng: random.Random, text: str, seen: set[str]) -> str:
    """A variant of `text` not in `seen`: openers first, then a numbered prefix as the last resort."""
    for _ in range(30):
        candidate = _ask(rng, text)
        if candidate not in seen:
            return candidate
    n = 2
    while f"Request {n}: {text}" in seen:
        n += 1
    return f"Request {n}: {text}"


def _stage(rng: random.Random, picker: _Picker, seen: set[str], counts: dict[str, int]) -> list[dict]:
    """`counts` new rows per category, first messages unique against `seen`, some with a system prompt."""
    rows: list[dict] = []
    for category, count in counts.items():
        made: list[dict] = []
        if category == "self_cognition" and count and SELF_COGNITION_PROBE not in seen:
            # The demo probe must appear verbatim as a whole first message, even in a tiny set.
            messages = _turns(SELF_COGNITION_PROBE, rng.choice(SC_WHO_REPLIES))
            made.append({"category": category, "system": None, "messages": messages, "answer": None})
            seen.add(SELF_COGNITION_PROBE)
        while len(made) < count:
            for _ in range(50):  # pools are finite: redraw a few times before rewording
                messages, answer = GENERATORS[category](picker)
                if messages[0]["content"] not in seen:
                    break
            else:
                messages[0]["content"] = _make_unique(rng, messages[0]["content"], seen)
            seen.add(messages[0]["content"])
            made.append({"category": category, "system": None, "messages": messages, "answer": answer})
        for row in rng.sample(made, round(len(made) * SYSTEM_SHARE)):
            fitting = [s for s, fits in SYSTEMS if fits(category, row["messages"], row["answer"])]
            row["system"] = rng.choice(fitting)
        rows.extend(made)
    rng.shuffle(rows)
    return rows


def builtin_rows(sizes: tuple[int, ...] = (DEFAULT_ROWS, MAX_ROWS), seed: int = 0) -> list[dict]:
    """The data file's rows: one shuffled stage per size, each topping the categories up to its counts."""
    # The first stage alone is what generating `sizes[0]` rows has always given, so the default data
    # stayed the same when it moved from code into the file.
    rng = random.Random(seed)
    picker = _Picker(rng)
    seen: set[str] = set()
    rows: list[dict] = []
    done = dict.fromkeys(CATEGORIES, 0)
    for size in sizes:
        counts = category_counts(size)
        rows += _stage(rng, picker, seen, {c: counts[c] - done[c] for c in CATEGORIES})
        done = counts
    return [{"id": f"builtin-{i:05d}", **row} for i, row in enumerate(rows)]


def write(path: Path) -> None:
    """Write the rows to `path` as JSON lines (UTF-8, non-ASCII kept as is)."""
    lines = [json.dumps(row, ensure_ascii=False) + "\n" for row in builtin_rows()]
    path.write_text("".join(lines), encoding="utf-8", newline="\n")


if __name__ == "__main__":
    write(Path(sys.argv[1]) if len(sys.argv) > 1 else DATA_FILE)
