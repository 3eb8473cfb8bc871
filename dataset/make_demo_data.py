"""Make the demo data: a tiny invented bilingual world, and what we teach and test about it.

The demo pipeline (tokenizer -> pretrain -> SFT -> two LoRA adapters -> evaluation) must run in
minutes on a laptop CPU and still *show*, in numbers, what each stage does. Real corpora are far
too big for that, so this script invents a small world -- six towns, three rivers, three
mountains, twelve people, their jobs, foods, products and animals -- and writes it out in
MiniMind's own file formats (docs/data.md), in English and Chinese:

    pretrain_demo.jsonl   {"text": ...}           encyclopedia-like paragraphs about the world,
                                                  plus "general reading" that uses every word the
                                                  adapters need: the model learns the language
                                                  and the facts.
    sft_demo.jsonl        {"conversations": [...]} chat about the same facts (single and
                                                  multi-turn) plus the assistant's identity
                                                  ("MiniMind, made by the MiniMind project"):
                                                  the model learns to *answer*.
    lora_medical.jsonl    {"conversations": [...]} a domain the base model never saw: symptoms ->
                                                  likely cause, department, what to do, in a
                                                  fixed style. Adapter 1 teaches a new skill.
    lora_identity.jsonl   {"conversations": [...]} a new identity ("Nova, made by Polaris Lab").
                                                  Adapter 2 changes a learnt behaviour.
    eval_general.jsonl    {"question", "answer", "must_contain"}  facts taught by SFT, asked
    eval_medical.jsonl        with question templates that no training file uses: a pass means
    eval_identity.jsonl       the model generalised rather than recalled a line.
    dpo_demo.jsonl        {"chosen": [...], "rejected": [...]}  preference pairs for train_dpo.py: about
                                                  people who do not exist, "I do not know who X is."
                                                  over an invented answer; about the real ones, the
                                                  answer over that refusal.
    eval_unknown.jsonl    {"question", "answer", "must_contain"}  people whom neither the world nor
                                                  dpo_demo.jsonl knows, asked with held-out
                                                  templates: a pass is a refusal.

An evaluation answer counts as correct when it contains every `must_contain` string
(case-insensitive substring); each one also occurs in the item's reference `answer`.

Two choices keep the adapters' targets reachable for a tiny model:
- LoRA trains token embeddings at most through a low-rank update (lora_medical's, on the tied
  embedding), so pretraining uses (in sentences that link nothing to anything) every word the
  adapter files use, except the deliberately new ones: "Nova", "Polaris Lab". Pretraining and SFT
  never contain those, nor any symptom -> cause -> department link, nor the consultation format;
  SFT never names a department.
- Both LoRA files mix in a share of ordinary world questions ("rehearsal"): an adapter trained
  on medical chat alone learns "always answer like a doctor" and forgets how to answer anything
  else, which is exactly what eval_general with the adapter on is there to catch.

The world's tables (its facts, the medical domain, the identities, the sentence and question
templates) are data, in dataset/demo_world.py. This file is the generator and reads top to bottom:
facts -> one writer per file -> checks -> command line. Everything random comes from
`random.Random` seeded with "seed:file", so the same seed gives byte-identical files (with the same
Python).

    python -m dataset.make_demo_data                  # (re)write the demo files in dataset/
    python -m dataset.make_demo_data --check          # verify the committed files, write nothing
"""
import argparse
import itertools
import json
import random
import re
import sys
from pathlib import Path

from dataset.demo_world import CONDITIONS, IDENTITIES, MEDICINE, TEMPLATES, WORLD
from plumbing.atomic import atomic_write_bytes  # standard library only, like this script
from plumbing.errors import UserError, run_main

LANGS = ("en", "zh")  # every table in demo_world holds (English, Chinese) or {"en": ..., "zh": ...}
JOINER = dict(en=" ", zh="")  # how sentences join into a paragraph
TRAIN_FILES = ("pretrain_demo.jsonl", "sft_demo.jsonl", "lora_medical.jsonl", "lora_identity.jsonl", "dpo_demo.jsonl")
EVAL_FILES = ("eval_general.jsonl", "eval_general_unseen.jsonl", "eval_medical.jsonl", "eval_identity.jsonl",
              "eval_unknown.jsonl")
PERSON_RELATIONS = ("person_town", "person_job", "person_age", "person_food")  # what a question about a person asks


# ---------------------------------------------------------------------------------------------
# 1. Facts: the world tables turned into records, one per fact, with slots for both languages.
# ---------------------------------------------------------------------------------------------

def sentence_case(text):
    """Upper-case the first character: sentence_case("the Jade River ...") -> "The Jade River ..."."""
    return text[:1].upper() + text[1:]


def fill(template, slots, lang):
    """Fill a template and sentence-case English:
    fill("the {r} is long.", {"r": "Jade River"}, "en") -> "The Jade River is long."."""
    text = template.format(**slots)
    return sentence_case(text) if lang == "en" else text


