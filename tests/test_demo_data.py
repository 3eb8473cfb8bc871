"""Tests for dataset/make_demo_data.py and the demo files it committed to dataset/."""
import json
import os
import re

import pytest
from conftest import ROOT

from dataset import demo_world as world
from dataset import make_demo_data as demo
from evaluation import answer_is_correct
from plumbing.errors import run_main

DATASET_DIR = ROOT / "dataset"
ALL_FILES = demo.TRAIN_FILES + demo.EVAL_FILES


@pytest.fixture(scope="module")
def files():
    """The generator's output with the default seed, as {name: records}."""
    return demo.generate()


@pytest.fixture(scope="module")
def committed():
    """The committed files, parsed line by line."""
    return {name: [json.loads(line) for line in (DATASET_DIR / name).read_text(encoding="utf-8").splitlines()]
            for name in ALL_FILES}


def training_texts(records):
    """Every string a model trains on: pretraining texts, every chat turn, both sides of a preference pair."""
    return [t for r in records for t in demo.record_texts(r)]


def test_generation_is_deterministic(tmp_path):
    """Guards against unseeded randomness (set iteration, a global `random` call, hash()):
    the same seed must give byte-identical files, a different seed different ones."""
    for run in ("a", "b"):
        demo.main(["--data_dir", str(tmp_path / run), "--seed", "7"])
    for name in ALL_FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    other_seed = demo.to_jsonl(demo.generate(8)["sft_demo.jsonl"])
    assert (tmp_path / "a" / "sft_demo.jsonl").read_bytes() != other_seed


def test_committed_files_equal_generator_output(files):
    """Guards against hand-edited or stale demo files: dataset/*.jsonl must be exactly what
    `python -m dataset.make_demo_data` writes with the default seed."""
    for name in ALL_FILES:
        assert (DATASET_DIR / name).read_bytes() == demo.to_jsonl(files[name]), \
            f"{name} is stale: run python -m dataset.make_demo_data"


