"""The embedded instruction set: questions whose short answers are computed from offline sources.

Each *relation* pairs a list of facts with a few question templates. Answers are computed, never
typed in: read from WordNet, countryinfo and periodictable (`knowledge.py`) or calculated
(arithmetic with Python integers, calendar questions with `datetime` / `calendar`). Answers are one
word, a name or a number, so a tiny model can learn them and exact match can score them.

    relation            kind       example
    capital_of          recalled   What is the capital of Peru? -> Lima
    continent_of        recalled   On which continent is Peru? -> Americas
    element_symbol      recalled   What is the chemical symbol of iron? -> Fe
    element_number      recalled   What is the atomic number of iron? -> 26
    element_of_symbol   recalled   Which element has the symbol Fe? -> iron
    antonym             recalled   What is the opposite of hot? -> cold        (WordNet adjectives)
    synonym             recalled   Give another word for big. -> large         (WordNet synsets)
    definition          recalled   Which word means a young dog? -> puppy      (WordNet glosses)
    addition            computed   What is 7 plus 12? -> 19
    subtraction         computed   What is 20 minus 6? -> 14
    multiplication      computed   What is 7 times 8? -> 56
    weekday_of_date     computed   What day of the week was March 3, 2015? -> Tuesday
    days_between        computed   How many days are there from March 3, 2023 to March 20, 2023? -> 17
    month_after         computed   Which month comes 3 months after November? -> February
    days_in_month       computed   How many days are in February 2024? -> 29

Held out for dev/test, so accuracy measures generalisation rather than memory:

- templates: every relation's last template never appears in train; dev/test ask with it
  (`holdout="template"`).
- entities: a computed relation's facts are split, `heldout_entity_fraction` of them (e.g. the
  operand pairs 7 + 12) never appear in train, and dev/test ask about them with seen templates
  (`"entity"`) and with the held-out template (`"entity+template"`). A recalled fact cannot be
  derived, so its dev/test questions are about facts train taught, asked in the held-out wording.

Dev and test ask about disjoint facts. Deterministic for a `seed`: each relation draws from its own
`random.Random(f"{seed}-{relation}")`, so adding a relation does not change the others.
"""

from __future__ import annotations

import calendar
import datetime
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from datamodules import knowledge
from datamodules.instructions import InstructionPair

SPLITS: tuple[str, ...] = ("train", "dev", "test")


@dataclass(frozen=True)
class Fact:
    """One question subject (`slots` fill a template) with its computed response and accepted answers."""

    key: str
    slots: dict
    response: str
    answers: tuple[str, ...]


@dataclass(frozen=True)
class Relation:
    """Facts of one kind and the templates that ask about them; the last template is held out."""

    name: str
    kind: str
    """`computed` (derivable: facts are held out too) or `recalled` (only templates are held out)."""
    templates: tuple[str, ...]
    facts: Callable[[GeneratedInstructionsConfig], list[Fact]]


def _numbers(value: int) -> tuple[str, ...]:
    return (str(value),)


def _arithmetic(op: str, a_range: range, b_range: range, rule: Callable[[int, int], int | None]) -> Callable:
    def facts(config: GeneratedInstructionsConfig) -> list[Fact]:
        out = []
        for a in a_range:
            for b in b_range:
                value = rule(a, b)
                if value is not None:
                    out.append(Fact(f"{a}{op}{b}", {"a": a, "b": b}, str(value), _numbers(value)))
        return out

    return facts


def _date_text(day: datetime.date) -> str:
    return f"{calendar.month_name[day.month]} {day.day}, {day.year}"


def _weekday_facts(config: GeneratedInstructionsConfig) -> list[Fact]:
    start, end = datetime.date(1990, 1, 1), datetime.date(2030, 12, 31)
    rng = random.Random(f"{config.seed}-weekday-dates")
    days = sorted(rng.sample(range((end - start).days + 1), config.max_facts_per_relation))
    out = []
    for offset in days:
        day = start + datetime.timedelta(days=offset)
        name = calendar.day_name[day.weekday()]
        out.append(Fact(day.isoformat(), {"date": _date_text(day)}, name, (name,)))
    return out