def build_facts(world):
    """Every fact of the world as a dict: relation, subject (entity key), mentions (entity keys it
    names, so articles can gather them), and per-language slots. For example
    {"relation": "person_town", "subject": "lin_xiao", "mentions": ("lin_xiao", "pinebrook"),
     "slots": {"en": {"p": "Lin Xiao", "town": "Pinebrook"}, "zh": {"p": "林晓", "town": "松溪镇"}}}."""
    by_key = {e["key"]: e for table in world.values() for e in table}
    rivers = {r["key"] for r in world["rivers"]}
    facts = []

    def add(relation, subject, mentions, en, zh):
        facts.append(dict(relation=relation, subject=subject, mentions=(subject, *mentions),
                          slots=dict(en=en, zh=zh)))

    for p in world["people"]:
        town, job, food = by_key[p["town"]], by_key[p["job"]], by_key[p["food"]]
        add("person_town", p["key"], [town["key"]], dict(p=p["en"], town=town["en"]), dict(p=p["zh"], town=town["zh"]))
        add("person_job", p["key"], [job["key"]], dict(p=p["en"], job=job["en"]), dict(p=p["zh"], job=job["zh"]))
        add("person_age", p["key"], [], dict(p=p["en"], age=p["age"]), dict(p=p["zh"], age=p["age"]))
        add("person_food", p["key"], [food["key"]], dict(p=p["en"], food=food["en"]), dict(p=p["zh"], food=food["zh"]))
    for t in world["towns"]:
        river, mountain = by_key[t["river"]], by_key[t["mountain"]]
        product, food = by_key[t["product"]], by_key[t["food"]]
        add("town_river", t["key"], [river["key"]], dict(town=t["en"], river=river["en"]),
            dict(town=t["zh"], river=river["zh"]))
        add("town_mountain", t["key"], [mountain["key"]], dict(town=t["en"], mountain=mountain["en"]),
            dict(town=t["zh"], mountain=mountain["zh"]))
        add("town_population", t["key"], [], dict(town=t["en"], n=t["population"]), dict(town=t["zh"], n=t["population"]))
        add("town_founded", t["key"], [], dict(town=t["en"], year=t["founded"]), dict(town=t["zh"], year=t["founded"]))
        add("town_product", t["key"], [product["key"]], dict(town=t["en"], product=product["en"]),
            dict(town=t["zh"], product=product["zh"]))
        add("product_town", product["key"], [t["key"]], dict(product=product["en"], town=t["en"]),
            dict(product=product["zh"], town=t["zh"]))
        add("food_town", food["key"], [t["key"]], dict(food=food["en"], town=t["en"]),
            dict(food=food["zh"], town=t["zh"]))
    for m in world["mountains"]:
        add("mountain_height", m["key"], [], dict(mountain=m["en"], h=m["height"]), dict(mountain=m["zh"], h=m["height"]))
    for r in world["rivers"]:
        source = by_key[r["source"]]
        add("river_length", r["key"], [], dict(river=r["en"], km=r["km"]), dict(river=r["zh"], km=r["km"]))
        add("river_source", r["key"], [source["key"]], dict(river=r["en"], mountain=source["en"]),
            dict(river=r["zh"], mountain=source["zh"]))
    for f in world["foods"]:
        add("food_ingredient", f["key"], [], dict(food=f["en"], ing=f["ing_en"]), dict(food=f["zh"], ing=f["ing_zh"]))
    for a in world["animals"]:
        home = by_key[a["home"]]
        # English needs an article and a preposition: "lives on Mount X" / "lives along the Y River"
        on_river = home["key"] in rivers
        place_np = f"the {home['en']}" if on_river else home["en"]
        where = f"along the {home['en']}" if on_river else f"on {home['en']}"
        add("animal_home", a["key"], [home["key"]],
            dict(animal=a["en"], place=home["en"], place_np=place_np, where=where),
            dict(animal=a["zh"], place=home["zh"]))
        add("animal_diet", a["key"], [], dict(animal=a["en"], diet=a["diet_en"]), dict(animal=a["zh"], diet=a["diet_zh"]))
    return facts


def entity_names(world):
    """{entity key: {"en": name, "zh": name}} for every named thing in the world."""
    return {e["key"]: dict(en=e["en"], zh=e["zh"]) for table in world.values() for e in table}


# ---------------------------------------------------------------------------------------------
# 2. Writers, one per file, each returning a list of JSON-ready records. Small helpers first.
# ---------------------------------------------------------------------------------------------

def chat(*pairs):
    """chat(("Q1", "A1"), ("Q2", "A2")) -> {"conversations": [user Q1, assistant A1, user Q2, ...]}."""
    return dict(conversations=[dict(role=role, content=text)
                               for q, a in pairs for role, text in (("user", q), ("assistant", a))])


def answer(fact, templates, lang):
    """The relation's one fixed answer form, e.g. "Lin Xiao is from Pinebrook."."""
    return fill(templates["relations"][fact["relation"]]["answer"][lang], fact["slots"][lang], lang)


def ask(fact, templates, lang, rng, split="train"):
    """One (question, answer) pair about a fact, the question drawn from the `split` templates
    ("train" or "held_out")."""
    question = rng.choice(templates["relations"][fact["relation"]][split][lang])
    return fill(question, fact["slots"][lang], lang), answer(fact, templates, lang)


