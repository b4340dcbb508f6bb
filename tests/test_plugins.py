"""Rules and attacks users plug in by import path (docs/extending.md; its example is
docs/examples/my_rules.py, run here from the CLI and in a sweep)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import brmtrl
from brmtrl.aggregators import (AGGREGATORS, PRE_STEPS, aggregate, geometric_median, register_aggregator,
                                register_pre_step, resolve_pre_step, resolve_rule, trimmed_mean)
from brmtrl.attacks import ATTACKS, resolve_attack
from brmtrl.cli import main
from brmtrl.config import ConfigError
from brmtrl.local_update import RULES, resolve_local_rule

from .conftest import CONFIGS

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(EXAMPLES), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture
def examples_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    yield
    for name in [k for k in AGGREGATORS if k.startswith("my_rules:")]:
        del AGGREGATORS[name]
    for registry in (ATTACKS, PRE_STEPS, RULES):
        for name in [k for k in registry if k.startswith("my_rules:")]:
            del registry[name]


def test_the_documented_aggregator_is_a_trimmed_mean_and_gets_the_servers_f(examples_on_path):
    x = torch.randn(11, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rule = resolve_rule("my_rules:coordinate_trimmed_mean")
    assert rule.params == ("f",)
    torch.testing.assert_close(aggregate("my_rules:coordinate_trimmed_mean", x, f=3).point, trimmed_mean(x, f=3))
    assert (aggregate("my_rules:coordinate_trimmed_mean", x, f=3).trust == 1).all()


def test_the_documented_attack_sends_noise_as_large_as_the_update(examples_on_path):
    attack = resolve_attack("my_rules:scaled_noise")
    assert not attack.omniscient
    u = torch.randn(2, 50, generator=torch.Generator().manual_seed(1))
    out = attack.fn(u, u[:0], generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(out.norm(dim=1), u.norm(dim=1))
    assert not torch.allclose(out, u)


def test_a_plugged_in_rule_and_attack_run_from_the_cli(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "brmtrl", "run", "--config", str(CONFIGS / "quick.toml"), "--out", str(out),
           "--quiet", "--set", "train.rounds=2", "--set", "threads=1", "--set", "device=cpu",
           "--set", "aggregator.name=my_rules:coordinate_trimmed_mean", "--set", "aggregator.pre=[]",
           "--set", "attack.name=my_rules:scaled_noise"]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["aggregator"]["name"] == "my_rules:coordinate_trimmed_mean"
    assert res["history"][-1]["f_used"] == res["history"][-1]["f_assumed"] == 9
    assert len(res["final"]["byzantine_clients"]) == 10


def test_a_plugged_in_rule_runs_in_a_sweep(tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text(textwrap.dedent(f"""\
        config = "{(CONFIGS / 'quick.toml').as_posix()}"
        [set]
        "train.rounds" = 2
        "aggregator.pre" = []
        device = "cpu"
        [grid]
        "aggregator.name" = ["mean", "my_rules:coordinate_trimmed_mean"]
        """))
    cmd = [sys.executable, "-m", "brmtrl", "sweep", "--grid", str(grid), "--out", str(tmp_path / "sweep"),
           "--workers", "2", "--threads", "1", "--quiet"]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 cells run" in done.stdout + done.stderr
    assert "my_rules:coordinate_trimmed_mean" in (tmp_path / "sweep" / "summary.md").read_text()


@pytest.mark.parametrize("case, source, name, needle", [
    ("nomodule", "", "no_such_module_xyz:rule", "cannot import module 'no_such_module_xyz'"),
    ("noname", "def other(x):\n    return x.mean(0)\n", "MOD:rule", "module 'MOD' has no 'rule'"),
    ("notcallable", "rule = 3\n", "MOD:rule", "'MOD:rule' is a int, not a function"),
    ("required", "def rule(x, beta):\n    return x.mean(0)\n", "MOD:rule", "requires 'beta', which brmtrl cannot pass"),
    ("noargs", "def rule():\n    return 0\n", "MOD:rule", "must take the updates as its first argument"),
])
def test_a_plugin_that_cannot_be_used_is_a_one_line_config_error(case, source, name, needle, tmp_path, monkeypatch,
                                                                  capsys):
    module = f"plug_{case}"
    name, needle = name.replace("MOD", module), needle.replace("MOD", module)
    (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    code = main(["run", "--config", str(CONFIGS / "quick.toml"), "--set", f"aggregator.name={name}",
                 "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "config key 'aggregator.name'" in err and needle in err


def test_a_module_may_register_a_richer_rule_under_its_own_name(tmp_path, monkeypatch):
    (tmp_path / "rich_rules.py").write_text(textwrap.dedent("""\
        import torch
        from brmtrl.aggregators import AggregateResult, register_aggregator

        def clipped_mean(x, f=0):
            return x.clamp(-1, 1).mean(0)

        def clipped_mean_trusted(x, f=0):
            trust = (x.abs() <= 1).all(dim=1).to(torch.float64)
            return AggregateResult(clipped_mean(x, f), trust)

        register_aggregator("rich_rules:clipped_mean", clipped_mean, params=("f",), min_rows=lambda f: 2 * f + 1,
                            result=clipped_mean_trusted)
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        rule = resolve_rule("rich_rules:clipped_mean")
        assert rule.largest_f(9) == 4
        x = torch.zeros(5, 3, dtype=torch.float64)
        x[0] = 10.0
        res = aggregate("rich_rules:clipped_mean", x, f=1)
        assert res.flagged.tolist() == [True, False, False, False, False]
    finally:
        AGGREGATORS.pop("rich_rules:clipped_mean", None)


