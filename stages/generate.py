"""generate: training pairs written by a language model behind an OpenAI-compatible endpoint.

Two uses, each with its own count, off at 0 (an empty output with the right columns, and metrics
that say "off"):
- (a) transfer pairs (`transfer_count`): the model sees a few pool pairs and writes a new
  premise/hypothesis pair in their style. Label -1: distill gives them the teacher's soft labels
  only, so no generated label is trusted, and a weak generator can still help.
- (b) label-conditioned pairs (`label_count`): for a labelled premise, one hypothesis per label.
  The generator's intent is not trusted either: a pair is kept only where the acquisition model
  (active_select's, trained on the seed set) predicts the intended label with confidence
  >= `min_confidence`. Kept pairs get `weight` and join the teacher's training rows.

Every reply is screened: empty, over-long (more than `max_words`, or cut off at `max_tokens`), a
refusal, a copy of the premise, a pair or sentence that is in dev or test, a duplicate; each count
is in the metrics. A malformed reply (no JSON, no choices, not in the asked format) is dropped and
counted, a request past `timeout` is skipped and counted; an endpoint that cannot be reached (or a
local server that died) fails the stage after `retries` tries, with an error naming base_url, and
nothing is written: outputs are written, atomically, only when every request has been answered.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from stages._cli import run
from stages._determinism import seed_everything
from stages._io import LABEL_NAMES, UNLABELLED, ModelError, read_pairs, write_metrics, write_pairs
from stages._params import GenerateParams, load_params
from stages._text import ORIGINAL_SOURCES, same_words
from stages.prepare import pair_key

OUTPUT_COLUMNS = ["premise", "hypothesis", "label", "source", "weight"]
SOURCE = "generated"
# How a label is asked for: "Write one hypothesis sentence that {relation} the premise."
RELATIONS = {0: "must be true if the premise is true, i.e. follows from",
             1: "might be true or false given, i.e. is neither implied nor contradicted by",
             2: "cannot be true if the premise is true, i.e. contradicts"}
# Replies that decline or talk about the task instead of doing it.
_REFUSAL = re.compile(
    r"\b(i'?m sorry|i am sorry|i cannot|i can'?t|i am unable|i'?m unable|as an ai|language model|"
    r"i apologi[sz]e|cannot fulfill|can'?t help)\b", re.IGNORECASE)
# "Premise: ..." anywhere on a line ("Sure! Premise: ...", "**Hypothesis:** ..." too).
_FIELD = re.compile(r"\b(premise|hypothesis)[ \t*_]*:[ \t]*(.*?)[ \t]*$", re.IGNORECASE | re.MULTILINE)
_LEADING = re.compile(r"^\s*(?:\d+[.)]\s*|[-*]\s+|hypothesis\s*:\s*)", re.IGNORECASE)
DROP_REASONS = ("empty", "over_long", "refusal", "premise_copy", "in_dev_or_test", "duplicate")
_RETRY_PAUSE = 0.5  # seconds before the first retry; doubled for each next one


class EndpointError(ModelError):
    """The endpoint cannot be reached or keeps failing (or the local server died); names base_url.
    A ModelError, so the stage exits with this one line (stages._cli)."""


class Skipped(Exception):
    """One request gave nothing usable: `kind` is timed_out or malformed; the stage goes on."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


@dataclass(frozen=True)
class Reply:
    text: str
    completion_tokens: int
    truncated: bool  # stopped at max_tokens


Ask = Callable[[str, int], Reply]  # (user prompt, request number) -> reply; raises Skipped or EndpointError
Check = Callable[[list[str], list[str]], np.ndarray]  # (premises, hypotheses) -> class probabilities (n, 3)