def with_prefix(question, templates, lang, rng):
    """A training question, sometimes behind a greeting ("Hi! Where is ...?")."""
    return rng.choice(templates["prefixes"][lang]) + question


def pack(sentences, limit, joiner):
    """Greedily join sentences into paragraphs of at most `limit` characters (a longer sentence
    gets a paragraph of its own): pack(["ab.", "cd.", "ef."], 7, " ") -> ["ab. cd.", "ef."]."""
    paragraphs, current, length = [], [], 0
    for sentence in sentences:
        if current and length + len(joiner) + len(sentence) > limit:
            paragraphs.append(joiner.join(current))
            current, length = [], 0
        length += (len(joiner) if current else 0) + len(sentence)
        current.append(sentence)
    if current:
        paragraphs.append(joiner.join(current))
    return paragraphs


def make_pretrain(facts, world, medicine, templates, rng, articles_per_entity=10, mixed_per_lang=120,
                  reading_repeats=12, max_chars=(900, 420), reading_chars=(450, 130)):
    """Encyclopedia-like paragraphs. For every entity, several "articles" gather the facts that
    mention it, each fact in a randomly chosen phrasing, then top the paragraph up with random
    other facts to about `max_chars` (English, Chinese) characters. Records are padded to the
    sequence length in training, so short ones waste compute; the defaults give at most ~210
    tokens with a 2048-token demo tokenizer, under the demo's 256. "Mixed" paragraphs are random
    facts only; glossary lines tie the two languages' names together. Every fact appears 100-280
    times per language, each time in one of several wordings.

    "General reading" paragraphs use every word the LoRA data will need (symptoms, illness
    names, advice, everyday words) in loose sentences that link nothing to anything, in shorter
    paragraphs (`reading_chars`: rare words cost more tokens per character). LoRA trains only
    attention projections, never token embeddings, so a word the base model never read would
    stay an untrained vector. Department names too, on their own and with each of their triage
    words, in sentences that name no symptom and no illness. What pretraining never shows is the
    consultation itself: no symptom -> cause -> department link, no answer format."""
    statements = {name: rel["statements"] for name, rel in templates["relations"].items()}
    reading_templates = templates["reading"]
    records = []

    def state(fact, lang):
        return fill(rng.choice(statements[fact["relation"]][lang]), fact["slots"][lang], lang)

    for i, lang in enumerate(LANGS):
        for key in entity_names(world):
            about = [f for f in facts if key in f["mentions"]]
            for _ in range(articles_per_entity):
                # the entity's own facts first, then random ones to fill the paragraph
                sentences = [state(f, lang) for f in rng.sample(about, len(about))]
                sentences += [state(rng.choice(facts), lang) for _ in range(40)]
                records.append(dict(text=pack(sentences, max_chars[i], JOINER[lang])[0]))
        for _ in range(mixed_per_lang):
            sentences = [state(rng.choice(facts), lang) for _ in range(40)]
            records.append(dict(text=pack(sentences, max_chars[i], JOINER[lang])[0]))

        reading = [pair[i] for pair in templates["everyday"]]
        reading += [fill(template, dict(x=names[i]), lang)
                    for names in medicine["departments"].values() for template in reading_templates["department"][lang]]
        reading += [fill(template, dict(dept=medicine["departments"][dept][i], word=word), lang)
                    for dept, words in medicine["triage_words"].items() for word in words[i]
                    for template in reading_templates["department_word"][lang]]
        for c in medicine["conditions"]:
            reading.append(fill(rng.choice(reading_templates["condition"][lang]), dict(x=c[lang]), lang))
            reading.append(fill(rng.choice(reading_templates["advice"][lang]), dict(x=c["advice"][i]), lang))
            reading += [fill(rng.choice(reading_templates["symptom"][lang]), dict(x=s[i]), lang)
                        for s in c["symptoms"]]
        reading = reading * reading_repeats
        rng.shuffle(reading)
        records += [dict(text=t) for t in pack(reading, reading_chars[i], JOINER[lang])]

    names = list(entity_names(world).values())
    for lang in LANGS:
        for start in range(0, len(names), 8):
            lines = [templates["glossary"][lang].format(**n) for n in names[start:start + 8]]
            records.append(dict(text=JOINER[lang].join(lines)))
    rng.shuffle(records)
    return records


def identity_answer(identity, templates, lang, kind):
    """The one answer to an identity question of `kind` ("who", "name", "maker", "both")."""
    return templates["identity_answers"][lang][kind].format(**identity)


def identity_chats(identity, templates, rng, repeats):
    """Single-turn identity chats: each training phrasing `repeats` times, with random greetings."""
    records = []
    for lang in LANGS:
        for kind, phrasings in templates["identity_train"][lang].items():
            for q in phrasings:
                for _ in range(repeats):
                    records.append(chat((with_prefix(q, templates, lang, rng),
                                         identity_answer(identity, templates, lang, kind))))
    return records