def test_register_aggregator_from_python_checks_what_the_rule_returns():
    register_aggregator("test_plugins:bad_shape", lambda x: x)
    try:
        with pytest.raises(ValueError, match=r"returned \(4, 3\); a tensor of shape \(3,\) is expected"):
            aggregate("test_plugins:bad_shape", torch.zeros(4, 3))
    finally:
        AGGREGATORS.pop("test_plugins:bad_shape", None)


def test_a_plugged_in_rules_own_parameters_come_from_aggregator_params(tmp_path, monkeypatch, capsys):
    from brmtrl.config import load_config, server_view
    from brmtrl.server import Aggregation, aggregate as server_aggregate

    (tmp_path / "param_rules.py").write_text("def scaled_mean(x, scale=1.0):\n    return x.mean(0) * scale\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        base = ["aggregator.name=param_rules:scaled_mean", "aggregator.pre=[]"]
        x = torch.ones(4, 3, dtype=torch.float64)
        default = Aggregation.from_config(server_view(load_config(CONFIGS / "quick.toml", base)), 20, 50)
        assert default.params == {} and torch.equal(server_aggregate(x, default)[0], torch.ones(3, dtype=torch.float64))
        cfg = load_config(CONFIGS / "quick.toml", [*base, "aggregator.params.scale=2.5"])
        assert cfg.nested()["aggregator"]["params"] == {"scale": 2.5}
        agg = Aggregation.from_config(server_view(cfg), 20, 50)
        assert agg.params == {"scale": 2.5}
        torch.testing.assert_close(server_aggregate(x, agg)[0], torch.full((3,), 2.5, dtype=torch.float64))
        code = main(["run", "--config", str(CONFIGS / "quick.toml"), "--set", base[0], "--set",
                     "aggregator.params.beta=1", "--out", str(tmp_path / "run"), "--quiet"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and "config key 'aggregator.params.beta'" in err and "takes no parameter 'beta'" in err
        code = main(["run", "--config", str(CONFIGS / "quick.toml"), "--set", "aggregator.params.beta=1",
                     "--out", str(tmp_path / "run"), "--quiet"])
        assert code == 2 and "is for a plugged-in aggregator" in capsys.readouterr().err
    finally:
        AGGREGATORS.pop("param_rules:scaled_mean", None)


def test_the_documented_pre_step_clips_rows_to_the_median_norm_and_keeps_each_clients_trust(examples_on_path):
    x = torch.randn(9, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x[0] *= 1e6                                                     # one huge row
    step = resolve_pre_step("my_rules:clip_to_median_norm")
    assert step.params == () and not step.random
    rows, mix = step.fn(x)
    median = x.norm(dim=1).median()
    assert (rows.norm(dim=1) <= median * (1 + 1e-12)).all()
    torch.testing.assert_close(mix, torch.eye(9, dtype=torch.float64))
    res = aggregate("geometric_median", x, pre=["my_rules:clip_to_median_norm"])
    torch.testing.assert_close(res.point, geometric_median(rows))
    assert res.trust.shape == (9,)


def test_a_pre_step_that_changes_the_row_count_must_say_how_rows_mix():
    register_pre_step("test:halve", lambda x: x[: x.shape[0] // 2])
    try:
        with pytest.raises(ValueError, match="without its mixing matrix"):
            aggregate("mean", torch.ones(6, 3), pre=["test:halve"])
        m = torch.zeros(3, 6, dtype=torch.float64)
        m[torch.arange(3), torch.arange(3) * 2] = 1.0
        register_pre_step("test:halve", lambda x: (m.to(x.dtype) @ x, m), rows_out=lambda n, **_: n // 2)
        x = torch.arange(12.0).reshape(6, 2)
        res = aggregate("mean", x, pre=["test:halve"])
        torch.testing.assert_close(res.point, x[::2].mean(0))
        assert res.trust.tolist() == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]   # rows that went nowhere are not trusted
    finally:
        del PRE_STEPS["test:halve"]


def test_the_documented_local_rule_trains_phi_then_the_head(examples_on_path):
    rule = resolve_local_rule("my_rules:rep_then_head")
    assert (rule.shared, rule.private) == ("rep", "head")
    assert rule.phases({"train.rep_epochs": 1, "train.head_epochs": 5}) == [("rep", 1), ("head", 5)]


def test_a_plugged_in_pre_step_and_local_rule_run_from_python_and_the_cli(examples_on_path, tmp_path):
    sets = {"train.rounds": 2, "threads": 1, "device": "cpu", "aggregator.pre": ["my_rules:clip_to_median_norm"],
            "algorithm.name": "my_rules:rep_then_head"}
    res = brmtrl.run(CONFIGS / "quick.toml", sets)
    assert res["config"]["algorithm"]["name"] == "my_rules:rep_then_head"
    assert res["config"]["aggregator"]["pre"] == ["my_rules:clip_to_median_norm"]
    again = brmtrl.run(CONFIGS / "quick.toml", [f"{k}={v}" for k, v in sets.items() if k != "aggregator.pre"]
                       + ['aggregator.pre=["my_rules:clip_to_median_norm"]'], out=tmp_path / "run")
    assert again["final"] == res["final"]                                 # same seed, same numbers
    assert (tmp_path / "run" / "results.json").is_file()
    # the same plug-ins from the CLI, in a subprocess
    cmd = [sys.executable, "-m", "brmtrl", "run", "--config", str(CONFIGS / "quick.toml"), "--out", str(tmp_path / "cli"),
           "--quiet", *[a for k, v in sets.items() if k != "aggregator.pre" for a in ("--set", f"{k}={v}")],
           "--set", 'aggregator.pre=["my_rules:clip_to_median_norm"]']
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "cli" / "results.json").read_text())["final"] == res["final"]


@pytest.mark.parametrize("key, value, needle", [
    ("aggregator.pre", ["no_such_mod_q:step"], "config key 'aggregator.pre' = 'no_such_mod_q:step': cannot import"),
    ("algorithm.name", "no_such_mod_q:rule", "config key 'algorithm.name' = 'no_such_mod_q:rule': cannot import"),
    ("algorithm.name", "my_rules:SOMETHING", "module 'my_rules' has no 'SOMETHING'"),
])
def test_a_pre_step_or_local_rule_that_cannot_be_used_is_a_config_error(examples_on_path, key, value, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        brmtrl.run(CONFIGS / "quick.toml", {key: value})


def test_run_from_python_checks_its_arguments():
    with pytest.raises(ConfigError, match="engine must be one of"):
        brmtrl.run(CONFIGS / "quick.toml", engine="ray")
    with pytest.raises(ConfigError, match="unknown config key 'train.roundz'"):
        brmtrl.run(CONFIGS / "quick.toml", {"train.roundz": 3})
    with pytest.raises(ConfigError, match="resume=True needs the run directory"):
        brmtrl.run(CONFIGS / "quick.toml", resume=True)
    with pytest.raises(ConfigError, match="unknown config key 'train.roundz' in the config passed to brmtrl.run"):
        brmtrl.run({"train.roundz": 3})
    cfg = brmtrl.load_config(CONFIGS / "quick.toml", ["train.rounds=2", "device=cpu"])
    assert brmtrl.run(cfg, {"seed": 5})["config"]["seed"] == 5          # a Config and overrides