def _days_between_facts(config: GeneratedInstructionsConfig) -> list[Fact]:
    rng = random.Random(f"{config.seed}-days-between")
    out, seen = [], set()
    while len(out) < config.max_facts_per_relation:
        first = datetime.date(2023, 1, 1) + datetime.timedelta(days=rng.randrange(300))
        gap = rng.randint(1, 60)
        if (first, gap) in seen:
            continue
        seen.add((first, gap))
        second = first + datetime.timedelta(days=gap)
        out.append(Fact(f"{first}+{gap}", {"first": _date_text(first), "second": _date_text(second)}, str(gap), _numbers(gap)))
    return sorted(out, key=lambda f: f.key)


def _month_after_facts(config: GeneratedInstructionsConfig) -> list[Fact]:
    out = []
    for month in range(1, 13):
        for n in range(1, 12):
            after = calendar.month_name[(month - 1 + n) % 12 + 1]
            span = "1 month" if n == 1 else f"{n} months"
            out.append(Fact(f"{month}+{n}", {"month": calendar.month_name[month], "span": span}, after, (after,)))
    return out


def _days_in_month_facts(config: GeneratedInstructionsConfig) -> list[Fact]:
    out = []
    for year in range(1990, 2031):
        for month in range(1, 13):
            days = calendar.monthrange(year, month)[1]
            out.append(Fact(f"{year}-{month}", {"month": calendar.month_name[month], "year": year}, str(days), _numbers(days)))
    return out


def _capital_facts(config: GeneratedInstructionsConfig) -> list[Fact]:
    return [Fact(c.name, {"country": c.name}, c.capital, (c.capital,)) for c in knowledge.countries()]


def _continent_facts(config: GeneratedInstructionsConfig) -> list[Fact]:
    aliases = {"Americas": ("Americas", "America")}
    return [
        Fact(c.name, {"country": c.name}, c.continent, aliases.get(c.continent, (c.continent,)))
        for c in knowledge.countries()
    ]


def _element_symbol_facts(config: GeneratedInstructionsConfig) -> list[Fact]:
    return [Fact(e.name, {"element": e.name}, e.symbol, (e.symbol,)) for e in knowledge.elements()]


def _element_number_facts(config: GeneratedInstructionsConfig) -> list[Fact]:
    return [Fact(e.name, {"element": e.name}, str(e.number), _numbers(e.number)) for e in knowledge.elements()]


def _element_of_symbol_facts(config: GeneratedInstructionsConfig) -> list[Fact]:
    return [Fact(e.symbol, {"symbol": e.symbol}, e.name, (e.name,)) for e in knowledge.elements()]


def _word_facts(pairs: list[tuple[str, list[str]]], slot: str) -> list[Fact]:
    return [Fact(key, {slot: key}, answers[0], tuple(answers)) for key, answers in pairs]


def _antonym_facts(config: GeneratedInstructionsConfig) -> list[Fact]:
    return _word_facts(knowledge.antonym_pairs(config.min_zipf), "word")


def _synonym_facts(config: GeneratedInstructionsConfig) -> list[Fact]:
    return _word_facts(knowledge.synonym_sets(("adj",), config.min_zipf), "word")


def _definition_facts(config: GeneratedInstructionsConfig) -> list[Fact]:
    return _word_facts(knowledge.definitions(("noun",), config.min_zipf + 0.5), "definition")