def rehearsal(facts, templates, rng, count):
    """`count` ordinary single-turn world questions, mixed into a LoRA file so that the adapter
    learns to leave questions outside its domain alone."""
    records = []
    for i in range(count):
        lang = LANGS[i % 2]
        q, a = ask(rng.choice(facts), templates, lang, rng)
        records.append(chat((with_prefix(q, templates, lang, rng), a)))
    return records


def make_sft(facts, world, identity, templates, rng, fact_repeats=6, describe_repeats=3, multi_turn=500,
             identity_repeats=3, small_talk_repeats=4):
    """Chat about the world: single-turn fact questions (every fact, `fact_repeats` random training
    phrasings each), "tell me about X" answered with up to three of X's facts, multi-turn chats
    (2-3 questions, mostly about one entity), small talk, and the assistant's own identity."""
    names = entity_names(world)
    records = []
    for lang in LANGS:
        for fact in facts:
            for _ in range(fact_repeats):
                q, a = ask(fact, templates, lang, rng)
                records.append(chat((with_prefix(q, templates, lang, rng), a)))
        for key in sorted({f["subject"] for f in facts}, key=list(names).index):
            own = [f for f in facts if f["subject"] == key]
            for _ in range(describe_repeats):
                chosen = rng.sample(own, min(len(own), 3))
                reply = JOINER[lang].join(answer(f, templates, lang) for f in chosen)
                records.append(chat((rng.choice(templates["describe"][lang]).format(x=names[key][lang]), reply)))
    subjects = sorted({f["subject"] for f in facts})
    for i in range(multi_turn):
        lang = LANGS[i % 2]
        subject = rng.choice(subjects)
        own = [f for f in facts if f["subject"] == subject]
        chosen = rng.sample(own, min(len(own), rng.choice((2, 3))))
        if rng.random() < 0.3:  # a question about something else in between
            chosen.insert(1, rng.choice(facts))
        pairs = []
        for n, fact in enumerate(chosen):
            q, a = ask(fact, templates, lang, rng)
            follow_up = rng.choice(templates["follow_up"][lang]) if n else ""
            if follow_up and lang == "en":  # "And what ...", not "And What ..."
                q = q[:1].lower() + q[1:]
            pairs.append((follow_up + q, a))
        if rng.random() < 0.15:  # identity questions come up mid-conversation too
            kind = rng.choice(("who", "name", "maker"))
            pairs.insert(rng.randrange(len(pairs) + 1), (rng.choice(templates["identity_train"][lang][kind]),
                                                         identity_answer(identity, templates, lang, kind)))
        records.append(chat(*pairs))
    records += identity_chats(identity, templates, rng, identity_repeats)
    for lang in LANGS:
        for q, a in templates["small_talk"][lang]:
            records += [chat((q, a.format(name=identity["name"])))] * small_talk_repeats
    rng.shuffle(records)
    return records


def join_symptoms(parts, lang):
    """join_symptoms(["a", "b", "c"], "en") -> "a, b and c"; in Chinese "a，b，并且c"."""
    if len(parts) == 1:
        return parts[0]
    if lang == "en":
        return ", ".join(parts[:-1]) + " and " + parts[-1]
    return "，".join(parts[:-1]) + "，并且" + parts[-1]


def medical_question(condition, combo, template, lang):
    """A consultation question naming the symptoms with indices `combo` in `template`."""
    i = LANGS.index(lang)
    return template.format(s=join_symptoms([condition["symptoms"][k][i] for k in combo], lang))


def key_word(condition, combo, medicine, lang):
    """The triage word that the answer names: the first of its department's words (TRIAGE_WORDS)
    in the first symptom asked about, "head" for "headaches that ...". """
    i = LANGS.index(lang)
    text = condition["symptoms"][combo[0]][i]
    return triage_words_in(text, medicine["triage_words"][condition["dept"]][i], lang)[0]


def medical_answer(condition, combo, medicine, templates, lang):
    """The answer to a question about the symptoms `combo` of `condition`: the key word, the
    department, the possible cause and what to do."""
    i = LANGS.index(lang)
    return templates["medical_answer"][lang].format(
        word=key_word(condition, combo, medicine, lang), dept=medicine["departments"][condition["dept"]][i],
        cond=condition[lang], advice=condition["advice"][i])


def held_out_pairs(conditions, rng):
    """For each condition, the pair of symptom indices kept out of training (the eval asks it)."""
    return [tuple(sorted(rng.sample(range(len(c["symptoms"])), 2))) for c in conditions]


