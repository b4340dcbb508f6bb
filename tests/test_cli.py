from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from brmtrl.cli import main
from brmtrl.config import SCHEMA, Interval, Options, load_config
from brmtrl.constraints import ListOf

from .conftest import CONFIGS

FAST = ["--set", "train.rounds=3", "--set", "dataset.num_clients=10", "--set", "train.eval_every=1",
        "--set", "dataset.samples_per_client=20", "--set", "device=cpu"]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "brmtrl", *args], capture_output=True, text=True, timeout=300)


def test_run_writes_the_results_contract(tmp_path):
    out = tmp_path / "run"
    p = run_cli("run", "--config", str(CONFIGS / "quick.toml"), *FAST, "--out", str(out))
    assert p.returncode == 0, p.stderr
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["dataset"]["num_clients"] == 10 and res["config"]["train"]["rounds"] == 3
    assert [h["round"] for h in res["history"]] == [1, 2, 3]
    assert {"round", "honest_acc_mean"} <= set(res["history"][0])
    f = res["final"]
    assert {"honest_acc_mean", "honest_acc_std", "honest_acc_min", "byzantine_clients"} <= set(f)
    assert 0.0 <= f["honest_acc_min"] <= f["honest_acc_mean"] <= 1.0
    assert len(f["byzantine_clients"]) == 2
    assert {"total_s", "per_round_s"} <= set(res["timing"])
    assert (out / "metrics.csv").read_text().splitlines()[0].startswith("round,honest_acc_mean")
    assert (out / "accuracy.png").stat().st_size > 1000
    assert "honest accuracy" in p.stdout


