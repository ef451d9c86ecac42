"""The configuration (issues 29, 30, 31): grouped options with their help and resumability as field
metadata, typed values with the file named in every error, "did you mean" for misspelled keys, a
Spec that carries its own shape and defaults, and fit() that leaves the process as it found it."""
import dataclasses
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

import dni_dist
from dni_dist import cli, train
from dni_dist.config import GROUPS, Config, ConfigError
from dni_dist.fit import ConfigWarning, resolve

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T, CHUNKS, B = 3, 4, 4


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(2, 4, batch_first=True)
        self.out = nn.Linear(4, 1)

    def forward(self, x, state):
        h, state = self.rnn(x, state)
        return self.out(h), state


def tiny_batch(index):
    g = torch.Generator().manual_seed(index)
    x = torch.randn(B, T * CHUNKS, 2, generator=g)
    return x, x[..., :1].cumsum(1) * 0.3


def mse(out, y, mask):
    return ((out - y) ** 2).mean()


def tiny_spec(**kw):
    """A spec that brings its own shape (T x CHUNKS) and defaults."""
    return dni_dist.Spec(model=Tiny, batch=tiny_batch, loss=mse, truncation=T, chunks=CHUNKS,
                         defaults={"steps": 2, "progress": False}, **kw)


shaped_spec = tiny_spec()  # by import path: --spec test_config:shaped_spec


def _main(argv, capsys, spec=None):
    """``python -m dni_dist.train argv`` in this process: (exit code, stderr)."""
    try:
        code = train.main(argv, spec=spec)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


# ------------------------------------------------------------------ issue 29 goal 3 / issue 30 goal 5
def test_every_option_carries_its_group_help_and_resumability():
    for f in dataclasses.fields(Config):
        assert f.metadata["group"] in (*GROUPS, "testing"), f.name
        assert len(f.metadata["help"]) > 10 and isinstance(f.metadata["resumable"], bool), f.name
    saved = Config(steps=5, lr=0.5).to_dict()
    now = Config(steps=9, lr=0.5, log_every=3.0)  # steps and log_every are resumable: no difference
    assert now.differences(saved) == []
    assert Config(steps=5, lr=0.1).differences(saved) == ["--lr: 0.5 in the checkpoint, 0.1 now"]


def test_help_is_grouped_by_concern_and_hides_the_test_aids():
    text = cli.parser().format_help()
    for group in GROUPS:
        assert f"\n{group}:\n" in text
    sections = text.split("\n\n")
    parallel = next(s for s in sections if s.startswith("parallelism:"))
    assert "--workers" in parallel and "--backend" in parallel and "--hidden" not in parallel
    assert "--fail-at" not in text and "--fail-mode" not in text
    _, values, _ = cli.read(cli.parser(), ["--fail-at", "3", "--fail-mode", "nan"])  # still a working hook
    assert Config(**values).fail_at == 3 and Config(**values).fail_mode == "nan"


def test_a_misspelled_option_gets_a_did_you_mean(capsys):
    code, err = _main(["--hiden", "8"], capsys)
    assert code == 2 and "--hiden" in err and "did you mean '--hidden'?" in err


# ------------------------------------------------------------------ synth_options: a mapping, checked
def test_synth_options_is_a_mapping_checked_against_the_synthesizer():
    assert Config(synth_options={"gate": False}).synth_options == {"gate": False}
    assert Config(synth_options='{"gate_warmup": 0}').synth_options == {"gate_warmup": 0}  # the CLI's JSON
    with pytest.raises(ConfigError) as e:
        Config(synth_options={"gaet": False})
    assert "unknown key 'gaet' (did you mean 'gate'?)" in str(e.value) and "valid keys: " in str(e.value)
    assert "gate_warmup" in str(e.value) and len(str(e.value).splitlines()) == 1
    with pytest.raises(ConfigError, match="discount"):  # values are the Synthesizer's to check
        Config(synth_options={"discount": 3})
    with pytest.raises(ConfigError, match=r"Spec\(synthesizer=...\): unknown key 'lookahed' \(did you mean "
                                          r"'lookahead'\?\)"):
        dni_dist.Spec(model=Tiny, batch=tiny_batch, loss=mse, synthesizer={"lookahed": 2})


def test_a_misspelled_synth_option_on_the_command_line_is_one_line(capsys):
    code, err = _main(["--synth-options", '{"gate_warmpu": 0}'], capsys)
    assert code == 2 and "Traceback" not in err
    assert "--synth-options: unknown key 'gate_warmpu' (did you mean 'gate_warmup'?); valid keys:" in err


# ------------------------------------------------------------------ issue 31 item 8: TOML values typed
@pytest.mark.parametrize("line,key", [('resume = "false"', "resume"), ('progress = "no"', "progress"),
                                      ('steps = "12"', "steps"), ("seed = 1.5", "seed")])