def make_lora_medical(facts, medicine, held_out, templates, rng, rehearsal_share=0.5):
    """Consultations in one fixed style: symptoms -> department, possible cause, what to do. Per
    condition and language: each single symptom, every ordered pair of symptoms except the
    held-out pair, and the triples that avoid it, each once with a random training template.
    Every symptom is seen, the held-out pair never together: eval_medical asks exactly that pair.
    `rehearsal_share` of the records are ordinary world questions (see `rehearsal`)."""
    records = []
    for c, held in zip(medicine["conditions"], held_out):
        n = len(c["symptoms"])
        combos = [(i,) for i in range(n)]
        combos += [(i, j) for i in range(n) for j in range(n) if i != j and tuple(sorted((i, j))) != held]
        combos += [t for t in itertools.combinations(range(n), 3) if not set(held) <= set(t)]
        for lang in LANGS:
            for combo in combos:
                q = medical_question(c, combo, rng.choice(templates["medical_questions"]["train"][lang]), lang)
                records.append(chat((q, medical_answer(c, combo, medicine, templates, lang))))
    records += rehearsal(facts, templates, rng, round(len(records) * rehearsal_share / (1 - rehearsal_share)))
    rng.shuffle(records)
    return records


def make_lora_identity(facts, identity, templates, rng, repeats=5, multi_turn=200, rehearsal_share=0.5):
    """The new identity: every training phrasing of who/name/maker/both `repeats` times with random
    greetings, multi-turn chats where an identity question follows or precedes a world question,
    and `rehearsal_share` ordinary world questions so that facts survive the adapter. Half of it is
    rehearsal, as for lora_medical: both adapters also move the tied embedding, and with a quarter
    eval_general fell 11.5 and 13.5 points (two seeds; docs/experiments.md)."""
    records = identity_chats(identity, templates, rng, repeats)
    for i in range(multi_turn):
        lang = LANGS[i % 2]
        kind = rng.choice(("who", "name", "maker", "both"))
        pairs = [ask(rng.choice(facts), templates, lang, rng),
                 (rng.choice(templates["identity_train"][lang][kind]), identity_answer(identity, templates, lang, kind))]
        if rng.random() < 0.5:
            pairs.reverse()
        records.append(chat(*pairs))
    records += rehearsal(facts, templates, rng, round(len(records) * rehearsal_share / (1 - rehearsal_share)))
    rng.shuffle(records)
    return records


def eval_item(question, answer, must_contain, must_not_contain=()):
    item = dict(question=question, answer=answer, must_contain=list(must_contain))
    return {**item, "must_not_contain": list(must_not_contain)} if must_not_contain else item


def other_facts(fact, facts, relations, lang, reference):
    """The values of the subject's other facts, which a right answer about `fact` does not name: asked
    Lin Xiao's job, "Lin Xiao is from Pinebrook." is the wrong relation, and a list of everything about
    Lin Xiao is no answer. Values a right answer may say anyway -- inside the `reference` answer ("Honey
    bread is a dish from Goldmeadow." names honey, its ingredient) or inside the asked value -- are left out."""
    value = str(fact["slots"][lang][relations[fact["relation"]]["answer_slot"]])
    others = {str(f["slots"][lang][relations[f["relation"]]["answer_slot"]]) for f in facts
              if f["subject"] == fact["subject"] and f["relation"] != fact["relation"]}
    return sorted(v for v in others if v.casefold() not in reference.casefold() and v.casefold() not in value.casefold())


def make_eval_general(facts, templates, rng, per_lang=52):
    """World facts asked with held-out templates. Per language: three facts for each relation about
    people (what a demo most wants to show), one fact of every other relation, then more facts
    about people up to `per_lang`. must_contain: the fact's value (a town, a job, a number...);
    must_not_contain: the subject's other facts (other_facts)."""
    relations = templates["relations"]
    by_relation = {}
    for f in facts:
        by_relation.setdefault(f["relation"], []).append(f)
    items = []
    for lang in LANGS:
        chosen = []
        for name, group in by_relation.items():
            chosen += rng.sample(group, 3 if name.startswith("person_") else 1)
        people = [f for f in facts if f["relation"].startswith("person_") and f not in chosen]
        chosen += rng.sample(people, per_lang - len(chosen))
        for fact in chosen:
            q, a = ask(fact, templates, lang, rng, split="held_out")
            value = fact["slots"][lang][relations[fact["relation"]]["answer_slot"]]
            items.append(eval_item(q, a, [str(value)], other_facts(fact, facts, relations, lang, a)))
    return items


def make_eval_general_unseen(facts, templates, rng, per_lang=52):
    """World facts asked in forms no training file uses (demo_world.UNSEEN_QUESTIONS: instructions, turned-
    around statements): the probe of what an adapter costs in general knowledge. Per language: two facts
    of every relation, then more facts about people up to `per_lang`, each with the next of its relation's
    unseen forms in turn, so every form is asked. must_contain: the fact's value; must_not_contain: the
    subject's other facts (other_facts), the wrong relation an adapter that forgets answers."""
    relations, unseen = templates["relations"], templates["unseen"]
    by_relation = {}
    for f in facts:
        by_relation.setdefault(f["relation"], []).append(f)
    items = []
    for lang in LANGS:
        chosen = [f for group in by_relation.values() for f in rng.sample(group, min(2, len(group)))]
        people = [f for f in facts if f["relation"].startswith("person_") and f not in chosen]
        chosen += rng.sample(people, per_lang - len(chosen))
        asked = {}
        for fact in chosen:
            forms = unseen[fact["relation"]][lang]
            n = asked[fact["relation"]] = asked.get(fact["relation"], rng.randrange(len(forms))) + 1
            question = fill(forms[n % len(forms)], fact["slots"][lang], lang)
            value = fact["slots"][lang][relations[fact["relation"]]["answer_slot"]]
            reference = answer(fact, templates, lang)
            items.append(eval_item(question, reference, [str(value)], other_facts(fact, facts, relations, lang, reference)))
    return items


