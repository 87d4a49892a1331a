"""The `lowlight` command (launch/cli.py), `--config NAME[:ARG]` resolution (launch/_config.py) and the one-line
error boundary of the CLIs (launch/_common.py). Nothing here trains: every subprocess stops at its error or prints a
listing."""

import importlib.metadata
import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

from launch import _config
from launch import cli
from lowlight_jax import errors

REPO = pathlib.Path(__file__).resolve().parents[2]


def _one_error_line(result, prog: str) -> str:
  """The single stderr line of an expected error (exit 2, no traceback)."""
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2, result.stderr[-3000:]
  assert len(lines) == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  assert lines[0].startswith(f"{prog}: error: "), lines[0]
  return lines[0]


def test_version_and_console_script(run_module):
  want = importlib.metadata.version("lowlight-jax")
  result = run_module(["launch.cli", "--version"], timeout=60)
  assert result.returncode == 0 and result.stdout == f"lowlight {want}\n", result.stderr
  scripts = {e.name: e.value for e in importlib.metadata.entry_points(group="console_scripts")}
  assert scripts.get("lowlight") == "launch.cli:run"
  # Every subcommand names a module with a `main`.
  for command, (module, _) in cli.COMMANDS.items():
    spec = importlib.util.find_spec(module)
    assert spec is not None and "def main(" in pathlib.Path(spec.origin).read_text(), command


