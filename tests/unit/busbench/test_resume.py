"""The resume measurement's pure parts: job shapes, names, the memory measurement's
templates and figures (its report is checked against the ``resume_only`` golden file)."""

import argparse

import pytest
from busbench import resume, sessionmem
from busbench.payloads import Template
from busbench.report.resume import memory_figures, resume_summary

from tests.unit.busbench.bench_outputs import memory_variant, resume_runs


def test_combos_split_and_strip() -> None:
    assert resume.combos("task-json, audio-json,,") == ["task-json", "audio-json"]


def test_each_variant_and_repetition_gets_fresh_names() -> None:
    seen: set[str] = set()
    for variant in (*resume.VARIANTS, resume.CONTROL):
        for rep in range(3):
            a, b = resume.names(variant, rep, "json", 2)
            assert len(a) == len(b) == 2
            assert not seen & {*a, *b}
            seen |= {*a, *b}
    assert resume.names("on-session", 1, "msgpack", 1) == (["a000rs1m"], ["b000rs1m"])


def _args(*combos: str) -> argparse.Namespace:
    """The resume workload's options, as the command line leaves them."""
    return argparse.Namespace(
        resume_combos=list(combos),
        warmup=0.5,
        rate=2000.0,
        fixed_seconds=3.0,
        inflight=4,
        sat_seconds=2.0,
    )


def test_phases_fixed_then_saturation_per_combination() -> None:
    phases = resume.phases(_args("task-json", "audio-msgpack"))
    assert [p["name"] for p in phases] == [
        "task-json/fixed",
        "task-json/saturation",
        "audio-msgpack/fixed",
        "audio-msgpack/saturation",
    ]
    assert phases[2]["set"] == "msgpack" and phases[2]["payload"] == "audio"
    assert phases[0]["rate"] == 2000.0 and phases[1]["inflight"] == 4


def _run(busy: dict[str, float | None]) -> dict[str, object]:
    """A load-generator result whose fixed phases kept the machine ``busy`` cores busy."""
    phases = []
    for name, cores in busy.items():
        machine = {} if cores is None else {"user": cores * 3.0 * 0.8, "system": cores * 3.0 * 0.2}
        phases.append(
            {
                "name": name,
                "kind": name.rpartition("/")[2],
                "relayed": 12000,
                "cpu_s": {"node1": 1.0},
                "window_s": 3.0,
                "machine_s": machine,
                "rtt_ms": None,
                "counters": {},
                "rt_per_s": 2000.0,
                "request_bytes": 265,
                "reply_bytes": 265,
            }
        )
    return {"phases": phases}


def test_added_cores_per_fixed_phase_never_below_zero() -> None:
    off = _run({"task-json/fixed": 1.3, "audio-json/fixed": 1.4, "task-json/saturation": 1.7})
    on = _run({"task-json/fixed": 1.55, "audio-json/fixed": 1.35, "task-json/saturation": 1.9})
    added = resume.added_cores(off, on)
    assert added == {"task-json/fixed": pytest.approx(0.25), "audio-json/fixed": 0.0}
    # Not read in the baseline: nothing to match, no burner.
    assert resume.added_cores(_run({"task-json/fixed": None}), on)["task-json/fixed"] == 0.0


def test_burners_split_cores_over_processes_that_stop_by_themselves() -> None:
    assert resume.burner_argv(0.005, 10.0) == []
    (one,) = resume.burner_argv(0.25, 33.5)
    assert one[1:] == ["-m", "busbench.burner", "0.250", "--seconds", "33.5"]
    three = resume.burner_argv(2.4, 10.0)
    assert [argv[3] for argv in three] == ["0.800"] * 3


