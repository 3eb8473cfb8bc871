"""Scoring a model: greedy answers to held-out questions, and the loss of the reference answers.

An evaluation set is a jsonl of {"question": ..., "answer": ..., "must_contain": [...]} records (the
demo's are dataset/eval_*.jsonl). It measures two things:

- answer accuracy: the model answers each question with greedy decoding, and the answer counts as
  correct when it contains every `must_contain` string, ignoring case (answer_is_correct);
- loss and perplexity of the *reference* answers, teacher-forced after the chat prompt, with the
  loss only on the answer tokens and the closing </s> (what SFT trains).

    items = load_eval_set("dataset/eval_medical.jsonl")
    evaluate_set(model, tokenizer, items, max_new_tokens=48, batch_size=16, max_seq_len=8192)
        -> {"n": 52, "correct": 41, "accuracy": 0.79, "loss": 0.41, "ppl": 1.5, "items": [...]}

eval_model.py is the command line around it (and the chat); the demo, the lab and the server's
benchmark score through these same functions.
"""
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from dataset.records import check_unicode, jsonl_lines, parse_line
from plumbing.errors import UserError

# How a reply is sampled by default, in eval_model.py's chat and the server (scoring is always greedy).
# MiniMind2 samples at temperature 0.85, at which the 1M-parameter demo model garbles new words such as
# its new name.
TEMPERATURE, TOP_P, MAX_NEW_TOKENS = 0.3, 0.85, 256

# Built-in prompts for eval_model.py --mode auto: the demo world's general knowledge, the medical domain
# that lora_medical adds, and the identity question that lora_identity changes; in both languages.
AUTO_PROMPTS = [
    "你好，请介绍一下你自己。",
    "Who are you, and who made you?",
    "What is Pinebrook famous for?",
    "林晓住在哪个镇？",
    "I have a racing heartbeat and skipped heartbeats. Which department should I visit?",
    "我最近脸上长了很多痘痘，该怎么办？",
]


# ---------------------------------------------------------------------------------------------
# The scoring rule and the sets


def answer_is_correct(answer, must_contain, must_not_contain=()):
    """An answer is correct when it contains every required string and none of the forbidden ones,
    ignoring case.

    Case is folded with str.casefold (Unicode-aware lower-casing); nothing else is normalised, so
    the required strings should be the shortest text any right answer must include. The forbidden
    ones are what a wrong answer would say instead -- the demo's general questions forbid the subject's
    other facts, so an answer that lists everything it knows about Lin Xiao is not an answer to "what
    is Lin Xiao's job?", however it happens to name the job.

    answer_is_correct("The capital is Veloria City.", ["veloria city"]) -> True
    answer_is_correct("去心内科看看", ["心内科", "心电图"])                 -> False (one is missing)
    answer_is_correct("Lin Xiao is from Pinebrook. Lin Xiao is a baker.", ["baker"], ["Pinebrook"]) -> False
    """
    folded = answer.casefold()
    return all(s.casefold() in folded for s in must_contain) and not any(s.casefold() in folded for s in must_not_contain)