RELATIONS: dict[str, Relation] = {
    r.name: r
    for r in (
        Relation("capital_of", "recalled", (
            "What is the capital of {country}?", "Which city is the capital of {country}?",
            "Name the capital city of {country}.", "Tell me the capital of {country}.",
            "{country} has which city as its capital?",
        ), _capital_facts),
        Relation("continent_of", "recalled", (
            "On which continent is {country}?", "Which continent is {country} in?",
            "Name the continent where {country} lies.", "{country} lies on which continent?",
        ), _continent_facts),
        Relation("element_symbol", "recalled", (
            "What is the chemical symbol of {element}?", "What is the symbol for {element}?",
            "Give the chemical symbol of {element}.", "Which symbol stands for {element}?",
        ), _element_symbol_facts),
        Relation("element_number", "recalled", (
            "What is the atomic number of {element}?", "How many protons does an atom of {element} have?",
            "Give the atomic number of {element}.", "{element} has which atomic number?",
        ), _element_number_facts),
        Relation("element_of_symbol", "recalled", (
            "Which element has the symbol {symbol}?", "Which chemical element is written {symbol}?",
            "Name the element whose symbol is {symbol}.", "The symbol {symbol} stands for which element?",
        ), _element_of_symbol_facts),
        Relation("antonym", "recalled", (
            "What is the opposite of {word}?", "Give the antonym of {word}.",
            "What word means the opposite of {word}?", "Name a word opposite in meaning to {word}.",
        ), _antonym_facts),
        Relation("synonym", "recalled", (
            "Give another word for {word}.", "What is a synonym of {word}?",
            "Name a word that means the same as {word}.", "Which word has the same meaning as {word}?",
        ), _synonym_facts),
        Relation("definition", "recalled", (
            "Which word means {definition}?", "What do we call {definition}?",
            "Give the word for {definition}.", "Name the word that means {definition}.",
        ), _definition_facts),
        Relation("addition", "computed", (
            "What is {a} plus {b}?", "Add {a} and {b}.", "What is the sum of {a} and {b}?",
            "How much is {a} plus {b}?", "Compute {a} plus {b}.",
        ), _arithmetic("+", range(21), range(21), lambda a, b: a + b)),
        Relation("subtraction", "computed", (
            "What is {a} minus {b}?", "Subtract {b} from {a}.", "What is {a} take away {b}?",
            "How much is {a} minus {b}?",
        ), _arithmetic("-", range(31), range(31), lambda a, b: a - b if a >= b else None)),
        Relation("multiplication", "computed", (
            "What is {a} times {b}?", "Multiply {a} by {b}.", "What is the product of {a} and {b}?",
            "How much is {a} times {b}?",
        ), _arithmetic("*", range(1, 13), range(1, 13), lambda a, b: a * b)),
        Relation("weekday_of_date", "computed", (
            "What day of the week was {date}?", "On which weekday did {date} fall?",
            "Which day of the week is {date}?", "{date} was on which day of the week?",
        ), _weekday_facts),
        Relation("days_between", "computed", (
            "How many days are there from {first} to {second}?", "How many days pass between {first} and {second}?",
            "Count the days from {first} to {second}.", "From {first} to {second} is how many days?",
        ), _days_between_facts),
        Relation("month_after", "computed", (
            "Which month comes {span} after {month}?", "What month is it {span} after {month}?",
            "Name the month {span} after {month}.", "{span} after {month}, which month is it?",
        ), _month_after_facts),
        Relation("days_in_month", "computed", (
            "How many days are in {month} {year}?", "How many days does {month} {year} have?",
            "Give the number of days in {month} {year}.", "{month} {year} has how many days?",
        ), _days_in_month_facts),
    )
}


@dataclass
class GeneratedInstructionsConfig:
    """Which relations, how many pairs per split, what is held out, and the seed."""

    relations: tuple[str, ...] = tuple(RELATIONS)
    """Names from `RELATIONS`."""
    train_per_relation: int = 400
    """Train pairs per relation (fewer when a relation has fewer fact x seen-template combinations)."""
    eval_per_relation: int = 20
    """Dev pairs and test pairs per relation (each)."""
    heldout_entity_fraction: float = 0.15
    """Share of a computed relation's facts kept out of train (half for dev, half for test)."""
    max_facts_per_relation: int = 2000
    """Facts drawn for the relations with an open-ended fact space (dates)."""
    min_zipf: float = 4.0
    """Word frequency floor of the WordNet words (Zipf scale; definitions use this + 0.5)."""
    seed: int = 0
    extra: dict = field(default_factory=dict)
    """Free-form notes recorded with the set (e.g. its origin); not used to build it."""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.relations) - set(RELATIONS))
        if unknown:
            raise ValueError(f"GeneratedInstructionsConfig.relations: unknown {unknown}; choose from {sorted(RELATIONS)}")
        if not 0 < self.heldout_entity_fraction < 1:
            raise ValueError(
                f"GeneratedInstructionsConfig.heldout_entity_fraction={self.heldout_entity_fraction} must lie in (0, 1)"
            )
        for name in ("train_per_relation", "eval_per_relation"):
            if getattr(self, name) < 1:
                raise ValueError(f"GeneratedInstructionsConfig.{name} must be >= 1, got {getattr(self, name)}")


