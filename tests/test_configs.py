"""Every config file loads, its method module exists, and its smoke variant takes one real training step.

String references rot silently (STYLE.md pitfalls): this test is what keeps configs and methods in sync.
"""

import importlib
import pathlib

import jax
import numpy as np
import pytest

from data_pipelines import pipeline
from lowlight_jax.train import sharding as sharding_lib
from lowlight_jax.train import trainer

CONFIGS = sorted(p.stem for p in (pathlib.Path(__file__).resolve().parents[1] / "configs").glob("*.py")
                 if p.stem not in ("__init__", "common"))


def test_config_files_found():
  assert "sgz" in CONFIGS


@pytest.mark.parametrize("name", CONFIGS)
def test_default_config_loads_and_names_a_method(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  importlib.import_module(f"lowlight_jax.methods.{config.method}")
  assert config.batch_size > 0 and config.total_steps > 0


#: Configs whose smoke run is trained through the whole launch.train loop (logging, checkpoints, bitwise resume) on
#: the 8 fake devices by their method's own tests, and the test that does it; one more sharded step here would only
#: repeat their slowest part (the compile).
TRAINED_IN_METHOD_TESTS = {
    "skf_drbn": ("tests/methods/test_skf_drbn.py", 'skf_resume_check("skf_drbn"'),
    "skf_snr": ("tests/methods/test_skf_snr.py", 'skf_resume_check("skf_snr"'),
    "dmgnie": ("tests/methods/test_dmgnie_segbmn.py", "def test_smoke_run_logs_both_terms_checkpoints_and_resumes_bitwise"),
    "scuf": ("tests/methods/test_scuf.py", "def test_smoke_run_on_8_devices_logs_resumes_bitwise_exports_and_enhances"),
}


def test_every_config_smoke_trains_somewhere():
  assert set(TRAINED_IN_METHOD_TESTS) <= set(CONFIGS)
  for name, (path, marker) in TRAINED_IN_METHOD_TESTS.items():
    text = (pathlib.Path(__file__).resolve().parents[1] / path).read_text()
    assert marker in text, (name, path)


@pytest.mark.parametrize("name", [c for c in CONFIGS if c not in TRAINED_IN_METHOD_TESTS])
def test_smoke_config_trains_one_step_on_8_devices(name):
  config = importlib.import_module(f"configs.{name}").get_config("smoke")
  setup = trainer.build(config)
  assert setup.mesh.shape["data"] == jax.device_count() == 8
  loader = pipeline.make_train_loader(config.data, batch_size=config.batch_size, seed=config.seed)
  batch = sharding_lib.global_batch(next(iter(loader)), setup.mesh)
  step = trainer.make_train_step(setup)
  state, metrics, finite = step(setup.state, setup.frozen, batch)
  assert bool(finite)
  values = {k: float(v.compute()) for k, v in metrics.items()}
  assert all(np.isfinite(v) for v in values.values()), values
  assert int(state.step) == 1


def test_unknown_config_arg_is_named():
  with pytest.raises(ValueError, match="smoek"):
    importlib.import_module("configs.sgz").get_config("smoek")
