"""The SFT guide's data mix: label each row's category and difficulty, report the mix, resample towards it.

`classify` keeps a row's own `category` when it names one of the five targets; otherwise the first of
these keyword rules that fires on the opening request decides (all rules are regular expressions below):

1. questions about the assistant itself ("who are you", "who made you", also in Chinese) -> conversational
2. a programming task: code mentioned or asked for, or a code fence anywhere (`sft.text.is_code_task`) -> code
3. a making verb with a genre or piece of writing ("write a poem", "suggest names"), a request that
   opens with "Write", or creative / imaginative / rhyming -> creative_writing
4. a first-person remark that asks nothing ("I'm nervous about my exam.") -> conversational
5. analyse / compare / evaluate / why / calculate / math / logic markers, arithmetic, hypotheticals
   and word problems -> analysis_reasoning
6. a bare greeting or thanks, a request for personal advice, or any multi-turn chat -> conversational
7. anything else: a factual question or task -> question_answering

Difficulty comes from `sft.data.complexity`. `resample` then picks row indices so the category shares
match the targets exactly where the counts allow and the difficulty shares come as close as each
category's rows allow.
"""

from __future__ import annotations

import math
import random
import re
import warnings
from collections import Counter, defaultdict

from ..errors import PrepareError
from ..text import is_code_task, words
from .rows import Row

CATEGORY_TARGETS = {
    "creative_writing": 0.20,
    "question_answering": 0.25,
    "code": 0.15,
    "analysis_reasoning": 0.20,
    "conversational": 0.20,
}
DIFFICULTY_TARGETS = {"simple": 0.30, "medium": 0.50, "complex": 0.20}
FALLBACK = "question_answering"