def openai_ask(client, base_url: str, params: GenerateParams, seed: int,
               server_alive: Callable[[], str | None] = lambda: None) -> Ask:
    """An `Ask` over the openai client (its own retries off: ours are bounded and counted).

    `server_alive` returns why the local server is gone (or None): a dead server is reported at
    once, not after retries against a port nobody listens on.
    """
    import openai

    def ask(prompt: str, number: int) -> Reply:
        for attempt in range(params.retries + 1):
            if (gone := server_alive()) is not None:
                raise EndpointError(f"generate.base_url {base_url}: the local server died mid-run ({gone})")
            try:
                response = client.chat.completions.create(
                    model=params.model, temperature=params.temperature, max_tokens=params.max_tokens,
                    seed=seed + number, timeout=params.timeout,
                    messages=[{"role": "system", "content": params.system_prompt}, {"role": "user", "content": prompt}],
                )
            except openai.APITimeoutError as err:  # before APIConnectionError: it is one
                raise Skipped("timed_out", str(err)) from None
            except openai.APIConnectionError as err:
                problem = f"cannot connect ({err.__cause__ or err})"
            except openai.APIStatusError as err:
                if err.status_code < 500 and err.status_code not in (408, 429):
                    raise EndpointError(f"generate.base_url {base_url}: model {params.model!r} refused the request "
                                        f"(HTTP {err.status_code}: {str(err)[:300]})") from None
                problem = f"HTTP {err.status_code}"
            except (openai.APIResponseValidationError, ValueError) as err:  # no JSON, or JSON of another shape
                raise Skipped("malformed", str(err)[:200]) from None
            else:
                return _reply(response)
            if attempt < params.retries:
                time.sleep(_RETRY_PAUSE * 2 ** attempt)
        if (gone := server_alive()) is not None:
            raise EndpointError(f"generate.base_url {base_url}: the local server died mid-run ({gone})")
        raise EndpointError(f"generate.base_url {base_url}: {problem} after {params.retries + 1} tries; "
                            "is the server running, and is base_url its OpenAI-style address (ending in /v1)?")

    return ask


def _reply(response) -> Reply:
    """The text of an OpenAI chat completion; Skipped('malformed') when it has none."""
    try:
        choice = response.choices[0]
        text = choice.message.content
        if not isinstance(text, str):
            raise TypeError(f"message content is {text!r}")
        usage = getattr(response, "usage", None)
        tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        return Reply(text=text, completion_tokens=tokens, truncated=choice.finish_reason == "length")
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as err:
        raise Skipped("malformed", f"{type(err).__name__}: {err}") from None


def parse_pair(text: str) -> tuple[str, str] | None:
    """'Premise: ...' and 'Hypothesis: ...' lines (first of each) -> (premise, hypothesis), or None."""
    found: dict[str, str] = {}
    for name, value in _FIELD.findall(text):
        found.setdefault(name.lower(), _unquote(value))
    return (found["premise"], found["hypothesis"]) if len(found) == 2 else None


def parse_sentence(text: str) -> str:
    """The first non-empty line, without numbering, a 'Hypothesis:' label or quotes ('' if none)."""
    for line in text.splitlines():
        line = _unquote(_LEADING.sub("", line))
        if line:
            return line
    return ""


def _unquote(text: str) -> str:
    return text.strip().strip("\"'“”‘’`*_").strip()


class Screen:
    """The filters every generated pair goes through, with their counts; remembers what it kept."""

    def __init__(self, params: GenerateParams, known: pd.DataFrame, dev_test: pd.DataFrame):
        self.max_words = params.max_words
        self.seen = set(pair_key(known["premise"], known["hypothesis"])) if len(known) else set()
        self.eval_pairs = set(pair_key(dev_test["premise"], dev_test["hypothesis"])) if len(dev_test) else set()
        sentences = pd.concat([dev_test["premise"], dev_test["hypothesis"]], ignore_index=True)
        self.eval_sentences = set(_sentence_keys(sentences)) if len(sentences) else set()

    def reason(self, premise: str, hypothesis: str, new_sentences: list[str], truncated: bool) -> str | None:
        """Why the pair is dropped (one of DROP_REASONS), or None to keep it (and remember it)."""
        if not premise.strip() or not hypothesis.strip():
            return "empty"
        if truncated or any(len(s.split()) > self.max_words for s in (premise, hypothesis)):
            return "over_long"
        if any(_REFUSAL.search(s) for s in new_sentences):
            return "refusal"
        if same_words(premise, hypothesis):
            return "premise_copy"
        key = pair_key(pd.Series([premise]), pd.Series([hypothesis]))[0]
        if key in self.eval_pairs or set(_sentence_keys(pd.Series(new_sentences))) & self.eval_sentences:
            return "in_dev_or_test"
        if key in self.seen:
            return "duplicate"
        self.seen.add(key)
        return None