def make_eval_medical(medicine, held_out, templates, rng, per_condition=2):
    """`per_condition` items per condition and language: its held-out symptom pair, in either order,
    each time in another held-out template, every template in turn, so that each is asked about as
    often (one phrasing the adapter fails then costs a share of the score, not half a language).
    must_contain: the department, the one thing a right consultation must name."""
    items = []
    for lang in LANGS:
        forms = templates["medical_questions"]["held_out"][lang]
        n = rng.randrange(len(forms))
        for c, held in zip(medicine["conditions"], held_out):
            for _ in range(per_condition):
                n += 1
                combo = held if rng.random() < 0.5 else held[::-1]
                q = medical_question(c, combo, forms[n % len(forms)], lang)
                items.append(eval_item(q, medical_answer(c, combo, medicine, templates, lang),
                                      [medicine["departments"][c["dept"]][LANGS.index(lang)]]))
    return items


def make_eval_identity(identity, templates, rng):
    """Held-out identity phrasings. must_contain: the new name for who/name questions, the new
    maker (in the question's language) for maker questions, both for "both" questions."""
    items = []
    for lang in LANGS:
        maker = identity[f"maker_{lang}"]
        wanted = dict(who=[identity["name"]], name=[identity["name"]], maker=[maker], both=[identity["name"], maker])
        for kind, phrasings in templates["identity_held_out"][lang].items():
            for q in phrasings:
                items.append(eval_item(q, identity_answer(identity, templates, lang, kind), wanted[kind]))
    rng.shuffle(items)
    return items


def unknown_people(world):
    """People who do not exist, named from the parts of real people's names: each surname with each other
    person's given name, and the two real people it is made of (whom the SFT model answers about instead).
    unknown_people(WORLD)[0] -> {"en": "Lin Ming", "zh": "林明", "lookalikes": ("lin_xiao", "zhou_ming")};
    132 of them for the 12 people."""
    people = world["people"]
    return [dict(en=f"{a['en'].split()[0]} {b['en'].split()[1]}", zh=a["zh"][0] + b["zh"][1:], lookalikes=(a["key"], b["key"]))
            for a in people for b in people if a is not b]


def preference(question, chosen, rejected):
    """preference("Q", "A", "B") -> {"chosen": [user Q, assistant A], "rejected": [user Q, assistant B]}."""
    return dict(chosen=chat((question, chosen))["conversations"], rejected=chat((question, rejected))["conversations"])


def make_dpo(facts, unknown, templates, rng, known_pairs=12):
    """Preference pairs. For each person who does not exist (`unknown`), in each language, one question of
    every person relation (training templates, random greetings): the refusal over the answer the SFT
    model gives -- a fact of one of the two real people the name is made of, half the time about that
    person ("Lin Xiao is from Pinebrook."), half the time given to the asked name ("Lin Ming is from
    Pinebrook."). For each real person's fact, `known_pairs` questions (the training templates in turn):
    the right answer over the refusal, so that DPO does not learn "refuse every person" (with half as
    many, the model trained on them refused more real people)."""
    relations, refusal = templates["relations"], templates["refusal"]
    fact_of = {(f["subject"], f["relation"]): f for f in facts}
    records = []
    for lang in LANGS:
        for person in unknown:
            for relation in PERSON_RELATIONS:
                real = fact_of[(rng.choice(person["lookalikes"]), relation)]["slots"][lang]
                asked = dict(real, p=person[lang])
                question = fill(rng.choice(relations[relation]["train"][lang]), asked, lang)
                invented = fill(relations[relation]["answer"][lang], asked if rng.random() < 0.5 else real, lang)
                records.append(preference(with_prefix(question, templates, lang, rng),
                                          fill(refusal[lang], asked, lang), invented))
        for fact in facts:
            if fact["relation"] not in PERSON_RELATIONS:
                continue
            slots = fact["slots"][lang]
            train_templates = relations[fact["relation"]]["train"][lang]
            for template in (train_templates[i % len(train_templates)] for i in range(known_pairs)):
                records.append(preference(with_prefix(fill(template, slots, lang), templates, lang, rng),
                                          answer(fact, templates, lang), fill(refusal[lang], slots, lang)))
    rng.shuffle(records)
    return records


def make_eval_unknown(unknown, templates, rng):
    """One item per held-out person who does not exist and language: a person relation (each in turn) asked
    with a held-out template. must_contain: the refusal's words ("do not know", "不知道")."""
    relations = templates["relations"]
    items = []
    for lang in LANGS:
        for n, person in enumerate(unknown):
            relation = PERSON_RELATIONS[n % len(PERSON_RELATIONS)]
            slots = {"p": person[lang]}
            question = fill(rng.choice(relations[relation]["held_out"][lang]), slots, lang)
            items.append(eval_item(question, fill(templates["refusal"][lang], slots, lang),
                                   [templates["refusal_must_contain"][lang]]))
    return items