# Pleasantries a prompt may open with; stripped so "Hi! Write a poem" is read as "Write a poem".
_OPENER = re.compile(
    r"^(?:(?:hi|hello|hey|well|so|ok(?:ay)?|honestly|please|good (?:morning|afternoon|evening))"
    r"\b[\s,.!:;-]*)+",
    re.I,
)
# Questions about the assistant itself (self-cognition), which the guide files under conversation.
_SELF = re.compile(
    r"\b(?:who|what) (?:are|r) you\b|\bwho is this\b|\byour (?:name|creator|developer|maker|purpose)\b"
    r"|\b(?:make|made|build|built|create|created|develop|developed|train|trained|design|designed) you\b"
    r"|\byou (?:made|built|created|developed|trained|designed) by\b|\b(?:call|address) you\b|\bbehind you\b"
    r"|\b(?:introduce|describe|about) yourself\b|\bare you (?:based on|built on|powered by)\b"
    r"|\bwhere do you (?:come from|live)\b|\bhow old are you\b|\bwhat (?:can|do) you do\b"
    r"|\bcan you make mistakes\b"
    r"|\bare you (?:a |an |always |ever )?(?:human|person|real|robot|bot|ai|machine|alive|sentient|conscious"
    r"|right|correct|accurate|reliable|intelligent|smart|product of)\b|\bwho you are\b"
    r"|\bdo you (?:have (?:feelings|emotions|a name|a body|internet)|get tired|sleep|dream|feel|remember)\b"
    r"|\bcan you (?:browse|access the internet|search the (?:web|internet)|see|hear|remember|feel|learn)\b"
    r"|\b(?:what|which) (?:kind|sort|type) of (?:ai|assistant|bot|chatbot|model|program) are you\b"
    r"|\b(?:am i|are we) (?:talking|chatting|speaking) (?:to|with)\b"
    r"|\b(?:talking|chatting|speaking) (?:to|with) (?:a |an )?(?:real )?(?:person|human|bot|machine|ai)\b"
    r"|\bhow (?:can|could|do) you help\b|^(?:can|could) you help(?: me)?(?: out| with something)?\W*$",
    re.I,
)
# The same in Chinese, as self-cognition sets often mix languages: greetings, and "you" asked about itself.
_SELF_ZH = re.compile(
    r"^(?:你好|您好|嗨|嘿|谢谢|早上好|下午好|晚上好)|介绍一下?你|(?:开发|创造|制作|训练|打造|设计|发明)了?你"
    r"|你(?:身份|是|叫|的|自己|来自|能|会|可以|有|具备|如何|与其他|为什么|对用户)"
)
# "Are you GPT-4?", "Is this Cortana?": a proper name asked about the assistant (case-sensitive).
_SELF_NAME = re.compile(r"\b(?:[Aa]re you|[Ii]s this) [A-Z][\w.-]*(?: [A-Z][\w.-]*)*\?")
# Creative writing is asked for: a making verb with a genre or a piece of writing, or a leading "Write".
_MAKE = (
    r"\b(?:write|compose|draft|rewrite|re-write|paraphrase|rephrase|create|generate|make(?: up)?|come up with"
    r"|give me|tell(?: me)?|invent|craft|produce|brainstorm|suggest|start|begin|continue|finish|complete"
    r"|need|like|want|provide|turn|convert|find)\b"
)
_WRITING = (
    r"\b(?:poem|poetry|story|stories|storyline|song|lyrics|haiku|limerick|sonnet|rap|verses?|lines|fable"
    r"|fairy ?tale|tale|novel|screenplay|script|dialogue|monologue|scene|character|slogan|tagline"
    r"|catchphrase|jingle|motto|joke|pun|riddle|metaphor|simile|names?|titles?|headlines?|descriptions?|ad"
    r"|advertisement|blurb|blog(?: post)?|article|essay|letter|e-?mail|speech|message|card|tweet|post"
    r"|caption|review|toast|invitation|paragraph|sentences?)\b"
)
_CREATIVE = re.compile(
    rf"{_MAKE}.*{_WRITING}|^(?:write|compose|draft)\b"
    r"|\b(?:creative|creatively|imaginative|imagine|fictional|rhym\w*)\b",
    re.I | re.S,
)
_ANALYSIS = re.compile(
    r"\b(?:analy[sz]e|analysis|compare|comparison|contrast|evaluate|assess|critique|critically"
    r"|pros and cons|advantages|disadvantages|trade-?offs?|implications?|justify|argue|argument|reasoning"
    r"|logic|logical|deduce|infer|inference|calculate|compute|solve|equation|probability|percent(?:age)?"
    r"|average|math\w*|arithmetic|prime|sequence|puzzle|prove|proof|estimate|predict|why|effects?|impact"
    r"|classify|categori[sz]e|rank|sort|choose between|decide|should (?:i|we|a|an|the|you)"
    r"|is it (?:better|worse|wise|worth|a good idea|a bad idea))\b"
    r"|\bwhich\b.*\b(?:better|worse|best|worst|more|less|larger|smaller|faster|slower|cheaper)\b"
    r"|^if\b.*\b(?:what|how|which|who|will|would)\b"  # a hypothetical to reason through
    r"|\d.*\b\d.*\bhow (?:many|much|far|long|old)\b"  # a word problem: quantities, then a question
    r"|\b\w+er than\b|\d\s*[-+*/×÷^]\s*\d|(?<![\w/])\d+/\d+(?![\w/])",
    re.I | re.S,
)
_GREETING = re.compile(
    r"^(?:hi|hello|hey|howdy|greetings|good (?:morning|afternoon|evening|night)|how are you\w*|what'?s up"
    r"|thanks?(?: you)?\w*|nice to meet you|bye|goodbye|see you)\b",
    re.I,
)
# A first-person remark rather than a question: "I'm feeling nervous", "My plants keep dying."
_REMARK = re.compile(r"^(?:i|i'm|i am|i've|i feel|my)\b[^?]*$", re.I)
_ADVICE = re.compile(
    r"\b(?:any (?:tips|advice)|what should i do|advice|how (?:can|do|should) i (?:cope|deal|stop|handle"
    r"|overcome|get over|calm))\b",
    re.I,
)