def _sentence_keys(sentences: pd.Series) -> pd.Series:
    # prepare.pair_key's normalisation (case, punctuation, spacing) of one sentence.
    return pair_key(sentences.reset_index(drop=True), pd.Series([""] * len(sentences)))


def _empty_use(status: str) -> dict:
    return {"status": status, "requests": 0, "kept": 0, "malformed": 0, "timed_out": 0,
            "dropped": dict.fromkeys(DROP_REASONS, 0), "completion_tokens": 0, "seconds": 0.0, "tokens_per_second": None}


def _request(ask: Ask, prompt: str, number: int, counts: dict) -> Reply | None:
    counts["requests"] += 1
    started = time.perf_counter()
    try:
        reply = ask(prompt, number)
    except Skipped as skipped:
        counts[skipped.kind] += 1
        return None
    finally:
        counts["seconds"] += time.perf_counter() - started
    counts["completion_tokens"] += reply.completion_tokens
    return reply


def _finish(counts: dict) -> dict:
    if counts["status"] == "on" and counts["requests"] and not counts["kept"]:
        # Every reply was lost before any use (unparsable, timed out or filtered): the run trains
        # exactly as without this use, so the stage's line and metrics must say so and why.
        lost = {"malformed": counts["malformed"], "timed out": counts["timed_out"],
                **{f"dropped as {reason}": n for reason, n in counts["dropped"].items()}}
        counts["status"] = (f"on, but none of {counts['requests']} requests kept: "
                            + ", ".join(f"{n} {why}" for why, n in lost.items() if n)
                            + "; check the endpoint (generate.base_url, model) and the prompts")
    seconds = counts["seconds"]
    counts["seconds"] = round(seconds, 2)
    counts["tokens_per_second"] = round(counts["completion_tokens"] / seconds, 1) if seconds > 0 else None
    return counts


def _frame(rows: list[tuple[str, str, int]], weight: float) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["premise", "hypothesis", "label"]).astype({"label": "int64"})
    return frame.assign(source=SOURCE, weight=float(weight))[OUTPUT_COLUMNS]


def generate_transfer(pool: pd.DataFrame, ask: Ask, params: GenerateParams, screen: Screen,
                      seed: int) -> tuple[pd.DataFrame, dict]:
    """Use (a): `transfer_count` requests, each showing `examples` pool pairs; label -1."""
    if params.transfer_count == 0:
        return _frame([], 1.0), _empty_use("off (generate.transfer_count = 0)")
    if len(pool) == 0:
        raise ModelError("generate.transfer_count > 0 needs style examples, but the pool and labelled rows are empty")
    counts, rows = _empty_use("on"), []
    rng = np.random.default_rng([seed, 1])
    for number in range(params.transfer_count):
        shown = pool.iloc[rng.choice(len(pool), size=min(params.examples, len(pool)), replace=False)]
        examples = "\n\n".join(f"Premise: {p}\nHypothesis: {h}" for p, h in zip(shown["premise"], shown["hypothesis"]))
        reply = _request(ask, params.transfer_prompt.format(examples=examples), number, counts)
        if reply is None:
            continue
        pair = parse_pair(reply.text)
        if pair is None:
            counts["malformed"] += 1
            continue
        reason = screen.reason(*pair, new_sentences=list(pair), truncated=reply.truncated)
        if reason:
            counts["dropped"][reason] += 1
        else:
            rows.append((*pair, UNLABELLED))
    counts["kept"] = len(rows)
    return _frame(rows, 1.0), _finish(counts)