def test_toml_values_are_type_checked_and_the_file_named(tmp_path, capsys, line, key):
    path = tmp_path / "run.toml"
    path.write_text(f'checkpoint_dir = "{tmp_path}"\n{line}\n')
    small = ["--chunks", "2", "--truncation", "2", "--delay", "1", "--batch", "2", "--hidden", "4"]
    code, err = _main(["--config", str(path), *small, *([] if key == "steps" else ["--steps", "1"])], capsys)
    assert code == 2, err
    assert f"--config {path}: key {key}: {key}=" in err and "Traceback" not in err


def test_an_option_the_launcher_contradicts_names_the_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    path = tmp_path / "run.toml"
    path.write_text("workers = 4\n")
    code, err = _main(["--config", str(path)], capsys)
    assert code == 2 and f"--config {path}: key workers: torchrun started 2 processes" in err


def test_toml_syntax_errors_and_unknown_keys_name_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = 3\nworkers 2\n")
    code, err = _main(["--config", str(bad)], capsys)
    assert code == 2 and f"--config {bad}: not valid TOML" in err and "line 2" in err
    typo = tmp_path / "typo.toml"
    typo.write_text("chunkz = 4\n")
    code, err = _main(["--config", str(typo)], capsys)
    assert code == 2 and "unknown key 'chunkz' (did you mean 'chunks'?)" in err and str(typo) in err


def test_synth_options_as_a_toml_table(tmp_path, capsys):
    path = tmp_path / "run.toml"
    path.write_text("[synth_options]\ngate = false\ngate_warmup = 0\n")
    ns, values, sources = cli.read(cli.parser(), ["--config", str(path)])
    assert Config(**values).synth_options == {"gate": False, "gate_warmup": 0}
    path.write_text("[synth_options]\ngaet = false\n")
    code, err = _main(["--config", str(path)], capsys)
    assert code == 2 and f"--config {path}: key synth_options: unknown key 'gaet' (did you mean 'gate'?)" in err


def test_python_booleans_are_checked_too():
    with pytest.raises(ConfigError, match="resume='false': expected a boolean"):
        Config(resume="false", checkpoint_dir="x")


# ------------------------------------------------------------------ issue 29: one owner per check, typed errors
def test_torch_backend_outside_torchrun_is_a_config_error(capsys, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ConfigError, match="must be launched by torchrun"):
        resolve(Config(backend="torch"))
    code, err = _main(["--backend", "torch"], capsys)
    assert code == 2 and "error: --backend torch must be launched by torchrun" in err


# ------------------------------------------------------------------ issue 30 goal 3: a Spec's own settings
def test_a_spec_brings_its_shape_and_defaults():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about
        result = dni_dist.fit(tiny_spec(), workers=2)
    cfg = result.metrics["config"]
    assert (cfg["truncation"], cfg["chunks"], cfg["steps"], cfg["workers"]) == (T, CHUNKS, 2, 2)
    assert result.metrics["batches"] == 2
    # one of the two given: the other follows the spec's length (12 steps)
    assert dni_dist.fit(tiny_spec(), chunks=2).metrics["config"]["truncation"] == 6
    # options win over the spec's defaults, a Config's non-default fields too
    assert dni_dist.fit(tiny_spec(), Config(steps=1)).metrics["batches"] == 1


def test_a_spec_refuses_a_contradicting_shape_and_bad_defaults():
    with pytest.raises(ConfigError, match=r"truncation=5 x chunks=4 = 20 steps, but the spec's batches are 12"):
        dni_dist.fit(tiny_spec(), truncation=5, chunks=4)
    with pytest.raises(ConfigError, match="--chunks must divide 12"):
        dni_dist.fit(tiny_spec(), chunks=5)
    with pytest.raises(ConfigError, match=r"fit\(spec, ...\): unknown key 'wokers' \(did you mean 'workers'\?\)"):
        dni_dist.fit(tiny_spec(), wokers=2)
    with pytest.raises(ConfigError, match=r"unknown key 'stpes' \(did you mean 'steps'\?\)"):
        dni_dist.Spec(model=Tiny, batch=tiny_batch, loss=mse, defaults={"stpes": 3})
    with pytest.raises(ValueError, match=r"Spec\(truncation=0\)"):
        dni_dist.Spec(model=Tiny, batch=tiny_batch, loss=mse, truncation=0)