def test_control_runs_the_fixed_phases_beside_their_burners() -> None:
    added = {"task-json/fixed": 0.3, "audio-json/fixed": 0.0}
    phases = resume.control_phases(_args("task-json", "audio-json"), added)
    assert [p["name"] for p in phases] == ["task-json/fixed", "audio-json/fixed"]
    (burner,) = phases[0]["beside"]
    assert burner[3] == "0.300" and float(burner[5]) > 3.5  # outlives warm-up and window
    assert phases[1]["beside"] == []
    assert phases[0]["rate"] == 2000.0 and phases[0]["duration"] == 3.0


def test_retarget_swaps_both_names_byte_for_byte() -> None:
    tag = "m1"
    a0, b0 = sessionmem.agent("A", 0, tag), sessionmem.agent("B", 0, tag)
    t = Template(f'{{"source":"{b0}","target":"{a0}","task_id":"'.encode(), b'"}')
    moved = sessionmem.retarget(t, 123, tag)
    assert moved.prefix == b'{"source":"rsB00123m1","target":"rsA00123m1","task_id":"'
    assert moved.size == t.size
    assert sessionmem.agent("A", 99999, tag).__len__() == len(a0)


def test_memory_plan_measures_plain_before_session_per_combination() -> None:
    plan = sessionmem.MemoryPlan(sessions=10, messages=2, combos=["task-json", "audio-json"])
    assert plan.variants() == [
        ("plain", "task-json"),
        ("session", "task-json"),
        ("plain", "audio-json"),
        ("session", "audio-json"),
    ]


def test_memory_figures_per_socket_and_per_message() -> None:
    fig = memory_figures(memory_variant("session", "task-json", 269, 400))
    assert fig["open_b"] == pytest.approx(1200)
    assert fig["kept_b"] == pytest.approx(4000)
    assert fig["kept_b_per_msg"] == pytest.approx(400)
    assert fig["away_b"] == pytest.approx(300 + 4000)
    assert fig["redis_us"] == pytest.approx(25.0)
    assert fig["complete"] is False  # 9,990 of 10,000 arrived


def test_ratios_side_by_side_per_repetition() -> None:
    s = resume_summary({"runs": resume_runs()})
    r = s["ratios"]["on-session"]["task-json/fixed"]["server_us"]
    assert r["per_rep"] == pytest.approx([1.4, 1.4, 1.4])
    assert r["of_medians"] == pytest.approx(1.4)
    assert s["sessions"]["on-session"]["resume"] == {"new": 300}
    assert s["drops"] == {"on-session": {"closing": 3.0}}
    # The control: session sockets against sessions off beside a burner.
    c = s["control"]["ratios"]["on-session"]["task-json/fixed"]["p99"]
    assert c["per_rep"] == pytest.approx([1.6 / 1.3] * 3)
    assert "task-json/saturation" not in s["control"]["medians"]["off-busy"]


def test_without_the_control_the_report_has_no_control_table() -> None:
    from busbench.report.resume import resume_sections

    runs = [r for r in resume_runs() if r["server"] != resume.CONTROL]
    s = resume_summary({"runs": runs})
    config = {
        "pairs": 50,
        "reps": 3,
        "rate": 2000.0,
        "fixed_seconds": 5.0,
        "inflight": 4,
        "sat_seconds": 3.0,
        "warmup": 0.5,
        "resume_combos": ["task-json"],
    }
    text = "\n".join(resume_sections(s, config))
    assert "### Targets" in text and "on, session sockets" in text
    assert "Control" not in text and "machine as busy" not in text


def test_a_full_run_with_resume_appends_the_section() -> None:
    from busbench import report

    from tests.unit.busbench.bench_outputs import full_run, resume_only_run

    out = full_run()
    resumed = resume_only_run()
    out["resume"] = resumed["resume"]
    out["config"]["resume_combos"] = resumed["config"]["resume_combos"]
    out["summary"] = report.summarise(out)
    text = report.markdown(out)
    assert text.startswith("# bushub-bench: workload R")
    assert text.count("## Sessions (resume)") == 1
    assert text.index("## Profile") < text.index("## Sessions (resume)")
    assert "| hub CPU µs/msg, task-json, fixed rate: on, session sockets | 124.5 |" in text