def test_methods_lists_methods_and_their_configs(run_module):
  table = cli.methods()
  assert {"sgz", "scl_lle"} <= set(table)
  assert {"smoke", "demo"} <= set(table["sgz"]["sgz"])
  assert {"smoke", "demo", "finetune"} <= set(table["scl_lle"]["scl_lle"])
  result = run_module(["launch.cli", "methods"], timeout=60)
  assert result.returncode == 0, result.stderr
  rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:]}
  assert "sgz (args: smoke, demo" in rows["sgz"]
  assert "scl_lle (args: smoke, demo, finetune" in rows["scl_lle"]
  # Listing them imports neither jax nor TensorFlow nor the method modules.
  probe = subprocess.run([sys.executable, "-c", "import sys; from launch import cli; cli.methods(); "
                          "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'tensorflow', 'flax') "
                          "or m.startswith('lowlight_jax.methods.')))"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
  assert probe.returncode == 0 and probe.stdout.strip() == "[]", probe.stdout + probe.stderr
  usage = run_module(["launch.cli", "--help"], timeout=60)
  assert usage.returncode == 0 and "make-synthetic-video" in usage.stdout and "methods" in usage.stdout


def test_unknown_command_is_one_line(run_module):
  line = _one_error_line(run_module(["launch.cli", "trian"], timeout=60), "lowlight")
  assert "unknown command 'trian'" in line and "train" in line


def test_config_names_resolve_to_the_packaged_files(tmp_path):
  path, arg = _config.resolve_spec("sgz:smoke")
  assert pathlib.Path(path) == REPO / "configs" / "sgz.py" and arg == "smoke"
  assert _config.resolve_spec("scl_lle") == (str(REPO / "configs" / "scl_lle.py"), None)
  assert _config.resolve_spec("configs/sgz.py:smoke") == ("configs/sgz.py", "smoke")
  from configs import sgz
  assert _config.load_config("sgz:smoke").to_dict() == sgz.get_config("smoke").to_dict()
  with pytest.raises(errors.ConfigError, match=r"unknown config 'sgzz'; known: dmgnie, scl_lle, scuf, sgz"):
    _config.resolve_spec("sgzz:smoke")
  with pytest.raises(errors.ConfigError, match=r"config file configs/nope.py not found"):
    _config.resolve_spec("configs/nope.py")
  broken = tmp_path / "broken.py"
  broken.write_text("def get_config(arg=None):\n  raise KeyError('no such preset: ' + str(arg))\n")
  with pytest.raises(errors.ConfigError, match=r"get_config\('x'\) of .*broken.py failed: KeyError"):
    _config.load_config(f"{broken}:x")
  # The args a config documents: a CONFIG_ARGS constant, else the docstring's Args block.
  listed = tmp_path / "listed.py"
  listed.write_text('"""Doc.\n\nArgs:\n  fast   quick\n          more text\n  big    large\n\nLaunch: x\n"""\n'
                    "def get_config(arg=None):\n  return {}\n")
  assert _config.config_args(listed) == ["fast", "big"]
  listed.write_text('CONFIG_ARGS = ("a", "b")\ndef get_config(arg=None):\n  return {}\n')
  assert _config.config_args(listed) == ["a", "b"]


def test_config_name_works_outside_the_clone(tmp_path):
  # From another working directory the name still resolves (the config is loaded before --workdir is checked).
  workdir = tmp_path / "a_file"
  workdir.write_text("not a folder")
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run([sys.executable, "-m", "launch.cli", "train", "--config", "sgz:smoke", "--workdir",
                           str(workdir)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
  line = _one_error_line(result, "lowlight train")
  assert f"--workdir {workdir} is a file" in line


@pytest.mark.parametrize("args,needle", [
    (["--config", "configs/nope.py"], "config file configs/nope.py not found"),
    (["--config", "nope:smoke"], "unknown config 'nope'; known: dmgnie, scl_lle, scuf, sgz"),
    (["--config", "sgz:smoke", "--config.loss_weights.tvv=3"],
     "--config.loss_weights.tvv: unknown config field 'loss_weights.tvv'"),
    (["--config", "sgz:bogus"], "get_config('bogus')"),
])
def test_train_config_errors_are_one_line(tmp_path, run_module, args, needle):
  result = run_module(["launch.train", *args, "--workdir", str(tmp_path / "w")], timeout=120)
  assert needle in _one_error_line(result, "train.py")
  assert not (tmp_path / "w").exists()


def test_train_workdir_file_and_raising_config_file(tmp_path, run_module):
  raising = tmp_path / "raising.py"
  raising.write_text("def get_config(arg=None):\n  raise RuntimeError('the config is broken')\n")
  result = run_module(["launch.train", "--config", str(raising), "--workdir", str(tmp_path / "w")], timeout=120)
  line = _one_error_line(result, "train.py")
  assert str(raising) in line and "RuntimeError: the config is broken" in line
  workdir = tmp_path / "file"
  workdir.write_text("x")
  result = run_module(["launch.cli", "train", "--config", "sgz:smoke", "--workdir", str(workdir)], timeout=120)
  line = _one_error_line(result, "lowlight train")
  assert f"--workdir {workdir} is a file" in line
  assert workdir.read_text() == "x"
  # --verbose: the traceback instead of the one line.
  result = run_module(["launch.train", "--config", "configs/nope.py", "--workdir", str(tmp_path / "w"),
                       "--verbose"], timeout=120)
  assert result.returncode != 0 and "Traceback (most recent call last)" in result.stderr
  assert "config file configs/nope.py not found" in result.stderr


def test_convert_weights_missing_input_is_one_line(tmp_path, run_module):
  missing = tmp_path / "Epoch99.pth"
  out = tmp_path / "out.msgpack"
  result = run_module(["launch.convert_weights", "--method", "sgz", "--input", str(missing), "--output", str(out)],
                      timeout=120)
  assert f"--input {missing}: no such file" in _one_error_line(result, "convert_weights.py")
  garbage = tmp_path / "garbage.pth"
  garbage.write_bytes(b"this is not a checkpoint")
  result = run_module(["launch.cli", "convert", "--method", "sgz", "--input", str(garbage), "--output", str(out)],
                      timeout=120)
  line = _one_error_line(result, "lowlight convert")
  assert f"--input {garbage}" in line and "unrecognised checkpoint format" in line
  assert not out.exists()


@pytest.mark.parametrize("args,needle", [
    (["data-check", "--config", "sgz:smoke", "--num_batches", "0"], "--num_batches must be >= 1, got 0"),
    (["sweep", "--config", "sgz:smoke", "--sweep", "sgz_loss_ablation", "--workdir-root", "{tmp}/runs",
      "--dry-run", "--set", "loss_weights.tvv=1"], "--set loss_weights.tvv=1: unknown config field"),
    (["sweep", "--config", "sgz", "--sweep", "nope", "--workdir-root", "{tmp}/runs", "--dry-run"],
     "--sweep: unknown config 'nope'; known: dmgnie_ablation, sgz_loss_ablation"),
    (["benchmark", "--sections", "sgz_inferense"], "--sections: unknown ['sgz_inferense']"),
    (["demo", "--workdir", "{tmp}/file"], "--workdir {tmp}/file is a file"),
    (["make-synthetic-video", "--out", "{tmp}/v", "--size", "641x360"],
     "--size 641x360: width and height must be even"),
    (["assets", "fetch", "--only", "nique"], "--only: unknown asset or metric 'nique'"),
    (["train", "--config", "sgz:smoke", "--workdir", "{tmp}/w", "stray"], "unexpected arguments: ['stray']"),
])
def test_every_command_reports_bad_input_in_one_line(tmp_path, run_module, args, needle):
  (tmp_path / "file").write_text("x")
  args = [a.replace("{tmp}", str(tmp_path)) for a in args]
  result = run_module(["launch.cli", *args], timeout=120)
  assert needle.replace("{tmp}", str(tmp_path)) in _one_error_line(result, f"lowlight {args[0]}")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # Nothing was written.