def _pair(relation: Relation, split: str, index: int, fact: Fact, template: str, holdout: str) -> InstructionPair:
    prompt = template.format(**fact.slots)
    return InstructionPair(
        id=f"{relation.name}-{split}-{index:05d}",
        prompt=prompt[0].upper() + prompt[1:],
        response=fact.response,
        answers=fact.answers,
        relation=relation.name,
        holdout=holdout,
    )


def _eval_items(
    relation: Relation, held_facts: list[Fact], seen_facts: list[Fact], n: int, rng: random.Random
) -> list[tuple[Fact, str, str]]:
    """n (fact, template, holdout) questions: held-out facts (computed) and seen facts in the held-out template."""
    seen_templates, held_template = relation.templates[:-1], relation.templates[-1]
    items = [(f, held_template, "template") for f in seen_facts]
    if relation.kind == "computed":
        items += [(f, rng.choice(seen_templates), "entity") for f in held_facts]
        items += [(f, held_template, "entity+template") for f in held_facts]
    rng.shuffle(items)
    by_holdout: dict[str, list] = {}
    for item in items:
        by_holdout.setdefault(item[2], []).append(item)
    chosen, used = [], set()
    while len(chosen) < n and any(by_holdout.values()):  # round-robin over the holdout kinds, a fact at most once
        for kind in sorted(by_holdout):
            while by_holdout[kind] and len(chosen) < n:
                fact, template, holdout = by_holdout[kind].pop()
                if fact.key not in used:
                    used.add(fact.key)
                    chosen.append((fact, template, holdout))
                    break
    return chosen


def relation_pairs(relation: Relation, config: GeneratedInstructionsConfig) -> dict[str, list[InstructionPair]]:
    """Train / dev / test pairs of one relation (held-out rules in the module docstring)."""
    rng = random.Random(f"{config.seed}-{relation.name}")
    facts = relation.facts(config)
    if len(facts) < 4:
        raise ValueError(f"relation {relation.name} has only {len(facts)} facts: its knowledge source looks broken")
    rng.shuffle(facts)
    seen_templates = relation.templates[:-1]
    if relation.kind == "computed":
        n_held = max(2, round(len(facts) * config.heldout_entity_fraction))
        held, seen = facts[:n_held], facts[n_held:]
        held_by_split = {"dev": held[: n_held // 2], "test": held[n_held // 2 :]}
    else:
        seen, held_by_split = facts, {"dev": [], "test": []}
    combos = [(f, t) for f in seen for t in seen_templates]
    rng.shuffle(combos)
    train = combos[: config.train_per_relation]
    taught = sorted({f.key for f, _ in train})
    taught_facts = [f for f in seen if f.key in set(taught)]
    rng.shuffle(taught_facts)
    half = len(taught_facts) // 2
    seen_by_split = {"dev": taught_facts[:half], "test": taught_facts[half:]}
    out = {"train": [_pair(relation, "train", i, f, t, "") for i, (f, t) in enumerate(train)]}
    for split in ("dev", "test"):
        items = _eval_items(relation, held_by_split[split], seen_by_split[split], config.eval_per_relation, rng)
        out[split] = [_pair(relation, split, i, f, t, h) for i, (f, t, h) in enumerate(items)]
    return out


def generate_instructions(config: GeneratedInstructionsConfig | None = None) -> dict[str, list[InstructionPair]]:
    """Every configured relation's pairs, per split, in relation order."""
    config = config or GeneratedInstructionsConfig()
    out: dict[str, list[InstructionPair]] = {split: [] for split in SPLITS}
    for name in config.relations:
        for split, pairs in relation_pairs(RELATIONS[name], config).items():
            out[split].extend(pairs)
    return out