def classify(row: Row) -> str:
    """The row's own category when it is a target one, else the first rule that fires (see `_rules`)."""
    own = row.conversation.get("category")
    if own in CATEGORY_TARGETS:
        return own
    return _rules(row)


def _rules(row: Row) -> str:
    """The first keyword rule that fires, in the order the module docstring lists them."""
    messages = row.conversation["messages"]
    opening = row.instruction.strip()
    first = _OPENER.sub("", opening)
    # A code fence anywhere (a reply that is code) marks code; the other signals read the opening request.
    everything = "\n".join(m.get("content") or "" for m in messages)
    if _SELF.search(first) or _SELF_NAME.search(first) or _SELF_ZH.search(first):
        return "conversational"
    if is_code_task(first, everything):
        return "code"
    if _CREATIVE.search(first):
        return "creative_writing"
    if _REMARK.search(first):
        return "conversational"
    if _ANALYSIS.search(first):
        return "analysis_reasoning"
    users = sum(1 for m in messages if m["role"] == "user")
    # "Hey there!": nothing but a greeting once the opener is gone; "Hi! What is X?" is a question.
    greeting = (_GREETING.search(first) and len(words(first)) <= 6) or (
        first != opening and len(words(first)) <= 1
    )
    if not first or greeting or _ADVICE.search(first) or users > 1:
        return "conversational"
    return FALLBACK


def mix_report(labels: list[str], targets: dict[str, float]) -> list[dict]:
    """Per label: count, share of all labels, target and gap (share - target); targets first, others after."""
    counts = Counter(labels)
    total = len(labels)
    extra = sorted(name for name in counts if name not in targets)
    return [
        {
            "name": name,
            "count": counts[name],
            "share": counts[name] / total if total else 0.0,
            "target": targets.get(name, 0.0),
            "gap": (counts[name] / total if total else 0.0) - targets.get(name, 0.0),
        }
        for name in [*targets, *extra]
    ]


def _check_targets(targets: dict[str, float], name: str) -> dict[str, float]:
    """`targets` scaled to sum to 1; a negative share, or none above zero, is a setting error."""
    if any(not share >= 0 for share in targets.values()) or not sum(targets.values()) > 0:
        raise PrepareError(f"{name}: shares must be >= 0 with at least one above 0, got {targets}")
    total = sum(targets.values())
    return {k: v / total for k, v in targets.items()}


def allocate(total: int, weights: dict[str, float], caps: dict[str, float]) -> dict[str, int]:
    """`total` split into integers proportional to `weights` (largest remainders), none above its cap.

    What a capped name cannot take goes to the others in proportion to their weights; once every
    weighted name is full, names of weight 0 take the rest in proportion to their room. Fewer than
    `total` are allocated only when the caps hold fewer.
    """
    counts = {name: 0 for name in caps}
    order = {name: i for i, name in enumerate(caps)}
    remaining = min(total, sum(caps.values()))
    while remaining > 0:
        open_ = [name for name in caps if counts[name] < caps[name]]
        share = {name: weights.get(name, 0.0) for name in open_}
        if not sum(share.values()) > 0:  # only untargeted names have room: fill them by their room
            share = {name: min(caps[name] - counts[name], remaining) for name in open_}
        scale = remaining / sum(share.values())
        quota = {name: share[name] * scale for name in open_}
        # Floors first (the 1e-9 absorbs float error in e.g. 0.2 * 100), then the largest remainders.
        given = {name: math.floor(quota[name] + 1e-9) for name in open_}
        by_remainder = sorted(open_, key=lambda n: (-(quota[n] - given[n]), order[n]))
        for name in by_remainder[: max(0, remaining - sum(given.values()))]:
            given[name] += 1
        for name in open_:
            take = min(given[name], caps[name] - counts[name])
            counts[name] += take
            remaining -= take
    return counts