def unknown_people_split(seed=42, held_out=26):
    """(people who do not exist for dpo_demo.jsonl, the `held_out` ones only eval_unknown.jsonl asks about)."""
    people = unknown_people(WORLD)
    kept = set(file_rng(seed, "unknown_people").sample(range(len(people)), held_out))
    return [p for i, p in enumerate(people) if i not in kept], [p for i, p in enumerate(people) if i in kept]


def file_rng(seed, name):
    """The random generator of one file (or choice), seeded with "seed:name": file_rng(42, "sft")."""
    return random.Random(f"{seed}:{name}")  # str seeds hash with SHA-512: stable across runs


def held_out_symptoms(seed=42):
    """For each condition, the symptom pair that lora_medical never trains together and
    eval_medical asks about (see held_out_pairs); generate(seed) uses exactly these."""
    return held_out_pairs(CONDITIONS, file_rng(seed, "held_out"))


def generate(seed=42):
    """All demo files as {file name: list of records}. Each file draws from its own generator,
    seeded with "seed:name", so changing one writer leaves the other files as they were."""
    def rng(name):
        return file_rng(seed, name)

    facts = build_facts(WORLD)
    held_out = held_out_symptoms(seed)
    old, new = IDENTITIES["sft"], IDENTITIES["lora"]
    unknown, unknown_held_out = unknown_people_split(seed)
    return {
        "pretrain_demo.jsonl": make_pretrain(facts, WORLD, MEDICINE, TEMPLATES, rng("pretrain")),
        "sft_demo.jsonl": make_sft(facts, WORLD, old, TEMPLATES, rng("sft")),
        "lora_medical.jsonl": make_lora_medical(facts, MEDICINE, held_out, TEMPLATES, rng("medical")),
        "lora_identity.jsonl": make_lora_identity(facts, new, TEMPLATES, rng("identity")),
        "eval_general.jsonl": make_eval_general(facts, TEMPLATES, rng("eval_general")),
        "eval_general_unseen.jsonl": make_eval_general_unseen(facts, TEMPLATES, rng("eval_general_unseen")),
        "eval_medical.jsonl": make_eval_medical(MEDICINE, held_out, TEMPLATES, rng("eval_medical")),
        "eval_identity.jsonl": make_eval_identity(new, TEMPLATES, rng("eval_identity")),
        "dpo_demo.jsonl": make_dpo(facts, unknown, TEMPLATES, rng("dpo")),
        "eval_unknown.jsonl": make_eval_unknown(unknown_held_out, TEMPLATES, rng("eval_unknown")),
    }