def load_eval_set(path):
    """Read an evaluation jsonl: one {"question", "answer", "must_contain": [...]} per line, and optionally
    "must_not_contain": [...].

    Bad records are errors naming the file and line, because a silently skipped question would
    change the denominator of every accuracy computed from the file. The lines are read as the
    training data's are (dataset/lm_dataset.py: jsonl_lines, parse_line), so the same files are
    accepted: a byte-order mark is fine, invalid UTF-8 is an error naming the line.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"evaluation file {path} not found (the demo sets are dataset/eval_*.jsonl)")
    items = []
    for raw, where in jsonl_lines(path):
        record = parse_line(raw, where)
        question, answer, must = record.get("question"), record.get("answer"), record.get("must_contain")
        if not isinstance(question, str) or not question.strip():
            raise UserError(f"{where}: 'question' must be a non-empty string")
        if not isinstance(answer, str) or not answer.strip():
            raise UserError(f"{where}: 'answer' must be a non-empty string (the reference answer)")
        # An empty list would make every answer correct, so it is refused rather than scored.
        if not isinstance(must, list) or not must or not all(isinstance(s, str) and s for s in must):
            raise UserError(f"{where}: 'must_contain' must be a non-empty list of non-empty strings")
        never = record.get("must_not_contain", [])
        if not isinstance(never, list) or not all(isinstance(s, str) and s for s in never):
            raise UserError(f"{where}: 'must_not_contain', when given, must be a list of non-empty strings")
        if not answer_is_correct(answer, must, never):  # a file whose own reference answer fails is wrong
            raise UserError(f"{where}: the reference 'answer' itself fails the item (it lacks a 'must_contain' "
                            "string or holds a 'must_not_contain' one)")
        for key, text in [("question", question), ("answer", answer)] + [("must_contain", m) for m in must + never]:
            check_unicode(text, where, f"'{key}'")  # a "\ud800" escape cannot be tokenized
        items.append({"question": question, "answer": answer, "must_contain": must, "must_not_contain": never})
    if not items:
        raise UserError(f"{path} has no records")
    return items


# ---------------------------------------------------------------------------------------------
# Generating answers and measuring the reference answers' loss


def prompt_ids(tok, messages, max_seq_len, max_new_tokens):
    """The chat-template prompt for `messages`, cut from the left so prompt + answer fit the context."""
    ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    keep = max(max_seq_len - max_new_tokens, max_seq_len // 2)  # a long answer may not eat the whole prompt
    return ids[-keep:]


def generate_answers(model, tok, questions, max_new_tokens, batch_size, max_seq_len):
    """Greedy answers to single-turn questions, several at a time.

    Prompts of similar length share a batch (sorted by length), left-padded so that every row's
    last prompt token sits in the same column and generation continues from there; the attention
    mask keeps the padding invisible, so each row gets the answer it would get alone.
    """
    device = next(model.parameters()).device
    max_new_tokens = min(max_new_tokens, max_seq_len - 1)
    prompts = [prompt_ids(tok, [{"role": "user", "content": q}], max_seq_len, max_new_tokens) for q in questions]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    answers = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        width = max(len(prompts[i]) for i in rows)
        input_ids = torch.tensor([[tok.pad_token_id] * (width - len(prompts[i])) + prompts[i] for i in rows])
        mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in rows])
        room = min(max_new_tokens, max_seq_len - width)  # prompt + answer never longer than the context
        out = model.generate(input_ids.to(device), eos_token_id=tok.eos_token_id, max_new_tokens=room,
                             temperature=0.0, pad_token_id=tok.pad_token_id, attention_mask=mask.to(device))
        for i, new in zip(rows, out[:, width:].tolist()):  # (B, new) -> the generated part of each row
            if tok.eos_token_id in new:
                new = new[:new.index(tok.eos_token_id)]
            answers[i] = tok.decode(new, skip_special_tokens=True)
    return answers


@torch.inference_mode()
def reference_loss(model, tok, items, batch_size, max_seq_len):
    """Summed cross-entropy of the reference answers and the number of answer tokens.

    Each sequence is the chat prompt, then the answer encoded on its own, then </s>: exactly the
    tokens a perfect model would generate after the prompt. Loss is taken on the answer and the
    </s> only, as in SFT. Sequences are right-padded: with causal attention, padding after a token
    cannot change its logits, so no attention mask is needed here.
    """
    device = next(model.parameters()).device
    seqs = []
    for item in items:
        prompt = tok.apply_chat_template([{"role": "user", "content": item["question"]}],
                                         tokenize=True, add_generation_prompt=True)
        answer = tok.encode(item["answer"], allow_special=False) + [tok.eos_token_id]
        ids, scored = prompt + answer, [0] * len(prompt) + [1] * len(answer)
        seqs.append((ids[-max_seq_len:], scored[-max_seq_len:]))
    total, count = 0.0, 0
    for start in range(0, len(seqs), batch_size):
        batch = seqs[start:start + batch_size]
        width = max(len(ids) for ids, _ in batch)
        ids = torch.tensor([s + [tok.pad_token_id] * (width - len(s)) for s, _ in batch], device=device)
        scored = torch.tensor([m + [0] * (width - len(m)) for _, m in batch], device=device)
        logits = model(ids[:, :-1]).logits.float()  # (B, T-1, V): position t predicts token t+1
        nll = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")  # (B, T-1)
        mask = scored[:, 1:].float()  # (B, T-1), aligned with the targets ids[:, 1:]
        total += (nll * mask).sum().item()
        count += int(mask.sum().item())
    return total, count


def evaluate_set(model, tok, items, max_new_tokens, batch_size, max_seq_len):
    """Accuracy and reference-answer loss/perplexity on one evaluation set."""
    answers = generate_answers(model, tok, [it["question"] for it in items], max_new_tokens, batch_size, max_seq_len)
    correct = [answer_is_correct(a, it["must_contain"], it["must_not_contain"]) for a, it in zip(answers, items)]
    total, count = reference_loss(model, tok, items, batch_size, max_seq_len)
    loss = total / count  # token-weighted mean over the whole set
    return {"n": len(items), "correct": sum(correct), "accuracy": sum(correct) / len(items),
            "loss": loss, "ppl": math.exp(loss),
            "items": [{"question": it["question"], "answer": a, "must_contain": it["must_contain"], "correct": c}
                      for it, a, c in zip(items, answers, correct)]}