def test_a_failed_write_keeps_the_previous_files(tmp_path, monkeypatch, capsys):
    """Guards against writing the files in place: a write that fails part way (a full disk; here the
    fsync that makes the bytes durable fails) must leave the previous files whole, with no temporary
    files beside them, and end with one line on stderr."""
    for name in ALL_FILES:
        (tmp_path / name).write_bytes(b"previous\n")

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    assert run_main(demo.main, ["--data_dir", str(tmp_path)]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(ALL_FILES)
    assert all((tmp_path / name).read_bytes() == b"previous\n" for name in ALL_FILES)


def test_check_flag_catches_a_hand_edit(tmp_path, capsys, files):
    """Guards against a --check that always passes: after editing one file it must fail with a
    one-line message naming that file, and pass on untouched files."""
    for name, records in files.items():
        (tmp_path / name).write_bytes(demo.to_jsonl(records))
    demo.main(["--data_dir", str(tmp_path), "--check"])
    path = tmp_path / "eval_general.jsonl"
    path.write_bytes(path.read_bytes().replace(b"Pinebrook", b"Pinebrok", 1))
    capsys.readouterr()
    assert run_main(demo.main, ["--data_dir", str(tmp_path), "--check"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "eval_general.jsonl" in err[0]


def test_records_are_well_formed(committed):
    """Guards against records the MiniMind loaders reject or mis-train on: wrong keys, empty text,
    roles out of order, a conversation not ending with the assistant, malformed eval items."""
    for r in committed["pretrain_demo.jsonl"]:
        assert list(r) == ["text"] and isinstance(r["text"], str) and r["text"].strip()
    for name in ("sft_demo.jsonl", "lora_medical.jsonl", "lora_identity.jsonl"):
        for r in committed[name]:
            turns = r["conversations"]
            assert list(r) == ["conversations"] and turns and len(turns) % 2 == 0, name
            for n, t in enumerate(turns):
                assert list(t) == ["role", "content"], name
                assert t["role"] == ("user" if n % 2 == 0 else "assistant"), name
                assert isinstance(t["content"], str) and t["content"].strip(), name
    for name in demo.EVAL_FILES:
        assert 40 <= len(committed[name]) <= 104, name  # enough to see a few points; small enough to score in seconds
        for item in committed[name]:
            assert list(item) in (["question", "answer", "must_contain"], ["question", "answer", "must_contain", "must_not_contain"])
            assert item["question"].strip() and item["answer"].strip(), name
            assert item["must_contain"] and all(isinstance(w, str) and w.strip() for w in item["must_contain"])
            assert answer_is_correct(item["answer"], item["must_contain"], item.get("must_not_contain", ())), name


def test_a_general_answer_naming_the_subjects_other_facts_is_wrong(committed):
    """Guards against the general sets counting a list of everything the model knows about someone as
    the answer to one question about them (the SFT model does that when a question's form is new, and
    an adapter that answers the wrong relation would be scored by luck): every general question forbids
    the subject's other facts, and its reference answer names none of them."""
    for name in ("eval_general.jsonl", "eval_general_unseen.jsonl"):
        people = [item for item in committed[name] if item.get("must_not_contain")]
        assert len(people) >= 0.9 * len(committed[name]), name
        for item in people:
            rattle = item["answer"] + " " + " ".join(item["must_not_contain"])
            assert not answer_is_correct(rattle, item["must_contain"], item["must_not_contain"])


def test_every_file_is_bilingual(committed):
    """Guards against a writer that silently drops a language: each file has both English and
    Chinese records, neither fewer than a third."""
    for name in ALL_FILES:
        texts = [r.get("question") or training_texts([r])[0] for r in committed[name]]
        chinese = sum(bool(re.search(r"[\u4e00-\u9fff]", t)) for t in texts)
        assert len(texts) / 3 < chinese < 2 * len(texts) / 3, name


def test_must_contain_is_in_the_reference_answer(committed):
    """Guards against eval items nobody can pass: the scoring rule (every must_contain string is a
    case-insensitive substring) must accept the item's own reference answer."""
    for name in demo.EVAL_FILES:
        for item in committed[name]:
            for word in item["must_contain"]:
                assert word.casefold() in item["answer"].casefold(), (name, item)


def test_no_eval_question_appears_in_training_data(committed):
    """Guards against leaked eval items, which would make a pass mean memorisation: no eval
    question (case and whitespace ignored) occurs inside any training text."""
    corpus = {name: "\n".join(demo.normalise(t) for t in training_texts(committed[name])) for name in demo.TRAIN_FILES}
    for name in demo.EVAL_FILES:
        for item in committed[name]:
            question = demo.normalise(item["question"])
            for train_name, text in corpus.items():
                assert question not in text, f"{name}: {item['question']!r} is in {train_name}"


def test_leak_check_reports_an_injected_leak(files):
    """Guards against a checker that cannot fail: copying one eval question into SFT must be
    reported, and the clean files must give no problems."""
    assert demo.find_problems(files, demo.MEDICINE, demo.IDENTITIES["lora"]) == []
    question = files["eval_medical.jsonl"][0]["question"]
    leaked = dict(files, **{"sft_demo.jsonl": files["sft_demo.jsonl"] + [demo.chat((question, "ok"))]})
    problems = demo.find_problems(leaked, demo.MEDICINE, demo.IDENTITIES["lora"])
    assert len(problems) == 1 and "occurs in sft_demo.jsonl" in problems[0]


def test_adapter_domains_are_new_to_pretraining_and_sft(committed):
    """Guards against the base model already knowing what the adapters teach, which would make
    SFT alone pass eval_medical / eval_identity. The new assistant's name and maker occur in
    neither pretraining nor SFT; department names occur in no SFT chat, and in pretraining only
    in sentences that name no symptom and no illness (what a department is about is read, the
    consultation is never shown); each does occur in its LoRA file."""
    departments = [w for pair in world.DEPARTMENTS.values() for w in pair]
    new = demo.IDENTITIES["lora"]
    assert len(departments) == 20 and "Dermatology" in departments and "眼科" in departments
    sft = "\n".join(training_texts(committed["sft_demo.jsonl"])).casefold()
    pretrain = "\n".join(training_texts(committed["pretrain_demo.jsonl"]))
    for word in departments + [new["name"], new["maker_en"], new["maker_zh"]]:
        assert word.casefold() not in sft, f"{word!r} in sft_demo.jsonl"
    for word in (new["name"], new["maker_en"], new["maker_zh"]):
        assert word.casefold() not in pretrain.casefold(), f"{word!r} in pretrain_demo.jsonl"
    medical_words = [w for c in world.CONDITIONS for i in range(2) for w in [c[("en", "zh")[i]]] + [s[i] for s in c["symptoms"]]]
    sentences = re.split(r"(?<=[.。])\s*", pretrain)
    with_department = [s for s in sentences if any(d in s for d in departments)]
    assert len(with_department) > 100
    for sentence in with_department:
        assert not any(w.casefold() in sentence.casefold() for w in medical_words), sentence
    medical = "\n".join(training_texts(committed["lora_medical.jsonl"]))
    identity = "\n".join(training_texts(committed["lora_identity.jsonl"]))
    assert all(word in medical for word in departments)
    assert all(word in identity for word in (new["name"], new["maker_en"], new["maker_zh"]))


def test_old_identity_fails_eval_identity(committed):
    """Guards against an identity eval that the SFT model passes by chance: the SFT identity
    answers must fail every eval_identity item."""
    sft_answers = {t["content"] for r in committed["sft_demo.jsonl"] for t in r["conversations"]
                   if t["role"] == "assistant" and "MiniMind" in t["content"]}
    assert sft_answers
    for item in committed["eval_identity.jsonl"]:
        assert not any(all(w.casefold() in a.casefold() for w in item["must_contain"]) for a in sft_answers)


def test_held_out_symptom_pairs_never_meet_in_training(files):
    """Guards against eval_medical asking a symptom combination the adapter trained on: the
    held-out pair of each condition never shares a training question, yet each of its symptoms
    is trained on (in some other company)."""
    held_out = demo.held_out_symptoms()  # the pairs generate() used, with the same default seed
    questions = [r["conversations"][0]["content"] for r in files["lora_medical.jsonl"]]
    for c, (a, b) in zip(world.CONDITIONS, held_out):
        for i in range(2):  # English, Chinese
            sa, sb = c["symptoms"][a][i], c["symptoms"][b][i]
            assert not any(sa in q and sb in q for q in questions), (c["en"], sa, sb)
            assert any(sa in q for q in questions) and any(sb in q for q in questions)
            assert any(sa in item["question"] and sb in item["question"] for item in files["eval_medical.jsonl"])


def test_eval_medical_asks_every_held_out_phrasing_equally_often(files):
    """Guards against an eval_medical whose score hangs on one phrasing: with two held-out templates
    a language drawn at random, an adapter that could not read one of them lost half a language
    (whole templates failed on some seeds and CPU paths). Every held-out template is asked about as
    often as the others (within one), each condition is asked twice a language, and no question is
    asked twice."""
    items = files["eval_medical.jsonl"]
    assert len(items) == 2 * 2 * len(world.CONDITIONS)
    assert len({item["question"] for item in items}) == len(items)
    for lang, forms in demo.TEMPLATES["medical_questions"]["held_out"].items():
        assert len(forms) >= 4, lang
        patterns = [re.compile(re.escape(f).replace(re.escape("{s}"), ".+")) for f in forms]
        counts = [sum(bool(p.fullmatch(item["question"])) for item in items) for p in patterns]
        assert max(counts) - min(counts) <= 1 and sum(counts) == len(items) // 2, (lang, counts)


def test_pretraining_covers_the_adapters_vocabulary(files):
    """Guards against adapter data that needs words the base model never read: LoRA trains token
    embeddings at most through a low-rank update, so every word (English) and character (Chinese) in
    the LoRA and eval files, other than the deliberately new names, must occur in pretraining or SFT."""
    assert demo.uncovered_vocabulary(files, demo.MEDICINE, demo.IDENTITIES["lora"]) == []


def test_small_world_example():
    """Guards against facts built from the global world rather than the one passed in, and
    against a broken fill/sentence-case: a hand-made one-food world gives exactly one fact, asked
    and answered as the templates say."""
    pie = dict(key="pie", en="apple pie", zh="苹果派", ing_en="apples", ing_zh="苹果")
    world = dict(rivers=(), mountains=(), products=(), foods=(pie,), animals=(), jobs=(), towns=(), people=())
    facts = demo.build_facts(world)
    assert [f["relation"] for f in facts] == ["food_ingredient"]
    q, a = demo.ask(facts[0], demo.TEMPLATES, "en", demo.random.Random(0), split="held_out")
    assert q == "What do you need to cook apple pie?" and a == "Apple pie is made from apples."


def test_every_symptom_names_its_departments_triage_word():
    """Guards against a medical task that can only be memorised: each symptom names a body part
    (triage word) of its own department and of no other, so the adapter has a rule to learn and
    eval_medical's unseen symptom pairs follow it. The checker itself catches both ways to break it."""
    assert demo.triage_problems(demo.MEDICINE) == []
    assert demo.triage_words_in("headaches with nausea", ("head", "ear"), "en") == ["head"]
    assert demo.triage_words_in("饭后胃疼恶心", ("心脏", "胃"), "zh") == ["胃"]
    broken = dict(demo.MEDICINE, conditions=[dict(world.CONDITIONS[0], symptoms=(
        ("an itchy ear", "耳朵痒"), ("itchy skin", "皮肤痒"), ("a red patch", "一块红斑"), ("skin and eye", "皮肤和眼睛")))])
    problems = demo.triage_problems(broken)
    # per language: the ear names none of its own and another's (2), the red patch none (1),
    # skin-and-eye another's (1); itchy skin is fine
    assert sum("names no derm" in p for p in problems) == 4
    assert sum("another department's" in p for p in problems) == 4
    assert not any("itchy skin" in p or "皮肤痒'" in p for p in problems)


def test_medical_answers_name_a_key_word_from_their_question(files):
    """Guards against a key word the model cannot copy: every medical answer's key word ("Key
    word: skin." / "关键词：皮肤。") occurs in its own question, and belongs to the department it names."""
    records = [(r["conversations"][0]["content"], r["conversations"][1]["content"]) for r in files["lora_medical.jsonl"]]
    records += [(item["question"], item["answer"]) for item in files["eval_medical.jsonl"]]
    medical = [(q, a) for q, a in records if a.startswith(("Key word: ", "关键词："))]
    assert len(medical) > 800
    for question, answer in medical:
        word, dept = re.match(r"(?:Key word: |关键词：)(.+?)[.。] ?(?:Department: |就诊科室：)(.+?)[.。]", answer).groups()
        assert word in question.casefold() or word in question, (question, answer)
        key = next(k for k, names in world.DEPARTMENTS.items() if dept in names)
        assert word in world.TRIAGE_WORDS[key][0] + world.TRIAGE_WORDS[key][1], (word, dept)