def _sample_size(available: Counter, targets: dict[str, float], size: int | None, replace: bool) -> int:
    """Rows to draw: `size` when the counts allow it, else the largest sample matching the targets."""
    if replace:
        return sum(available.values()) if size is None else size
    # The 1e-9 keeps 20 rows at a 0.2 target from flooring to 99 because 20 / 0.2 is 99.999...
    largest = min(math.floor(available[c] / t + 1e-9) for c, t in targets.items() if t > 0)
    if size is None:
        return largest
    if size > largest:
        warnings.warn(
            f"balance: size={size} needs more rows than the category counts allow without "
            f"replacement; drawing the largest matching sample, {largest} rows",
            stacklevel=3,
        )
        return largest
    return size


def _present_targets(available: Counter, targets: dict[str, float]) -> dict[str, float]:
    """The targets of categories that have rows; a missing category's share goes to the others pro rata."""
    missing = [c for c, t in targets.items() if t > 0 and not available[c]]
    if missing:
        warnings.warn(
            f"balance: no rows for {', '.join(missing)} (target "
            f"{', '.join(f'{targets[c]:.0%}' for c in missing)}); their share is spread over the "
            f"other categories in proportion to their targets",
            stacklevel=3,
        )
    kept = {c: t for c, t in targets.items() if t > 0 and available[c]}
    if not sum(kept.values()) > 0:
        raise PrepareError(f"balance: no rows in any category with a target above 0 ({', '.join(targets)})")
    return _check_targets(kept, "category targets")


def resample(
    categories: list[str],
    difficulties: list[str],
    category_targets: dict[str, float] = CATEGORY_TARGETS,
    difficulty_targets: dict[str, float] = DIFFICULTY_TARGETS,
    size: int | None = None,
    replace: bool = False,
    seed: int = 0,
) -> list[int]:
    """Row indices, shuffled, whose category mix matches the targets and difficulty mix comes closest.

    Without replacement: the largest sample with the target category shares (the smallest count /
    target over the categories), or `size` rows when that many fit; within each category, rows per
    difficulty follow the difficulty targets and spill into other difficulties when one runs short.
    With replacement: exactly `size` rows (default: as many as given), both mixes exact wherever a
    category has a row of each difficulty, rows repeated as evenly as possible. A category with a
    target but no rows is warned about (`warnings`) and its share spread over the others pro rata;
    rows whose label has no target are never drawn. Deterministic for a seed.
    """
    if len(categories) != len(difficulties):
        raise PrepareError(f"balance: {len(categories)} categories but {len(difficulties)} difficulties")
    if size is not None and size < 0:
        raise PrepareError(f"balance: size={size} must be >= 0")
    cat_targets = _check_targets(category_targets, "category targets")
    diff_targets = _check_targets(difficulty_targets, "difficulty targets")
    buckets: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for index, (category, level) in enumerate(zip(categories, difficulties, strict=True)):
        buckets[category][level].append(index)
    available = Counter({c: sum(len(rows) for rows in by_level.values()) for c, by_level in buckets.items()})
    cat_targets = _present_targets(available, cat_targets)
    total = _sample_size(available, cat_targets, size, replace)

    per_category = allocate(
        total, cat_targets, {c: math.inf if replace else available[c] for c in cat_targets}
    )
    rng = random.Random(seed)
    picked: list[int] = []
    for category, count in per_category.items():
        by_level = buckets[category]
        levels = [*diff_targets, *sorted((lv for lv in by_level if lv not in diff_targets), key=str)]
        room = {lv: (math.inf if replace else len(by_level[lv])) if by_level.get(lv) else 0 for lv in levels}
        for level, n in allocate(count, diff_targets, room).items():
            picked.extend(_draw(by_level.get(level, []), n, rng))
    rng.shuffle(picked)
    return picked


def _draw(indices: list[int], n: int, rng: random.Random) -> list[int]:
    """`n` of `indices` at random: each once, or when `n` is larger, whole shuffled rounds then a part."""
    if not n:
        return []
    rounds, rest = divmod(n, len(indices))
    drawn = []
    for _ in range(rounds):
        drawn.extend(rng.sample(indices, len(indices)))
    return drawn + rng.sample(indices, rest)