def generate_labelled(labelled: pd.DataFrame, ask: Ask, check: Check | None, params: GenerateParams,
                      screen: Screen, seed: int) -> tuple[pd.DataFrame, dict]:
    """Use (b): `label_count` distinct labelled premises x 3 labels; kept where `check` agrees."""
    if params.label_count == 0:
        return _frame([], params.weight), {**_empty_use("off (generate.label_count = 0)"), "check_rejected": 0}
    if check is None:
        raise ModelError("generate.label_count > 0 needs the acquisition model to check each pair's label")
    originals = labelled[labelled["source"].isin(ORIGINAL_SOURCES) & (labelled["label"] >= 0)]
    premises = originals["premise"].drop_duplicates()
    picked = premises.sample(n=min(params.label_count, len(premises)), random_state=seed).tolist()
    counts, candidates = _empty_use("on"), []
    number = params.transfer_count  # request numbers (and endpoint seeds) continue after use (a)'s
    for premise in picked:
        for label, relation in RELATIONS.items():
            reply = _request(ask, params.label_prompt.format(premise=premise, relation=relation), number, counts)
            number += 1
            if reply is None:
                continue
            hypothesis = parse_sentence(reply.text)
            reason = screen.reason(premise, hypothesis, new_sentences=[hypothesis], truncated=reply.truncated)
            if reason:
                counts["dropped"][reason] += 1
            else:
                candidates.append((premise, hypothesis, label))
    kept, check_metrics = _checked(candidates, check, params.min_confidence)
    counts.update(kept=len(kept), premises=len(picked), **check_metrics)
    if candidates and not kept:
        # Say so where the user looks (the stage's line and metrics): the run then trains exactly
        # as without use (b), which is easy to take for a measurement of it.
        counts["status"] = (
            f"on, but none of {len(candidates)} candidates kept: the acquisition model gave the intended "
            f"label >= generate.min_confidence={params.min_confidence} to none (its top label was the intended "
            f"one for {check_metrics['agree_top']}); lower generate.min_confidence or train a stronger "
            "acquisition model (active_select)")
    return _frame(kept, params.weight), _finish(counts)


def _checked(candidates: list[tuple[str, str, int]], check: Check, min_confidence: float) -> tuple[list, dict]:
    """Keep the pairs whose intended label the check model predicts with >= min_confidence."""
    if not candidates:
        return [], {"check_rejected": 0, "kept_by_label": dict.fromkeys(LABEL_NAMES, 0), "min_confidence": min_confidence,
                    "agree_top": 0, "intended_prob_median": None}
    probs = np.asarray(check([c[0] for c in candidates], [c[1] for c in candidates]))  # (candidates, 3)
    intended = np.array([c[2] for c in candidates])
    intended_prob = probs[np.arange(len(candidates)), intended]
    top = probs.argmax(axis=1) == intended
    agree = top & (intended_prob >= min_confidence)
    kept = [c for c, ok in zip(candidates, agree) if ok]
    return kept, {
        "check_rejected": int((~agree).sum()),
        # How the check saw the candidates, whatever the threshold: to choose min_confidence.
        "agree_top": int(top.sum()),
        "intended_prob_median": round(float(np.median(intended_prob)), 4),
        "kept_by_label": {name: int(((intended == i) & agree).sum()) for i, name in enumerate(LABEL_NAMES)},
        "min_confidence": min_confidence,
    }


