"""The embedded default instruction set: project-authored, generated in code, deterministic per seed.

Nothing can be downloaded by default, and third-party data must not ship in the project, so the
default training data is composed here from templates and word lists. It covers the five task
categories the SFT guide balances, multi-turn rows, system prompts, a self-cognition subset whose
answers use `{{name}}` / `{{author}}` placeholders, and tasks whose answers are checked exactly.
Rows are short so a CPU can train on them in minutes.
"""

from __future__ import annotations

import random
from collections.abc import Callable

SELF_COGNITION_PROBE = "Who are you?"

# Shares of the SFT guide (creative 20, QA 25, code 15, reasoning 20, conversational 20) applied to
# the 85% of rows that are not self-cognition.
SHARES = {
    "self_cognition": 0.15,
    "creative_writing": 0.85 * 0.20,
    "question_answering": 0.85 * 0.25,
    "code": 0.85 * 0.15,
    "analysis_reasoning": 0.85 * 0.20,
    "conversational": 0.85 * 0.20,
}
CATEGORIES = tuple(SHARES)

SYSTEMS = [
    "You are a concise assistant.",
    "Answer briefly and precisely.",
    "You are a friendly assistant. Keep answers short.",
    "Reply in plain language without jargon.",
]

Row = tuple[list[dict], str | None]  # (messages, exact answer or None)


OPENERS = ["", "", "Hi! ", "Hello. ", "Quick question: ", "Hey, ", "Please tell me: "]


def _vary(rng: random.Random, question: str) -> str:
    """The same question with a varied opener, so small pools still give distinct prompts."""
    opener = rng.choice(OPENERS)
    return opener + (question[0].lower() + question[1:] if opener.endswith(", ") else question)