@pytest.mark.parametrize("args,needle", [
    (["--set", "train.lrr=0.1"], "unknown config key 'train.lrr'"),
    (["--set", "train.lr=-1"], "config key 'train.lr' must be a float in the range (0, inf). Got -1 instead."),
    (["--set", "aggregator.name=average"], "config key 'aggregator.name' must be one of"),
    (["--set", "train.rounds=2.5"], "config key 'train.rounds' must be an int"),
    (["--set", "attack.byzantine_fraction=1.5"], "'attack.byzantine_fraction' must be a float in the range [0, 1)"),
    (["--set", "noequals"], "must look like KEY=VALUE"),
    (["--set", "aggregator.name=krum", "--set", "aggregator.pre=[]", "--set", "aggregator.f=9"],
     "'aggregator.f' = 9 is too large for krum"),
    (["--set", "aggregator.name=krum", "--set", "train.participation=0.02"], "'aggregator.name' = 'krum' needs at least 3"),
    (["--set", "dataset.name=cifar10", "--set", "dataset.root=/nonexistent/cifar"], "/nonexistent/cifar"),
    (["--set", "device=cuda:0"] if not __import__("torch").cuda.is_available() else ["--set", "device=tpu"], "'device'"),
])
def test_cli_errors_are_one_line_with_exit_code_2(args, needle, capsys, tmp_path):
    code = main(["run", "--config", str(CONFIGS / "quick.toml"), *args, "--out", str(tmp_path / "x"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert needle in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_missing_or_broken_config_file(tmp_path, capsys):
    assert main(["run", "--config", str(tmp_path / "nope.toml")]) == 2
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nrounds = ")
    assert main(["run", "--config", str(bad)]) == 2
    typo = tmp_path / "typo.toml"
    typo.write_text("[trian]\nrounds = 3\n")
    assert main(["run", "--config", str(typo)]) == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "not valid TOML" in err and "unknown config key 'trian.rounds'" in err


def test_runs_started_in_the_same_second_get_their_own_directories(tmp_path, monkeypatch):
    from brmtrl import cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli.time, "strftime", lambda fmt, *t: "20250101-120000")
    for seed in (0, 1):
        assert main(["run", "--config", str(CONFIGS / "quick.toml"), *FAST, "--set", f"seed={seed}", "--quiet"]) == 0
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert runs == ["quick-20250101-120000", "quick-20250101-120000-2"]
    seeds = [json.loads((tmp_path / "runs" / r / "config.json").read_text())["seed"] for r in runs]
    assert seeds == [0, 1] and all((tmp_path / "runs" / r / "results.json").is_file() for r in runs)


def test_new_run_dir_is_unique_when_runs_start_at_once(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from brmtrl.cli import new_run_dir

    with ThreadPoolExecutor(8) as pool:
        dirs = list(pool.map(lambda _: new_run_dir(tmp_path / "runs", "quick-20250101-120000"), range(16)))
    assert len(set(dirs)) == 16 and all(d.is_dir() for d in dirs)


def test_a_failed_start_leaves_no_empty_run_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--config", str(CONFIGS / "quick.toml"), *FAST, "--set", "attack.byzantine_fraction=0.95",
                 "--quiet"]) == 2
    assert "no honest client" in capsys.readouterr().err
    runs = tmp_path / "runs"
    assert not (runs.exists() and list(runs.iterdir()))


def test_argparse_errors_exit_2():
    p = run_cli("run")
    assert p.returncode == 2 and "Traceback" not in p.stderr


# ---------------------------------------------------------------- property-based validation
def bad_value(constraint):
    """Values that violate a declared constraint."""
    junk = st.one_of(st.text(max_size=5).filter(lambda s: s not in ("auto",)), st.lists(st.integers(), max_size=2),
                     st.dictionaries(st.text(max_size=2), st.integers(), max_size=1))
    if isinstance(constraint, Interval):
        out = [junk, st.booleans()]
        if constraint.low is not None:
            out.append(st.floats(max_value=constraint.low, exclude_max=constraint.closed in ("both", "left"),
                                 allow_nan=False, allow_infinity=False, min_value=-1e9))
        if constraint.high is not None:
            out.append(st.floats(min_value=constraint.high, exclude_min=constraint.closed in ("both", "right"),
                                 allow_nan=False, allow_infinity=False, max_value=1e9))
        if constraint.kind is int:
            out.append(st.floats(min_value=0.1, max_value=0.9))
        out.append(st.sampled_from([float("nan"), float("inf")]))
        return st.one_of(*out)
    if isinstance(constraint, Options):
        return st.one_of(st.text(max_size=12).filter(lambda s: s not in constraint.values), st.integers(), st.booleans())
    if isinstance(constraint, ListOf):   # not a list, or a list with an item no list key accepts
        return st.one_of(st.lists(st.integers(max_value=0), min_size=1, max_size=2), st.integers(), st.booleans())
    return st.one_of(st.lists(st.integers(), min_size=1, max_size=2), st.integers(min_value=-5, max_value=-1))


def toml_literal(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return {float("inf"): "inf", float("-inf"): "-inf"}.get(v, "nan" if v != v else repr(v))
    return json.dumps(v, ensure_ascii=False)


KEYS = [k for k, (_, c, _) in SCHEMA.items() if not (hasattr(c, "pattern") and c.pattern is None)]


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_invalid_overrides_always_end_in_a_clean_error(data, capsys):
    key = data.draw(st.sampled_from(KEYS))
    value = data.draw(bad_value(SCHEMA[key][1]))
    if isinstance(value, dict):
        override = f"{key}={{ a = 1 }}"
    else:
        override = f"{key}={toml_literal(value)}"
    code = main(["run", "--config", str(CONFIGS / "quick.toml"), "--set", override, "--out", "/nonexistent/never", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, (override, err)
    assert err.startswith("brmtrl: error: ") and len(err.strip().splitlines()) == 1 and key in err


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.text(min_size=1, max_size=20).filter(
    lambda k: k.strip() and k.strip() not in SCHEMA and "=" not in k and not k.startswith("-")))
def test_unknown_keys_always_end_in_a_clean_error(key, capsys):
    code = main(["run", "--config", str(CONFIGS / "quick.toml"), "--set", f"{key}=1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown config key" in err and len(err.strip().splitlines()) == 1


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_invalid_config_files_always_end_in_a_clean_error(data, tmp_path, capsys):
    key = data.draw(st.sampled_from([k for k in KEYS if "." in k]))
    value = data.draw(bad_value(SCHEMA[key][1]).filter(lambda v: not isinstance(v, dict)))
    section, leaf = key.split(".", 1)
    path = tmp_path / "bad.toml"
    path.write_text(f"[{section}]\n{leaf} = {toml_literal(value)}\n")
    code = main(["run", "--config", str(path), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2, (path.read_text(), err)
    assert err.startswith("brmtrl: error: ") and len(err.strip().splitlines()) == 1
    assert key in err or ("not valid TOML" in err and str(path) in err)


def test_every_shipped_config_is_valid():
    for path in CONFIGS.glob("*.toml"):
        load_config(path)