def test_options_a_spec_ignores_are_one_line_warnings(capsys):
    spec = tiny_spec(optimizer=lambda p: torch.optim.SGD(p, lr=0.01), synthesizer={"lr": 0.01})
    code, err = _main(["--hidden", "999", "--lr", "0.5", "--synth-lr", "0.1", "--no-progress"], capsys, spec=spec)
    assert code == 0, err
    assert "dni_dist: warning: --hidden 999 is ignored: the spec brings its own model and data" in err
    assert "dni_dist: warning: --lr 0.5 is ignored: the spec brings its own optimizer" in err
    assert "dni_dist: warning: --synth-lr 0.1 is overridden by the spec's synthesizer option lr=0.01" in err
    with pytest.warns(ConfigWarning, match="--batch 7 is ignored"):
        dni_dist.fit(tiny_spec(), batch=7)


def test_the_command_line_takes_a_specs_shape_from_the_spec(capsys):
    """``--spec`` without --truncation/--chunks: the spec's own shape (was: an error at batch 0)."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    try:
        code, err = _main(["--spec", "test_config:shaped_spec", "--steps", "1", "--no-progress"], capsys)
    finally:
        sys.path.remove(os.path.join(ROOT, "tests"))
    assert code == 0, err
    assert '"truncation": 3' in err and '"chunks": 4' in err


def test_fit_leaves_the_thread_count_as_it_found_it():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        dni_dist.fit(tiny_spec(), steps=1)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_fit_returns_the_trained_model_on_every_torchrun_rank(tmp_path):
    script = tmp_path / "fit_every_rank.py"
    script.write_text(
        "import os, sys, torch\n"
        f"sys.path.insert(0, {os.path.join(ROOT, 'tests')!r})\n"
        "import dni_dist, test_config\n"
        "r = dni_dist.fit(test_config.shaped_spec, steps=2)\n"
        f"torch.save(r.model.state_dict(), os.path.join({str(tmp_path)!r}, f\"rank{{os.environ['RANK']}}.pt\"))\n")
    env = {**os.environ, "PYTHONPATH": ROOT}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        str(script)], capture_output=True, text=True, timeout=200, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = (torch.load(tmp_path / f"rank{k}.pt", weights_only=True) for k in (0, 1))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_own_model_example_sets_its_defaults_through_the_spec():
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    try:
        import own_model
    finally:
        sys.path.remove(os.path.join(ROOT, "examples"))
    assert (own_model.spec.truncation, own_model.spec.chunks) == (own_model.T, own_model.CHUNKS)
    assert json.dumps(own_model.spec.defaults)  # plain options


def test_a_short_spec_is_not_held_to_the_built_in_tasks_options(capsys):
    """The built-in recall task's --delay 5 must not refuse a user's spec of 2 chunks x 1 step
    (fit() and train.main(spec=...) with a Spec object); a built-in task still checks its own shape."""
    def batch(index):
        x = torch.randn(B, 2, 2, generator=torch.Generator().manual_seed(index))
        return x, x[..., :1]
    short = dni_dist.Spec(model=Tiny, batch=batch, loss=mse, truncation=1, chunks=2)
    result = dni_dist.fit(short, steps=2, progress=False)
    assert len(result.metrics["losses"]) > 0
    code, err = _main(["--steps", "2", "--no-progress"], capsys, spec=short)
    assert code == 0, err
    code, err = _main(["--task", "recall", "--delay", "40", "--truncation", "4", "--chunks", "2"], capsys)
    assert code == 2 and "delay(40) must be in [0, chunks*truncation=8)" in err


def test_compare_table_is_aligned_and_shows_the_specs_metric():
    rows = [("tbptt", {"losses": [2.5] * 8, "tokens_per_s": 119379.0, "evals": [{"batch": 2, "valid_bpc": 2.51}]}),
            ("dni", {"losses": [0.08] * 8, "tokens_per_s": 49479.0, "evals": [{"batch": 2, "valid_bpc": 2.4}]})]
    lines = train.compare_table(rows, chunks=4).splitlines()
    assert lines[0].split()[-2:] == ["valid_bpc", "tokens/s"] and lines[2].split() == ["dni", "0.0800", "2.4000", "49,479"]
    assert len({len(line) for line in lines}) == 1  # every column right-aligned to the same width


def test_save_writes_the_synthesizer_beside_the_model(tmp_path):
    """--save model.pt: the model's state_dict (loads into the plain module) and model.synth.pt (the
    trained synthesizer and its optimizer, weights_only), so a fine-tune need not start cold."""
    path = tmp_path / "model.pt"
    dni_dist.fit(tiny_spec(), steps=6, save=str(path))
    model = Tiny()
    model.load_state_dict(torch.load(path, weights_only=True))
    saved = torch.load(tmp_path / "model.synth.pt", weights_only=True)
    synth = dni_dist.Synthesizer.for_rnn(model.rnn)
    synth.load_state_dict(saved["synth"])
    assert set(saved) == {"synth", "synth_opt"} and saved["synth_opt"]["state"]  # it trained
    assert float(saved["synth"]["target_ms"]) > 0