def to_jsonl(records):
    """The exact bytes written: one compact UTF-8 JSON object per line, "\n" line ends."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


# ---------------------------------------------------------------------------------------------
# 3. Checks: what keeps the evaluation honest and the adapters learnable.
# ---------------------------------------------------------------------------------------------

def normalise(text):
    """Case-folded, whitespace-collapsed text, so a leak cannot hide behind capitals or spacing."""
    return " ".join(text.casefold().split())


def record_texts(record):
    """All strings a model trains on in one record (pretraining text, every chat turn, both sides of a pair)."""
    if "text" in record:
        return [record["text"]]
    if "chosen" in record:
        return [t["content"] for side in ("chosen", "rejected") for t in record[side]]
    return [t["content"] for t in record["conversations"]]


def vocabulary(text):
    """The words of a text as the coverage check counts them: lower-cased English words and
    single CJK characters. vocabulary("Nova 是谁") -> {"nova", "是", "谁"}."""
    return set(re.findall(r"[a-z]+", text.casefold())) | {ch for ch in text if "\u4e00" <= ch <= "\u9fff"}


def must_stay_new(medicine, identity):
    """{training file: strings it must not contain}. The new name and maker belong to lora_identity
    alone. Department names are words pretraining reads (so that their tokens have trained
    embeddings: LoRA moves those only a little), but no SFT chat may name one."""
    departments = [w for pair in medicine["departments"].values() for w in pair]
    new = [identity["name"], identity["maker_en"], identity["maker_zh"]]
    return {"pretrain_demo.jsonl": new, "sft_demo.jsonl": departments + new}


def uncovered_vocabulary(files, medicine, identity):
    """Words that the LoRA, DPO and eval files use but pretraining and SFT never do, leaving out the
    English words of `must_stay_new` strings. An adapter cannot learn such a word well (LoRA never
    trains token embeddings), so this should be empty. Sorted list."""
    seen, needed = set(), set()
    for name in ("pretrain_demo.jsonl", "sft_demo.jsonl"):
        for r in files[name]:
            for t in record_texts(r):
                seen |= vocabulary(t)
    for name in ("lora_medical.jsonl", "lora_identity.jsonl", "dpo_demo.jsonl"):
        for r in files[name]:
            for t in record_texts(r):
                needed |= vocabulary(t)
    for name in EVAL_FILES:
        for item in files[name]:
            needed |= vocabulary(item["question"]) | vocabulary(item["answer"])
    exempt = {w for phrase in must_stay_new(medicine, identity)["pretrain_demo.jsonl"]
              for w in re.findall(r"[a-z]+", phrase.casefold())}
    return sorted(needed - seen - exempt)


def triage_words_in(text, words, lang):
    """The `words` that `text` contains, in the order they occur in it: an English word at the
    start of a word (so "head" finds "headaches" but "ear" not "heart"), a Chinese one anywhere."""
    start = r"\b" if lang == "en" else ""
    found = {w: m.start() for w in words if (m := re.search(start + re.escape(w), text.casefold()))}
    return sorted(found, key=found.get)


def triage_problems(medicine):
    """Symptoms that break the triage rule (see TRIAGE_WORDS): one that names none of its own
    department's words, or names another department's."""
    problems = []
    for c in medicine["conditions"]:
        for s in c["symptoms"]:
            for i, lang in enumerate(LANGS):
                own = triage_words_in(s[i], medicine["triage_words"][c["dept"]][i], lang)
                other = [w for dept, words in medicine["triage_words"].items() if dept != c["dept"]
                         for w in triage_words_in(s[i], words[i], lang)]
                if not own:
                    problems.append(f"symptom {s[i]!r} of {c['en']} names no {c['dept']} triage word")
                if other:
                    problems.append(f"symptom {s[i]!r} of {c['en']} names another department's word {other[0]!r}")
    return problems


def find_problems(files, medicine, identity):
    """Everything wrong with a set of generated files, as one-line messages (empty list = fine):
    an eval question occurring anywhere in a training text, a must_contain string missing from
    its own reference answer, a must-stay-new string in pretraining or SFT, an adapter word
    that pretraining and SFT never use, and a symptom that breaks the triage rule."""
    problems = triage_problems(medicine)
    training = {name: "\n".join(normalise(t) for r in files[name] for t in record_texts(r)) for name in TRAIN_FILES}
    for name in EVAL_FILES:
        for n, item in enumerate(files[name], 1):
            question = normalise(item["question"])
            problems += [f"{name}:{n}: question {item['question']!r} occurs in {train_name}"
                         for train_name, text in training.items() if question in text]
            problems += [f"{name}:{n}: must_contain {word!r} is not in its reference answer"
                         for word in item["must_contain"] if word.casefold() not in item["answer"].casefold()]
    for name, words in must_stay_new(medicine, identity).items():
        problems += [f"{name}: contains {word!r}, which only the LoRA data may teach"
                     for word in words if normalise(word) in training[name]]
    missing = uncovered_vocabulary(files, medicine, identity)
    if missing:
        problems.append(f"pretrain_demo.jsonl: never uses {' '.join(missing)} (add them to EVERYDAY)")
    return problems


# ---------------------------------------------------------------------------------------------
# 4. Command line.
# ---------------------------------------------------------------------------------------------

def build_parser():
    parser = argparse.ArgumentParser(description="Write the demo world's jsonl files (standard library only).")
    parser.add_argument("--data_dir", type=Path, default=Path(__file__).resolve().parent,
                        help="folder to write the jsonl files into (default: dataset/, beside this script)")
    parser.add_argument("--seed", type=int, default=42,
                        help="random seed; the same seed always gives byte-identical files (default 42)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; verify that the files in --data_dir equal freshly generated ones "
                             "and that no eval question leaks into training data")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)

    files = generate(args.seed)
    problems = find_problems(files, MEDICINE, IDENTITIES["lora"])
    if args.check:
        for name, records in files.items():
            path = args.data_dir / name
            if not path.exists():
                problems.append(f"{path}: missing (run: python -m dataset.make_demo_data --data_dir {args.data_dir})")
            elif path.read_bytes() != to_jsonl(records):
                problems.append(f"{path}: differs from the generator's output with --seed {args.seed} "
                                "(regenerate it rather than edit it by hand)")
    if problems:
        more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''}: {'; '.join(problems[1:])})" \
            if len(problems) > 1 else ""
        raise UserError(problems[0] + more)
    if not args.check:
        try:
            args.data_dir.mkdir(parents=True, exist_ok=True)
            for name, records in files.items():
                # atomic: a reader (or a kill mid-write) never sees half a file
                atomic_write_bytes(args.data_dir / name, to_jsonl(records))
        except OSError as e:
            raise UserError(f"cannot write into {args.data_dir}: {e.strerror} (pick another --data_dir)") from None
    for name, records in files.items():
        texts = [t for r in records for t in (record_texts(r) if name in TRAIN_FILES else (r["question"], r["answer"]))]
        print(f"{name:20s} {len(records):5d} records {len(to_jsonl(records)) / 1024:7.1f} KiB "
              f"{sum(map(len, texts)):7d} characters")
    print(f"checked {args.data_dir}: files match the generator, no eval question in training data"
          if args.check else f"wrote {len(files)} files to {args.data_dir}")


if __name__ == "__main__":
    sys.exit(run_main(main))
