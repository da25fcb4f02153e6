"""Smoke tests of `python -m benchmarks ...`, one per sub-command, on the tiny model and small synthetic data."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys

import pytest

pytest.importorskip("bm25s")
pytest.importorskip("matplotlib")
pytest.importorskip("nltk")

import benchmarks  # noqa: E402
from benchmarks import batch, batch_split, common, constrain, cost, locomo, pg19, recipes, scale, serve, speed, suites  # noqa: E402
from benchmarks import locomo_data as data  # noqa: E402
from templora_memory.errors import InvalidInputError  # noqa: E402
from templora_memory.generation import Sampling  # noqa: E402
from templora_memory.kv_cache import PromptCache  # noqa: E402
from templora_memory.replies import ReplyStream  # noqa: E402
from tests.tiny import tiny_model  # noqa: E402

WORDS = "the blacksmith sells swords and shields in Oakridge while the innkeeper talks about the old castle".split()


def _conversation(sample_id: str, speakers: tuple[str, str], sessions: int = 3, turns: int = 6) -> dict:
    """A LoCoMo-format item: `sessions` sessions of `turns` turns, and one question of each category."""
    conversation = {"speaker_a": speakers[0], "speaker_b": speakers[1]}
    for s in range(1, sessions + 1):
        conversation[f"session_{s}_date_time"] = f"1:00 pm on {s} May, 2023"
        conversation[f"session_{s}"] = [
            {"speaker": speakers[t % 2], "dia_id": f"D{s}:{t + 1}", "text": " ".join(WORDS[(s + t) % 5 :][:8])}
            for t in range(turns)
        ]
    qa = [
        {"question": "Who sells swords?", "answer": "the blacksmith", "evidence": ["D1:1"], "category": 4},
        {"question": "When did they talk?", "answer": "1 May 2023", "evidence": ["D1:2"], "category": 2},
        {"question": "What is sold?", "answer": "swords, shields", "evidence": ["D1:1", "D2:1"], "category": 1},
        {"question": "What did the dragon say?", "adversarial_answer": "hello", "evidence": ["D3:1"], "category": 5},
        {"question": "Would they like castles?", "answer": "yes", "evidence": ["D1:3"], "category": 3},
    ]
    return {"sample_id": sample_id, "conversation": conversation, "qa": qa}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def locomo_file(tmp_path):
    path = tmp_path / "locomo.json"
    items = [_conversation("conv-a", ("Ann", "Bob")), _conversation("conv-b", ("Cid", "Dee"))]
    path.write_text(json.dumps(items))
    return path


def test_pg19_scores_before_training_and_buckets_by_position(make_engine, tmp_path):
    (tmp_path / "1.txt").write_text(" ".join(WORDS * 20))
    engine = make_engine()
    result = pg19.run(engine, pg19.book_paths(tmp_path, 1), max_tokens=200, bounds=[64, 128], quiet=True)
    assert {"base_ppl", "templora_ppl", "change_pct", "tokens"} <= set(result["overall"])
    assert [b["range"] for b in result["buckets"]] == ["0-64", "64-128", "128+"]
    assert sum(b["tokens"] for b in result["buckets"]) == result["overall"]["tokens"] == 199  # first token is context
    assert math.isfinite(result["overall"]["base_ppl"]) and result["overall"]["base_ppl"] > 1
    first = result["chunks"][0]
    assert first["base_nll"] == first["templora_nll"]  # nothing written yet: the adapter equals the base model
    assert result["books"][0]["chunks_trained"] == math.ceil(200 / engine.config.chunk_tokens) - 1  # not the last
    assert pg19.plot(result, tmp_path / "pg19.png").stat().st_size > 0
    assert "Avg." in pg19.table(result)


def test_locomo_reports_every_condition_and_never_writes_questions(make_engine, locomo_file, tmp_path):
    engine = make_engine()
    items = data.load(locomo_file)
    options = locomo.Options(answer_tokens=4, top_k=2)
    result = locomo.run(
        engine, items, max_conversations=1, max_tokens=None, max_questions=4, options=options, quiet=True
    )
    assert set(result["conditions"]) == set(locomo.CONDITIONS)
    for summary in result["conditions"].values():
        assert summary["n"] == 3 and summary["nll"] > 0 and 0 <= summary["f1"] <= 1
        assert summary["plain"]["n"] == 3 and set(summary["by_category"]) == {
            "multi-hop",
            "temporal",
            "single-hop",
            "adversarial",
        }
    written = {c["name"]: c["tokens_written"] for c in result["conversations"]}
    assert len(written) == 2  # the second conversation trains the control adapter
    assert engine.stats("locomo-conv-a").tokens_written == written["conv-a"]  # asking wrote nothing
    assert len(result["questions"]) == 4 * len(locomo.CONDITIONS) * len(locomo.FORMS)
    prompts = {(r["question"], r["form"], r["condition"]): r["prompt_tokens"] for r in result["questions"]}
    for (question, form, condition), size in prompts.items():
        if condition == "retrieval" and form == "chat":  # same budget as the window, up to turn-boundary effects
            assert size <= prompts[(question, form, "window")] + 8
        if condition == "adapter_retrieval":  # the retrieval prompt, read with the conversation's adapter
            assert size == prompts[(question, form, "retrieval")]
    nll = {(r["question"], r["form"], r["condition"]): r["nll"] for r in result["questions"]}
    assert any(nll[(q, f, "adapter_retrieval")] != nll[(q, f, "retrieval")] for q, f, _ in nll)
    assert locomo.plot(result, tmp_path / "locomo.png").stat().st_size > 0
    assert set(result["paired"]) == {f"{a}_vs_{b}" for a, b in locomo.PAIRS}
    assert all(0 <= share <= 1 for shares in result["paired"].values() for share in shares.values())

    result["run"] = {"config": engine.config.model_dump(), "torch_threads": 1}
    common.write_json(tmp_path / "recipe.json", result)
    (row,) = recipes.main(argparse.Namespace(results=[str(tmp_path / "recipe.json")], form="plain", out=None))
    assert benchmarks.main(["recipes", str(tmp_path / "recipe.json"), "--form", "plain"]) == 0  # as a command too
    assert row["nll"]["adapter"] == result["conditions"]["adapter"]["plain"]["nll"]
    assert row["adapter_vs_control"] == result["paired"]["adapter_vs_control"]["plain"]
    assert row["recipe"] == {"learning_rate": 1e-2}  # the only recipe field the tiny config changes
    assert "| learning_rate=0.01 |" in recipes.table([row])
    lower = {**result, "questions": [{**q, "nll": q["nll"] - 0.5} for q in result["questions"]]}
    scored = [q for q in result["questions"] if q["condition"] == "adapter" and q["form"] == "plain"]
    scored = [q for q in scored if q["category"] in (1, 2, 4)]
    difference = recipes.paired_difference(result, lower, "plain")
    assert difference["questions"] == len(scored) > 0 and difference["lower"] == len(scored)
    assert difference["mean"] == pytest.approx(-0.5) and difference["ci95"] == pytest.approx([-0.5, -0.5])


def test_locomo_answer_matches_engine_scoring_and_generation(make_engine):
    engine = make_engine()
    prompt, gold = engine.encode("Who sells swords? The"), engine.encode(" blacksmith in Oakridge")
    nll, text = locomo.answer(engine, None, prompt, gold, max_tokens=6)
    assert nll == pytest.approx(common.mean_nll(engine.log_likelihood(None, prompt, gold)), abs=1e-4)
    expected = engine.stream_completion(None, prompt, Sampling(max_new_tokens=6)).result().text
    assert text == expected.lstrip().split("\n")[0].strip()


def test_locomo_answer_with_a_shared_cache_equals_answering_afresh(make_engine):
    engine = make_engine()
    history = engine.encode("The blacksmith sells swords and shields in Oakridge. ")
    questions = [engine.encode(q) for q in ("Who sells swords? The", "Where is the blacksmith? In", "What?")]
    gold, cache = engine.encode(" blacksmith"), PromptCache()
    for question in questions:
        nll, text = locomo.answer(engine, None, history + question, gold, max_tokens=5, cache=cache)
        prompt = history + question  # the cache holds the prompt's states (and may hold the answer's after them)
        assert cache.ids[: len(prompt)] == prompt and cache.past.get_seq_length() == len(cache.ids)
        fresh_nll, fresh_text = locomo.answer(engine, None, history + question, gold, max_tokens=5)
        assert nll == pytest.approx(fresh_nll, abs=1e-4) and text == fresh_text
    # the shared history ran once; each question ran its own tokens, the gold answer's and the generated ones
    assert cache.computed_tokens <= len(history) + sum(len(q) + len(gold) + 5 for q in questions)


def test_locomo_answer_is_the_first_line_and_stops_reading_there():
    def pieces():
        yield from ("\n", "\n The blue", " car.\nNext", " line")
        raise AssertionError("read past the first line")

    assert locomo.first_line(ReplyStream(pieces())) == "The blue car."


def test_locomo_f1_is_locomos_metric():
    assert data.token_f1("The blacksmith!", "blacksmith") == 1.0
    assert data.token_f1("a red car", "blue car") == 0.5
    assert data.multi_f1("swords, shields", "shields, swords") == 1.0
    adversarial = data.Question("q", data.NOT_MENTIONED, 5, ())
    assert data.score("That is not mentioned.", adversarial) == 1.0


def test_cost_compares_full_history_with_window_and_adapter(make_engine, locomo_file, tmp_path):
    engine = make_engine()
    messages = [line.message for session in data.lines(data.load(locomo_file)[0]) for line in session]
    result = cost.run(engine, messages, sizes=[64, 160], replies=1, reply_tokens=3, train_tokens=100, quiet=True)
    assert all(row["history_tokens"] <= size for row, size in zip(result["histories"], [64, 160], strict=True))
    big = result["histories"][-1]
    assert big["full"]["prompt_tokens"] > big["window_adapter"]["prompt_tokens"]
    assert big["full"]["ttft_s"] > 0 and big["window_adapter"]["reply_s"] >= big["window_adapter"]["ttft_s"]
    assert 0 < result["training"]["tokens_written"] <= 100 and result["training"]["train_s_per_1k"] > 0
    assert cost.plot(result, tmp_path / "cost.png").stat().st_size > 0


def test_cli_registers_bench_commands_with_config_options(tmp_path):
    parser = benchmarks.build_parser()
    args = parser.parse_args(
        [
            "pg19",
            "--max-books",
            "1",
            "--chunk-tokens",
            "256",
            "--target-modules",
            "q_proj,v_proj",
            "--out",
            str(tmp_path / "r.json"),
        ]
    )
    config = common.config_from_args(args)
    assert args.run is pg19.main and config.chunk_tokens == 256 and config.target_modules == ["q_proj", "v_proj"]
    assert common.plot_path(args) == tmp_path / "r.png"
    for name in ("locomo", "cost"):
        assert parser.parse_args([name, "--learning-rate", "1e-3"]).learning_rate == 1e-3
    assert pg19.DEFAULT_DATA == str(common.REPO.parent / "shared" / "data" / "pg19")  # whatever the current folder


def test_python_m_benchmarks_lists_every_sub_command():
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--help"], cwd=common.REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0
    names = "pg19 locomo forget recipes cost scale serve busy batch constrain speed suites".split()
    assert all(name in done.stdout for name in names)


@pytest.mark.parametrize("command", ["pg19", "locomo", "cost", "scale", "speed"])
def test_a_missing_data_path_is_a_clear_error(command, tmp_path, capsys):
    missing = tmp_path / "nowhere"
    assert benchmarks.main([command, "--data", str(missing), "--out", str(tmp_path / "r.json")]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: --data {missing} does not exist; pass --data PATH to ")


def test_a_missing_extra_names_the_module_and_the_fix(monkeypatch, capsys):
    monkeypatch.setitem(benchmarks.EXTRAS, "bench", ("bm25s", "no_such_module_for_bench"))
    assert benchmarks.main(["recipes", "r.json"]) == 2
    error = capsys.readouterr().err
    assert "no_such_module_for_bench" in error and 'pip install -e ".[bench]"' in error


def test_cost_times_replies_in_every_deployment(make_engine, locomo_file):
    messages = [line.message for session in data.lines(data.load(locomo_file)[0]) for line in session]
    computed = {}
    for name in cost.deployment_names("cascaded,cascaded+reuse+sinks,parallel+reuse+sinks"):
        engine = make_engine(**cost.DEPLOYMENTS[name])
        result = cost.deployment(engine, messages, replies=8, reply_tokens=3, quiet=True)
        assert len(result["replies"]) == 8 and result["chunks_trained"] >= 1
        assert result["mean_reply_s_while_training"] is not None and result["max_reply_s"] > 0
        assert result["config"]["cache_reuse"] == ("reuse" in name)
        assert (result["kv_cache_mib"] is not None) == ("reuse" in name)
        computed[name] = result["computed_tokens"]
    assert computed["cascaded+reuse+sinks"] < computed["cascaded"]
    with pytest.raises(InvalidInputError, match="--deployments"):
        cost.deployment_names("cascaded,turbo")


def test_scale_reports_switch_latency_disk_and_rss(make_engine, locomo_file):
    messages = [line.message for session in data.lines(data.load(locomo_file)[0]) for line in session]
    engine = make_engine(store=None, max_resident=3)
    result = scale.run(engine, messages, agents=8, turns=2, quiet=True)
    assert result["calls"] == 16 and result["resident_after"] <= 3
    assert result["switch_ms"]["n"] >= 8 and result["resident_call_ms"]["n"] >= 1
    disk = result["disk_mib_per_agent"]
    assert disk["after_conversation"] > 0 and disk["after_one_chunk"] > 0
    assert "switch" in scale.table(result)


def test_serve_keeps_every_turn_under_concurrent_clients_and_measures_the_http_overhead(make_engine):
    pytest.importorskip("fastapi")
    from templora_memory.server import ServerSettings

    engine = make_engine(window_tokens=512)  # room for the villagers' persona in the tiny tokenizer's tokens
    settings = ServerSettings(workers=2, max_queue=3)  # 4 clients: some requests meet a full queue and retry
    result = serve.run(engine, settings, clients=4, agents=2, requests=10, max_tokens=4, max_seconds=120)
    assert result["requests_done"] == 10 and result["http_5xx"] == 0 and result["statuses"] == {"200": 10}
    assert result["memory"] == {"turns_expected": 20, "lost": 0, "duplicated": 0, "extra": 0, "out_of_order": 0}
    assert 0 < result["latency_s"]["p50"] <= result["latency_s"]["p95"] and result["requests_per_s"] > 0
    cost = serve.overhead(engine, settings, replies=2, max_tokens=4)
    assert cost["same_replies"] and cost["in_process_s"] > 0 and cost["http_s"] > 0 and cost["http_layer_ms"] > 0
    assert not any(agent.startswith("overhead-") for agent in engine.agent_ids())
    assert "HTTP layer per reply" in serve.table({**result, "overhead": cost})


def test_serve_sweeps_clients_with_an_agent_each_and_counts_their_tokens(make_engine):
    pytest.importorskip("fastapi")
    from templora_memory.server import ServerSettings

    engine = make_engine(window_tokens=512)
    rows = serve.sweep(engine, ServerSettings(workers=4, max_queue=8), [1, 2], rounds=2, max_tokens=4, max_seconds=120)
    assert rows["1"]["times_one_client"] == 1.0 and rows["2"]["tokens_per_s"] > 0
    assert all(row["memory"]["lost"] == row["memory"]["duplicated"] == 0 for row in rows.values())
    assert {"sweep1-0", "sweep2-0", "sweep2-1"} <= set(engine.agent_ids())


def test_batch_times_agents_decoded_together_and_alone(make_engine):
    engine = make_engine()
    prompts = batch.agent_prompts(engine, list(range(5, 400)), agents=2, longest=24)
    result = batch.decode_rows(engine, prompts, [1, 2], reply_tokens=4, repeats=1)
    assert result["rows"]["2"]["same_tokens_as_alone"] == "2/2" and result["rows"]["2"]["rows_per_step"] > 1
    assert result["rows"]["1"]["batched_tokens_per_s"] > 0 and result["rows"]["2"]["base_weights_ms"] > 0
    result["step_split"] = batch_split.step_split(engine, prompts, rows=2, steps=1)
    assert (
        result["step_split"]["n_rows_ms"]["base_weights"] > 0 and "python" in result["step_split"]["per_added_row_ms"]
    )
    beside = batch.beside_writes(engine, prompts, reply_tokens=4, tokens=list(range(5, 37)))
    assert beside["decode_rounds_beside_write"] >= 1 and beside["write_s_beside_replies"] > 0
    assert engine.stats("batch-writer-beside").tokens_written == 32
    run = {"torch_threads": 1, "machine": {"load_average": (0.0, 0.0, 0.0)}}
    printed = batch.table({"weights": {"fp32": result}, "beside_writes": beside, "run": run})
    assert "rest ms/row" in printed and "writes beside replies" in printed and "per added row" in printed


def test_constrain_measures_each_library_on_a_valid_answer(tokenizer):
    result = constrain.measure_library("llguidance", tokenizer, repeats=1)
    assert set(result["cases"]) == set(constrain.CASES)
    for row in result["cases"].values():
        assert row["tokens"] > 0 and row["compile_ms"] > 0 and row["mask_us_mean"] > 0
    assert "unknown library" in constrain.measure_library("no-such-library", tokenizer, 1)["error"]


def test_suites_reads_outcomes_and_reasons_from_junit_xml(tmp_path):
    assert all((common.REPO / path).is_file() for path in suites.SUITES.values())  # found from any folder
    report = tmp_path / "report.xml"
    report.write_text(
        '<testsuites><testsuite><testcase classname="t.TestA" name="test_ok"/>'
        '<testcase classname="t.TestA" name="test_bad"><failure message="assert 1 == 2">x</failure></testcase>'
        '<testcase classname="t.TestA" name="test_skip"><skipped type="pytest.skip" message="needs x"/></testcase>'
        '<testcase classname="t.TestA" name="test_xf"><skipped type="pytest.xfail" message="135M"/></testcase>'
        "</testsuite></testsuites>"
    )
    tests = suites.read_report(report)
    assert [t["outcome"] for t in tests] == ["passed", "failed", "skipped", "xfailed"]
    assert tests[3] == {"name": "TestA::test_xf", "outcome": "xfailed", "reason": "135M"}


def test_recall_asks_every_fact_under_every_condition_and_writes_no_question(make_engine):
    from benchmarks import recall
    from benchmarks.recall_scenarios import build_scenario, contains_answer

    engine = make_engine()
    options = argparse.Namespace(quiet=True, answer_tokens=4, top_k=2, split="tuning", general_questions=2)
    result = recall.run(engine, 2, [1, 2], 0, recall.CONDITIONS, options)
    assert set(result["conditions"]) == set(recall.CONDITIONS)
    rows = result["questions"]
    assert len(rows) == 2 * 2 * len(recall.CONDITIONS)  # two facts per conversation, each under every condition
    ceiling = result["conditions"]["in_context"]
    assert all(v["gap_closed_median"] in (1.0, None) for v in ceiling.values())  # the ceiling closes its own gap
    assert all(v["of_ceiling"] in (1.0, None) for v in ceiling.values())
    window = {r["question"]: r["prompt_tokens"] for r in rows if r["condition"] == "window"}
    full = {r["question"]: r["prompt_tokens"] for r in rows if r["condition"] == "in_context"}
    assert all(full[q] > window[q] for q in window)  # the facts left the window; the ceiling still reads them
    for row in rows:  # the answer is read after the reply's own first words too, where it is likeliest
        opening = row["reply_opening"].split()
        assert row["reply"].split()[: len(opening)] == opening and 0 <= row["reply_nll"] < float("inf")
    stats = engine.stats("recall-scenario-0")
    scenario = build_scenario(0, 0, [1, 2], 32, 96, lambda m: sum(engine.turn_tokens(m)), "tuning")
    assert stats.turns_seen == len(scenario.messages)
    assert result["general"]["questions"] == 2 * 2 and result["writing"]["tokens_written"] > 0
    assert "split: tuning" in recall.table(result) and "| adapter | 2 |" in recall.table(result)
    assert contains_answer("It is the Old Mill, friend.", "the old mill") and not contains_answer("mills", "mill")


def test_forget_deletes_a_told_fact_rebuilds_with_and_without_snapshots_and_measures_a_correction(make_engine):
    from benchmarks import forget

    plain_update = dict(window_tokens=160, probe_questions=0, anchor_probes=0, kl_weight=0.0)  # mechanics, quickly
    snap, plain = make_engine(snapshot_tokens=32, **plain_update), make_engine(snapshot_tokens=0, **plain_update)
    options = argparse.Namespace(
        quiet=True, answer_tokens=4, split="tuning", conversations=1, distances="1,2", corrections=1, scenario_seed=0
    )
    result = forget.run(snap, plain, options)
    (deleted,) = result["deletions"]
    assert (
        deleted["rebuild"]["snapshots"]["from"] != "origin" and deleted["rebuild"]["no_snapshots"]["from"] == "origin"
    )
    assert deleted["rebuild"]["snapshots"]["tokens"] < deleted["rebuild"]["no_snapshots"]["tokens"]
    assert len(deleted["rebuild"]["snapshots"]["turns"]) == 2 and deleted["others"]["questions"] == 1
    told = [t.content for t in snap.turns(f"recall-{deleted['scenario']}")]
    assert not any(deleted["fact"]["value"] in text for text in told)
    (case,) = result["corrections"]
    assert {"in_context", "adapter", "edit"} <= set(case) and case["old"] != case["new"]
    assert not any(case["old"] in turn.content for turn in snap.turns("recall-correction-0"))  # the edit forgot it
    assert "| correction |" in forget.report(result) and result["summary"]["cases"] == 1


def test_speed_times_replies_writes_and_scores_the_decode_path(make_engine, tokenizer):
    engine = make_engine(chunk_tokens=32, train_context_tokens=32)
    tokens = engine.encode(" ".join(["The blacksmith sells swords and shields in Oakridge."] * 12))
    cost = speed.write_cost(engine.config, tokens[:64], None, engine)
    assert cost["tokens_written"] == 64 and cost["seconds_per_1k"] >= cost["train_seconds_per_1k"] > 0
    timed = speed.engine_timing(engine, speed.AGENT, tokens[:40], 6)
    assert timed["tokens_per_s"] > 0 and timed["ttft_s"] > 0 and timed["text"]
    assert speed.transformers_timing(tiny_model(tokenizer), tokens[:40], 4)["tokens_per_s"] > 0
    assert speed.cache_reuse_ttft(engine, tokens, 40) > 0
    assert speed.decode_quality(engine, tokens[:20])["ppl"] > 1


def test_footprint_measures_the_default_and_the_compact_storage_side_by_side(make_engine, locomo_file, tmp_path):
    from benchmarks import footprint

    messages = [line.message for session in data.lines(data.load(locomo_file)[0]) for line in session]

    def make(store, storage):
        return make_engine(store=store, **storage)

    result = footprint.run(make, tmp_path, messages, chunks=2, agents=12, sample=4)
    assert result["chunks_written"] >= 2
    default, compact = result["storage"]["default"], result["storage"]["compact"]
    assert default["settings"] == {"adapter_dtype": "fp32", "store_optimizer": True}
    assert compact["settings"] == {"adapter_dtype": "bf16", "store_optimizer": False}
    disk, ram = default["bytes_per_agent"]["disk"], default["bytes_per_agent"]["ram"]
    compact_disk = compact["bytes_per_agent"]["disk"]
    lora_numel = ram["lora"] // 4  # fp32 in RAM under either storage
    assert compact["bytes_per_agent"]["ram"] == ram and ram["total"] == 3 * ram["lora"] + disk.get("replay.pt", 0)
    assert 4 * lora_numel < disk["adapter_model.safetensors"] < 4 * lora_numel + 20_000  # fp32 on disk, + header
    assert 2 * lora_numel < compact_disk["adapter_model.safetensors"] < 2 * lora_numel + 20_000  # bf16
    assert disk["optimizer.pt"] > 8 * lora_numel and "optimizer.pt" not in compact_disk  # AdamW's two moments
    assert disk.get("replay.pt") == compact_disk.get("replay.pt")  # an agent whose chunks taught no probe has none
    for measured in (default, compact):
        assert measured["store"]["bytes"] > 12 * measured["bytes_per_agent"]["disk"]["total"]
        assert measured["store"]["load_ms"]["mean"] > 0
    text = footprint.table(result)
    assert "store of 12 agents" in text and "compact: adapter_dtype=bf16, store_optimizer=False" in text


def test_footprint_state_turns_measures_the_state_file_without_a_model(locomo_file, tmp_path, capsys):
    from benchmarks import footprint

    args = benchmarks.build_parser().parse_args(
        ["footprint", "--state-turns", "40,400", "--data", str(locomo_file), "--out", str(tmp_path / "f.json"),
         "--chunk-tokens", "32", "--train-context-tokens", "32", "--window-tokens", "96"]
    )  # fmt: skip
    result = footprint.main(args)
    small, large = result["rows"]
    assert (small["turns"], large["turns"]) == (40, 400)
    for row in result["rows"]:
        assert row["archive"]["bytes"] > row["plain"]["bytes"] > 0 and row["plain"]["commit_s"] > 0
    assert large["archive"]["bytes"] > small["archive"]["bytes"]  # below the bound the archive grows with the turns
    assert "with archive: bytes" in capsys.readouterr().out
    assert json.loads((tmp_path / "f-state.json").read_text())["rows"] == result["rows"]
    assert not (tmp_path / "f.json").exists()  # the full footprint run's results are left alone


def test_device_benchmark_measures_training_against_generation_on_the_cpu(tmp_path, capsys):
    from benchmarks import device

    args = benchmarks.build_parser().parse_args(
        ["device", "--device", "cpu", "--sizes", "tiny", "--chunks", "2", "--new-tokens", "4", "--chunk-tokens",
         "32", "--train-context-tokens", "32", "--window-tokens", "64", "--out", str(tmp_path / "d.json")]
    )  # fmt: skip
    result = device.main(args)
    row = result["rows"][0]
    assert result["device"].startswith("cpu") and row["size"] == "tiny" and row["parameters"] > 100_000
    assert row["train_s_per_1k_written"] > 0 and row["generate_s_per_1k"] > 0 and row["prefill_tok_s"] > 0
    assert row["train_vs_generate"] == pytest.approx(row["train_s_per_1k_written"] / row["generate_s_per_1k"], 0.01)
    assert row["decode_tok_s_base"] > 0 and row["decode_tok_s_adapter"] > 0 and row["agent_stored_mb"] > 0
    assert row["agent_stored_compact_mb"] <= row["agent_stored_mb"]  # fp32 and the moments by default
    assert "train_vs_generate" in capsys.readouterr().out
    assert json.loads((tmp_path / "d.json").read_text())["rows"] == [row]


def test_busy_floods_with_a_history_of_the_asked_size_that_ends_with_the_user():
    from benchmarks.busy import flood_history

    history = flood_history(3)
    assert 3 * 1024 <= sum(len(m["content"]) for m in history) < 4 * 1024
    assert [m["role"] for m in history] == ["user", "assistant"] * (len(history) // 2) + ["user"]