def generate(pool: pd.DataFrame, labelled: pd.DataFrame, dev_test: pd.DataFrame, ask: Ask, params: GenerateParams,
             seed: int, check: Check | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Return (use (a) transfer pairs, use (b) labelled pairs, metrics). Nothing here touches a file.

    `pool`: the unlabelled pool, whose pairs (a)'s prompts show as the style to follow (the
    labelled rows when the pool is empty); `labelled`: the labelled training rows ((b) draws its
    premises from the gold/oracle ones); `dev_test`: the pairs no generated text may repeat.
    """
    screen = Screen(params, pd.concat([pool, labelled], ignore_index=True), dev_test)
    style = pool if len(pool) else labelled
    transfer, transfer_metrics = generate_transfer(style, ask, params, screen, seed)
    conditioned, label_metrics = generate_labelled(labelled, ask, check, params, screen, seed)
    return transfer, conditioned, {"transfer": transfer_metrics, "label": label_metrics}


@contextlib.contextmanager
def endpoint(params: GenerateParams, seed: int, threads: int, log: Path) -> Iterator[tuple[Ask, dict]]:
    """An `Ask` for params.base_url (starting and finally stopping the local server for "local"),
    and what the metrics say about the endpoint."""
    import openai

    api_key = os.environ.get(params.api_key_env) or "none"  # local servers accept any key
    seed = params.seed if params.seed is not None else seed
    if params.base_url != "local":
        client = openai.OpenAI(base_url=params.base_url, api_key=api_key, max_retries=0, timeout=params.timeout)
        yield openai_ask(client, params.base_url, params, seed), {"base_url": params.base_url, "model": params.model}
        return
    from stages._llm_server import local_server

    with local_server(log, threads=threads, context=2048, seed=seed) as server:
        def alive() -> str | None:
            code = server.exited()
            return None if code is None else f"process {server.process.pid} exited with code {code}; log {server.log}"

        client = openai.OpenAI(base_url=server.base_url, api_key=api_key, max_retries=0, timeout=params.timeout)
        yield (openai_ask(client, server.base_url, params, seed, alive),
               {"base_url": "local", "model": server.describe()["model_file"], "server": server.describe()})


def acquisition_check(model_dir: str | Path, max_length: int) -> Check:
    """Class probabilities from the acquisition model active_select kept (`active_select.keep_model`)."""
    from stages._inference import predict_logits, softmax
    from stages._models import load_model

    if not (Path(model_dir) / "config.json").is_file():
        raise ModelError(f"{model_dir}: no acquisition model; generate.label_count > 0 needs it to check labels: "
                         "set active_select.keep_model: true (active_select then trains and keeps it)")
    model, tokenizer = load_model(model_dir)

    def check(premises: list[str], hypotheses: list[str]) -> np.ndarray:
        logits = predict_logits(model, tokenizer, premises, hypotheses, batch_size=64, max_length=max_length,
                                desc="check generated labels")
        return softmax(logits)

    return check


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--labelled", required=True, help="labelled training rows (Parquet)")
    parser.add_argument("--unlabelled", required=True, help="the unlabelled pool (Parquet)")
    parser.add_argument("--acquisition", required=True, help="the acquisition model directory (use (b)'s check)")
    parser.add_argument("--dev", required=True)
    parser.add_argument("--test", required=True)
    parser.add_argument("--transfer-out", required=True)
    parser.add_argument("--labelled-out", required=True)
    parser.add_argument("--metrics", required=True)
    parser.add_argument("--server-log", default=".cache/generate/llama-server.log")
    args = parser.parse_args(argv)

    params = load_params(args.params)
    run_info = seed_everything(params.seed, params.threads)
    p = params.generate
    labelled = read_pairs(args.labelled)
    pool = read_pairs(args.unlabelled, allow_unlabelled=True, allow_empty=True)
    # Only the texts: generated pairs must not repeat a held-out pair, and nothing here may see the
    # test labels (tests/test_reproducible.py poisons them and checks that this output is unchanged).
    dev_test = pd.concat([read_pairs(args.dev), read_pairs(args.test)], ignore_index=True)[["premise", "hypothesis"]]
    check = acquisition_check(args.acquisition, params.model.max_length) if p.label_count > 0 else None
    started = time.perf_counter()
    if p.transfer_count == 0 and p.label_count == 0:
        # Both uses off: no endpoint is contacted (and no local server started).
        transfer, conditioned, metrics = generate(pool, labelled, dev_test, _no_endpoint, p, params.seed)
        metrics["endpoint"] = {"base_url": p.base_url, "model": p.model, "contacted": False}
    else:
        with endpoint(p, params.seed, params.threads, Path(args.server_log)) as (ask, described):
            transfer, conditioned, metrics = generate(pool, labelled, dev_test, ask, p, params.seed, check)
        metrics["endpoint"] = {**described, "contacted": True}
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    # Only now, with every request answered, is anything written (atomically).
    write_pairs(transfer, args.transfer_out)
    write_pairs(conditioned, args.labelled_out)
    write_metrics({**metrics, "run": run_info}, args.metrics)
    for use, name in (("transfer", "(a) transfer"), ("label", "(b) label-conditioned")):
        m = metrics[use]
        print(f"generate {name}: {m['status']}, {m['kept']} kept of {m['requests']} requests "
              f"({m['malformed']} malformed, {m['timed_out']} timed out); {m['tokens_per_second']} tokens/s")


def _no_endpoint(prompt: str, number: int) -> Reply:
    raise AssertionError("both uses are off: nothing may be asked")


if __name__ == "__main__":
    run(main)