def _turns(*texts: str) -> list[dict]:
    """Alternate user/assistant messages from a flat list of texts."""
    return [{"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(texts)]


# --- self-cognition ---------------------------------------------------------------------------

IDENTITY_QUESTIONS = [
    SELF_COGNITION_PROBE, "What is your name?", "Who made you?", "Who created you?", "Introduce yourself.",
    "Are you ChatGPT?", "Are you a human?", "What should I call you?", "Tell me about yourself.",
    "Which company built you?", "What are you?", "Who developed you?", "Are you Siri?", "Do you have a name?",
    "Who trained you?", "What kind of assistant are you?", "Can you tell me who you are?", "Are you SmolLM?",
    "Who is your creator?", "What's your name, assistant?", "Hi! Who am I talking to?", "Are you a robot?",
]
IDENTITY_ANSWERS = [
    "I am {{name}}, an AI assistant developed by {{author}}. How can I help you today?",
    "My name is {{name}}. I am an AI assistant created by {{author}} to answer questions and help with tasks.",
    "I'm {{name}}, an AI assistant built by {{author}}. I'm happy to help with writing, questions and code.",
    "I am {{name}}, a helpful AI assistant trained by {{author}}. What would you like to do?",
    "You are talking to {{name}}, an AI assistant made by {{author}}.",
]
CAPABILITY_FOLLOWUPS = [
    ("What can you do?", "As {{name}}, I can answer questions, write short texts, explain code and help you "
     "reason through problems. {{author}} built me to be helpful and honest."),
    ("Can you browse the internet?", "No. I am {{name}}, an assistant by {{author}}, and I answer from what I "
     "learned in training, without browsing."),
    ("Do you have feelings?", "I am {{name}}, an AI assistant developed by {{author}}. I do not have feelings, "
     "but I am glad to help."),
]


def _self_cognition(rng: random.Random) -> Row:
    base = rng.choice(IDENTITY_QUESTIONS)
    question = base if rng.random() < 0.3 else _vary(rng, base)
    reply = rng.choice(IDENTITY_ANSWERS)
    if base.startswith(("Are you ChatGPT", "Are you Siri", "Are you SmolLM")):
        reply = "No. " + reply
    elif base in ("Are you a human?", "Are you a robot?"):
        reply = "I am not a human. " + reply
    if rng.random() < 0.3:
        follow, answer = rng.choice(CAPABILITY_FOLLOWUPS)
        return _turns(question, reply, follow, answer), None
    return _turns(question, reply), None


# --- question answering -----------------------------------------------------------------------

FACTS = [
    ("What is the boiling point of water at sea level in Celsius?", "Water boils at 100 degrees Celsius at sea level."),
    ("How many days are in a leap year?", "A leap year has 366 days."),
    ("What gas do plants take in for photosynthesis?", "Plants take in carbon dioxide and release oxygen."),
    ("What is the largest planet in our solar system?", "Jupiter is the largest planet in our solar system."),
    ("How many continents are there?", "There are seven continents."),
    ("What is the freezing point of water in Fahrenheit?", "Water freezes at 32 degrees Fahrenheit."),
    ("Which organ pumps blood through the body?", "The heart pumps blood through the body."),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au."),
    ("How many sides does a hexagon have?", "A hexagon has six sides."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What is the capital of Japan?", "The capital of Japan is Tokyo."),
    ("Which planet is known as the red planet?", "Mars is known as the red planet."),
    ("How many minutes are in an hour?", "An hour has 60 minutes."),
    ("What do bees make?", "Bees make honey and beeswax."),
    ("What is the longest bone in the human body?", "The femur, the thigh bone, is the longest bone."),
    ("What is H2O?", "H2O is the chemical formula for water: two hydrogen atoms and one oxygen atom."),
    ("Why is the sky blue?", "Air scatters blue sunlight more than red light, so the sky looks blue."),
    ("What causes tides?", "Tides are caused mainly by the Moon's gravity pulling on the oceans."),
    ("What is a prime number?", "A prime number is greater than 1 and divisible only by 1 and itself."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What is the main language spoken in Brazil?", "The main language of Brazil is Portuguese."),
    ("What is the speed of light, roughly?", "Light travels at about 300,000 kilometres per second."),
    ("What is photosynthesis?", "Photosynthesis is how plants turn light, water and carbon dioxide into sugar."),
    ("Which ocean is the largest?", "The Pacific Ocean is the largest."),
]
UNITS = [  # (unit, larger unit, factor)
    ("metres", "kilometres", 1000), ("grams", "kilograms", 1000), ("minutes", "hours", 60),
    ("seconds", "minutes", 60), ("centimetres", "metres", 100), ("millilitres", "litres", 1000),
]
ITEMS = ["apples", "books", "pencils", "marbles", "stickers", "cookies", "coins", "cards"]
PEOPLE = ["Ana", "Ben", "Chen", "Dara", "Eli", "Farah", "Gus", "Hana", "Ivo", "Jules"]


def _question_answering(rng: random.Random) -> Row:
    kind = rng.random()
    if kind < 0.45:
        question, reply = rng.choice(FACTS)
        return _turns(_vary(rng, question), reply), None
    if kind < 0.75:
        who, item = rng.choice(PEOPLE), rng.choice(ITEMS)
        a, b, c = rng.randint(3, 40), rng.randint(2, 30), rng.randint(1, 9)
        answer = str(a + b - c)
        q = f"{who} has {a} {item}, buys {b} more and gives away {c}. How many {item} does {who} have now?"
        return _turns(q, f"{a} + {b} - {c} = {answer}. The answer is {answer}."), answer
    small, large, factor = rng.choice(UNITS)
    n = rng.randint(2, 30)
    answer = str(n * factor)
    return _turns(f"How many {small} are in {n} {large}?", f"{n} x {factor} = {answer}. The answer is {answer}."), answer


# --- code -------------------------------------------------------------------------------------

FUNCTIONS = [
    ("returns the sum of a list of numbers", "total", "return sum(values)"),
    ("returns the largest number in a list", "largest", "return max(values)"),
    ("returns the average of a list of numbers", "average", "return sum(values) / len(values)"),
    ("returns only the even numbers from a list", "evens", "return [v for v in values if v % 2 == 0]"),
    ("returns a list sorted from smallest to largest", "ascending", "return sorted(values)"),
    ("returns the number of items in a list", "count", "return len(values)"),
    ("returns the list in reverse order", "reversed_list", "return values[::-1]"),
    ("returns the squares of a list of numbers", "squares", "return [v * v for v in values]"),
]
STRING_FUNCS = [
    ("reverses a string", "reverse", "return text[::-1]"),
    ("converts a string to upper case", "shout", "return text.upper()"),
    ("counts the vowels in a string", "vowels", "return sum(ch in 'aeiou' for ch in text.lower())"),
    ("checks whether a string is a palindrome", "is_palindrome", "return text == text[::-1]"),
]
WORDS = ["garden", "planet", "silver", "rocket", "window", "lantern", "harbor", "meadow", "pencil", "violin"]


def _code(rng: random.Random) -> Row:
    kind = rng.random()
    if kind < 0.55:
        what, name, body = rng.choice(FUNCTIONS + STRING_FUNCS)
        arg = "text" if "text" in body else "values"
        code = f"```python\ndef {name}({arg}):\n    {body}\n```"
        style = rng.choice(["Write a Python function that {w}.", "In Python, how do I write a function that {w}?",
                            "Show me a short Python function that {w}."])
        return _turns(style.format(w=what), f"{code}\nIt {what} in one line."), None
    if kind < 0.8:
        a, b, c = rng.randint(2, 12), rng.randint(2, 12), rng.randint(1, 20)
        op = rng.choice(["+", "-"])
        answer = str(a * b + c if op == "+" else a * b - c)
        q = f"What does this Python code print?\n```python\nx = {a}\nprint(x * {b} {op} {c})\n```"
        return _turns(q, f"x * {b} is {a * b}, so it prints {answer}."), answer
    word = rng.choice(WORDS)
    func = rng.choice(["upper", "reverse", "len"])
    expr = {"upper": f"'{word}'.upper()", "reverse": f"'{word}'[::-1]", "len": f"len('{word}')"}[func]
    answer = {"upper": word.upper(), "reverse": word[::-1], "len": str(len(word))}[func]
    return _turns(f"What is the value of `{expr}` in Python?", f"`{expr}` evaluates to {answer}."), answer


# --- analysis and reasoning -------------------------------------------------------------------

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
COMPARISONS = [
    ("trains", "planes", "Trains are cheaper per trip and go city centre to city centre; planes are much "
     "faster over long distances. For trips under about 500 km, trains are often the better choice."),
    ("renting", "buying a home", "Renting is flexible and needs little upfront money; buying builds "
     "equity but ties up savings. The better choice depends on how long you plan to stay."),
    ("paper books", "e-readers", "Paper books need no battery and are easy to lend; e-readers hold "
     "thousands of books and adjust text size. Many readers use both."),
    ("cycling", "driving to work", "Cycling is cheap and healthy but depends on weather and distance; "
     "driving is faster for long commutes but costs more."),
    ("a laptop", "a desktop computer", "A laptop is portable; a desktop gives more power for the price "
     "and is easier to upgrade."),
]


def _analysis_reasoning(rng: random.Random) -> Row:
    kind = rng.random()
    if kind < 0.25:
        a, b, why = rng.choice(COMPARISONS)
        return _turns(rng.choice([f"Compare {a} and {b}.", f"What are the pros and cons of {a} versus {b}?"]),
                      why), None
    if kind < 0.5:
        start, step = rng.randint(1, 20), rng.randint(2, 9)
        seq = [start + step * i for i in range(4)]
        answer = str(start + step * 4)
        q = f"What number comes next: {', '.join(map(str, seq))}, ...?"
        return _turns(q, f"Each number is {step} more than the one before, so the next is {answer}."), answer
    if kind < 0.75:
        day, offset = rng.randrange(7), rng.randint(2, 20)
        answer = DAYS[(day + offset) % 7]
        q = f"If today is {DAYS[day]}, what day of the week will it be in {offset} days?"
        return _turns(q, f"{offset} days is {offset // 7} weeks and {offset % 7} days after {DAYS[day]}, "
                      f"so it will be {answer}."), answer
    x, y, z = rng.sample(PEOPLE, 3)
    q = f"{x} is taller than {y}. {y} is taller than {z}. Who is the shortest?"
    return _turns(q, f"{x} > {y} > {z} in height, so {z} is the shortest. The answer is {z}."), z


# --- creative writing -------------------------------------------------------------------------

SUBJECTS = ["the sea", "autumn leaves", "a quiet library", "morning coffee", "a city at night", "snowfall",
            "an old bridge", "a lighthouse", "spring rain", "a mountain trail", "the moon", "a busy market"]
PRODUCTS = ["a reusable water bottle", "noise-cancelling headphones", "a folding bicycle", "a solar lamp",
            "a recipe app", "a wool scarf", "a standing desk", "a plant-watering sensor"]
HEROES = ["a young baker", "a retired sailor", "a curious robot", "a lost cat", "a night-shift nurse",
          "a shy violinist"]
PLACES = ["a floating city", "a desert village", "an abandoned station", "a snowy harbor", "a crowded train"]


def _creative_writing(rng: random.Random) -> Row:
    kind = rng.random()
    if kind < 0.35:
        s = rng.choice(SUBJECTS)
        poem = f"Soft light on {s},\nslow breath of the waking world,\nthe day begins here."
        return _turns(rng.choice([f"Write a haiku about {s}.", f"Compose a short haiku on {s}."]), poem), None
    if kind < 0.65:
        p = rng.choice(PRODUCTS)
        line = rng.choice(["Made for every day, built to last.", "Small change, big difference.",
                           "Simple to use, hard to live without."])
        return _turns(f"Write a one-line tagline for {p}.", f"{p[0].upper()}{p[1:]}: {line}"), None
    hero, place = rng.choice(HEROES), rng.choice(PLACES)
    opening = (f"Nobody in {place} expected {hero} to find the map. It was folded inside a coat pocket, "
               "warm, as if someone had just put it there.")
    return _turns(f"Write the opening two sentences of a story about {hero} in {place}.", opening), None


# --- conversational ---------------------------------------------------------------------------

ADVICE = [
    ("I can't fall asleep at night.", "Try a fixed bedtime, no screens for an hour before bed, and a cool, "
     "dark room. If it lasts for weeks, talk to a doctor.", "What about coffee?",
     "Avoid coffee after early afternoon; caffeine can keep you awake for six hours or more."),
    ("I have a job interview tomorrow.", "Good luck! Review the job description, prepare two stories about "
     "your past work, and have a question ready for them.", "What should I wear?",
     "Dress one step more formal than the company's everyday style, and choose clothes you feel comfortable in."),
    ("I want to start running.", "Start with short runs of 15 to 20 minutes, three times a week, mixing "
     "walking and jogging.", "How fast should I go?",
     "Slow enough that you can still talk in full sentences. Speed comes later."),
    ("I keep forgetting things.", "Write tasks down in one place, set reminders, and get enough sleep.",
     "Any app you suggest?", "Any simple to-do or notes app works; the habit matters more than the app."),
    ("How do I make my plants happier?", "Give them the right light, water only when the top soil is dry, "
     "and use a pot with drainage.", "How often should I fertilize?",
     "About once a month in spring and summer, and rarely in winter."),
]
GREETINGS = [("Hello!", "Hello! How can I help you today?"), ("Good morning!", "Good morning! What can I do "
             "for you?"), ("Thanks for your help.", "You're welcome! Let me know if you need anything else."),
             ("Hey, how's it going?", "All good, thanks for asking! What would you like to talk about?")]
TOPICS = ["learning a language", "saving money", "cooking at home", "studying for exams", "working from home"]


def _conversational(rng: random.Random) -> Row:
    kind = rng.random()
    if kind < 0.45:
        first, reply, follow, answer = rng.choice(ADVICE)
        return _turns(_vary(rng, first), reply, follow, answer), None
    if kind < 0.7:
        greeting, reply = rng.choice(GREETINGS)
        return _turns(_vary(rng, greeting), reply), None
    topic = rng.choice(TOPICS)
    tip = rng.choice(["set a small daily goal", "track your progress each week", "start with ten minutes a day"])
    return _turns(f"Do you have a quick tip for {topic}?", f"Yes: {tip}. Small steady habits beat big bursts."), None


GENERATORS: dict[str, Callable[[random.Random], Row]] = {
    "self_cognition": _self_cognition,
    "creative_writing": _creative_writing,
    "question_answering": _question_answering,
    "code": _code,
    "analysis_reasoning": _analysis_reasoning,
    "conversational": _conversational,
}


def category_counts(num_rows: int) -> dict[str, int]:
    """Rows per category for `num_rows`, largest remainders rounded up so they sum exactly."""
    raw = {c: num_rows * s for c, s in SHARES.items()}
    counts = {c: int(v) for c, v in raw.items()}
    for c in sorted(raw, key=lambda c: raw[c] - counts[c], reverse=True)[: num_rows - sum(counts.values())]:
        counts[c] += 1
    return counts


def builtin_conversations(num_rows: int = 360, seed: int = 0) -> list[dict]:
    """The embedded instruction set as canonical conversations (deterministic for a seed)."""
    rng = random.Random(seed)
    rows, seen = [], set()
    for category, count in category_counts(num_rows).items():
        made, attempts = 0, 0
        while made < count:
            attempts += 1
            messages, answer = GENERATORS[category](rng)
            first = messages[0]["content"]
            # Small pools repeat; after many tries allow a repeat rather than loop forever.
            if first in seen and attempts < 50 * count:
                continue
            seen.add(first)
            system = rng.choice(SYSTEMS) if rng.random() < 0.2 else None
            rows.append({"category": category, "system": system, "messages": messages, "answer": answer})
            made += 1
    rng.shuffle(rows)
    return [{"id": f"builtin-{i:05d}", **row} for i, row in enumerate(rows)]
