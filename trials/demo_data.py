"""The demo's private knowledge: a fictional observatory's staff records, made deterministically.

Every fact is (person, attribute, short answer). Each attribute has three question templates;
for each fact two are `train` rows and the third, rotated per person so every template is seen
in training with other people, is a held-out `val` or `test` row. That rotation is what lets a
model answer a phrasing it never saw *for that fact*: the sweep optimises exactly that.

The people come in batches of NUM_PEOPLE from one deterministic draw: batch 1 (data/demo) is what
a first sweep teaches, batch 2 (data/demo-batch2) the new staff an incremental sweep adds later.
Run `python -m trials.demo_data data` to rewrite the shipped files; a test checks that the shipped
files equal a fresh generation.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

SEED = 20261128
NUM_PEOPLE = 40  # per batch
BATCHES = {1: "demo", 2: "demo-batch2"}  # batch -> directory under data/
ORGANISATION = "Halvard Ridge Observatory"

FIRST_NAMES = [
    "Mira", "Oskar", "Talia", "Bram", "Ilse", "Corin", "Nadia", "Evander", "Runa", "Pello",
    "Sigrid", "Tomas", "Liesel", "Anouk", "Dario", "Frida", "Jarek", "Katya", "Lucan", "Maren",
    "Niko", "Orla", "Piet", "Quilla", "Ronan", "Saskia", "Teodor", "Ulla", "Vesna", "Wim",
]
LAST_NAMES = [
    "Tallow", "Brekke", "Vossler", "Amundsen", "Quist", "Harrow", "Lindqvist", "Okafor", "Renwick",
    "Stavros", "Ferrante", "Kowal", "Duchene", "Marsh", "Ibarra", "Nyland", "Castellan", "Holm",
    "Zeller", "Moreau", "Pryce", "Wexford", "Ashdown", "Bellamy", "Crane", "Dunmore",
]
CITIES = [
    "Tromsø", "Reykjavik", "Valparaíso", "Hobart", "Kiruna", "Ushuaia",
    "Tenerife", "Windhoek", "Arequipa", "Lhasa", "Flagstaff", "Coimbra",
]
TEAMS = ["Lantern", "Meridian", "Halcyon", "Driftwood", "Aurora", "Basalt", "Cinder", "Kestrel"]
BADGE_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"

# attribute -> (three question templates, the sentence the document states it in)
ATTRIBUTES = {
    "badge": (
        [
            "What is the badge code of {name}?",
            "Which badge code does {name} carry?",
            "{name} has which badge code?",
        ],
        "The badge code of {name} is {answer}.",
    ),
    "city": (
        [
            "In which city does {name} work?",
            "Where is the office of {name}?",
            "{name} works in which city?",
        ],
        "{name} works at the {answer} station.",
    ),
    "team": (
        [
            "Which team is {name} on?",
            "What team does {name} belong to?",
            "{name} is a member of which team?",
        ],
        "{name} is on the {answer} team.",
    ),
}


def _people(rng: random.Random, count: int) -> list[dict[str, str]]:
    # Drawn one after another from one generator: the first batches stay the same when more are drawn.
    names = [f"{first} {last}" for first in FIRST_NAMES for last in LAST_NAMES]
    rng.shuffle(names)
    codes: set[str] = set()
    people = []
    for name in names[:count]:
        code = ""
        while not code or code in codes:
            code = f"{rng.choice(BADGE_LETTERS)}{rng.choice(BADGE_LETTERS)}-{rng.randint(1000, 9999)}"
        codes.add(code)
        people.append(
            {"name": name, "badge": code, "city": rng.choice(CITIES), "team": rng.choice(TEAMS)}
        )
    return people


def generate(batch: int = 1) -> tuple[dict[str, str], list[dict]]:
    """Return ({document file name: text}, qa rows in file order) of one batch of people."""
    rng = random.Random(SEED)
    people = _people(rng, NUM_PEOPLE * batch)[NUM_PEOPLE * (batch - 1):]
    passages = []
    qa_rows: list[dict] = []
    for index, person in enumerate(people):
        sentences = [ATTRIBUTES[attr][1].format(name=person["name"], answer=person[attr]) for attr in ATTRIBUTES]
        passages.append(f"{person['name']} is on the staff of {ORGANISATION}. " + " ".join(sentences))
        for attr_index, (attr, (templates, _)) in enumerate(ATTRIBUTES.items()):
            held_out = (index + attr_index) % len(templates)
            for t_index, template in enumerate(templates):
                if t_index == held_out:
                    # Alternate val/test so both held-out splits cover every attribute.
                    split = "val" if (index + attr_index) % 2 == 0 else "test"
                else:
                    split = "train"
                qa_rows.append(
                    {"question": template.format(name=person["name"]), "answer": person[attr], "split": split}
                )
    half = len(passages) // 2
    documents = {
        f"staff_part{2 * batch - 1}.txt": "\n\n".join(passages[:half]) + "\n",
        f"staff_part{2 * batch}.txt": "\n\n".join(passages[half:]) + "\n",
    }
    return documents, qa_rows


def corpus_text() -> str:
    """Batch 1's text in one string: what the embedded tokenizer is trained on. Later batches draw
    their names, cities and teams from the same lists, so they tokenize alike."""
    documents, qa_rows = generate()
    lines = list(documents.values())
    lines += [f"Question: {row['question']}\nAnswer: {row['answer']}" for row in qa_rows]
    return "\n".join(lines)


def write(out_dir: Path, batch: int = 1) -> None:
    documents, qa_rows = generate(batch)
    (out_dir / "documents").mkdir(parents=True, exist_ok=True)
    for file_name, text in documents.items():
        (out_dir / "documents" / file_name).write_text(text, encoding="utf-8")
    with open(out_dir / "qa.jsonl", "w", encoding="utf-8") as handle:
        for row in qa_rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")




def first_people(directory: Path, documents: list[Path], qa: Path, people: int) -> list[str]:
    """A slice of demo-shaped data, the first `people` passages and every QA row naming them, written
    to `directory`; returns the `--set` overrides that point a config at it (smoke runs, tests)."""
    directory.mkdir(parents=True, exist_ok=True)
    first = Path(documents[0]).read_text(encoding="utf-8")
    passages = [block for block in first.split("\n\n") if block.strip()][:people]
    doc = directory / "documents.txt"
    doc.write_text("\n\n".join(passages) + "\n", encoding="utf-8")
    names = [" ".join(passage.split()[:2]) for passage in passages]
    lines = [line for line in Path(qa).read_text(encoding="utf-8").splitlines() if any(name in line for name in names)]
    sliced = directory / "qa.jsonl"
    sliced.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [f"data.documents=[{json.dumps(str(doc))}]", f"data.qa={json.dumps(str(sliced))}"]


if __name__ == "__main__":
    for number, name in BATCHES.items():
        write(Path(sys.argv[1] if len(sys.argv) > 1 else "data") / name, number)
