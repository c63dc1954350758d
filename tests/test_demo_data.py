"""The shipped demo knowledge is exactly what trials.demo_data generates, and is shaped for the sweep."""

from __future__ import annotations

import json
import re
from collections import defaultdict

import pytest

from trials import demo_data
from trials.config import DataConfig
from trials.data import load_knowledge


@pytest.fixture(scope="module")
def generated():
    return demo_data.generate()


@pytest.fixture(scope="module")
def facts(generated):
    """(name, attribute) -> [(template index, split, answer)], parsed back from the questions."""
    _, rows = generated
    patterns = [
        (attr, t_index, re.compile("^" + re.escape(template).replace(re.escape("{name}"), "(?P<name>.+)") + "$"))
        for attr, (templates, _) in demo_data.ATTRIBUTES.items()
        for t_index, template in enumerate(templates)
    ]
    by_fact = defaultdict(list)
    for row in rows:
        matches = [(attr, t, m["name"]) for attr, t, pattern in patterns if (m := pattern.match(row["question"]))]
        assert len(matches) == 1, row
        attr, t_index, name = matches[0]
        by_fact[name, attr].append((t_index, row["split"], row["answer"]))
    return dict(by_fact)


def test_shipped_qa_equals_a_fresh_generation(demo_qa, generated):
    _, rows = generated
    shipped = [json.loads(line) for line in demo_qa.read_text(encoding="utf-8").splitlines()]
    assert shipped == rows


def test_shipped_documents_equal_a_fresh_generation(repo_root, generated):
    documents, _ = generated
    shipped_dir = repo_root / "data" / "demo" / "documents"
    assert sorted(p.name for p in shipped_dir.iterdir()) == sorted(documents)
    for name, text in documents.items():
        assert (shipped_dir / name).read_text(encoding="utf-8") == text, name


def test_write_reproduces_the_shipped_files_byte_for_byte(tmp_path, repo_root):
    demo_data.write(tmp_path)
    shipped = repo_root / "data" / "demo"
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted(p.relative_to(shipped) for p in shipped.rglob("*") if p.is_file())
    for relative in written:
        assert (tmp_path / relative).read_bytes() == (shipped / relative).read_bytes(), relative


def test_batch_two_is_shipped_and_holds_only_new_people(tmp_path, repo_root, generated):
    demo_data.write(tmp_path, batch=2)
    shipped = repo_root / "data" / "demo-batch2"
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted(p.relative_to(shipped) for p in shipped.rglob("*") if p.is_file())
    for relative in written:
        assert (tmp_path / relative).read_bytes() == (shipped / relative).read_bytes(), relative
    _, first_rows = generated
    _, second_rows = demo_data.generate(batch=2)
    name = re.compile(r"[A-Z][a-z]+ [A-Z][a-z]+")
    first_names = {n for row in first_rows for n in name.findall(row["question"])}
    second_names = {n for row in second_rows for n in name.findall(row["question"])}
    assert len(second_names) == demo_data.NUM_PEOPLE and not first_names & second_names
    badges = lambda rows: {row["answer"] for row in rows if "badge" in row["question"]}  # noqa: E731
    assert not badges(first_rows) & badges(second_rows)


def test_generation_is_deterministic(generated):
    assert demo_data.generate() == generated


def test_at_least_30_entities_with_3_attributes(facts):
    names = {name for name, _ in facts}
    assert len(names) >= 30
    assert len(demo_data.ATTRIBUTES) >= 3
    for name in names:
        assert {attr for n, attr in facts if n == name} == set(demo_data.ATTRIBUTES), name


def test_every_fact_has_two_train_phrasings_and_one_held_out(facts):
    for fact, rows in facts.items():
        splits = [split for _, split, _ in rows]
        assert splits.count("train") >= 2, fact
        assert splits.count("val") + splits.count("test") == 1, fact
        assert len({t for t, _, _ in rows}) == len(rows), fact  # distinct phrasings
        assert len({answer for _, _, answer in rows}) == 1, fact  # one answer per fact


def test_held_out_phrasings_rotate_and_cover_both_splits(facts):
    held_out_templates = defaultdict(set)
    held_out_splits = defaultdict(set)
    train_templates = defaultdict(set)
    for (_, attr), rows in facts.items():
        for t_index, split, _ in rows:
            if split == "train":
                train_templates[attr].add(t_index)
            else:
                held_out_templates[attr].add(t_index)
                held_out_splits[attr].add(split)
    for attr, (templates, _) in demo_data.ATTRIBUTES.items():
        # Every phrasing is held out for someone and trained on for someone else.
        assert held_out_templates[attr] == set(range(len(templates))), attr
        assert train_templates[attr] == set(range(len(templates))), attr
        assert held_out_splits[attr] == {"val", "test"}, attr


def test_documents_state_every_fact(generated, facts):
    documents, _ = generated
    passages = [p for text in documents.values() for p in text.split("\n\n")]
    names = {name for name, _ in facts}
    assert len(passages) == len(names)
    for (name, attr), rows in facts.items():
        answer = rows[0][2]
        sentence = demo_data.ATTRIBUTES[attr][1].format(name=name, answer=answer)
        assert sum(sentence in p for p in passages) == 1, sentence


def test_badge_codes_are_unique(facts):
    badges = [rows[0][2] for (_, attr), rows in facts.items() if attr == "badge"]
    assert len(badges) == len(set(badges))
    assert all(re.fullmatch(r"[A-Z]{2}-\d{4}", badge) for badge in badges)


def test_demo_data_passes_validation(demo_qa, demo_documents, facts):
    knowledge = load_knowledge(DataConfig(qa=demo_qa, documents=demo_documents))
    assert len(knowledge.passages) == len({name for name, _ in facts})
    assert len(knowledge.split("train")) >= 2 * len(facts)
    assert len(knowledge.split("val")) + len(knowledge.split("test")) == len(facts)
    assert knowledge.split("val") and knowledge.split("test")
