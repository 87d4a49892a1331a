"""Executes notebooks/inspect_enhancement_factors.ipynb top to bottom with the released SGZ weights.

Parameters are injected papermill-style: a cell tagged `injected-parameters` right after the cell
tagged `parameters`, so the notebook's own defaults are overridden exactly as papermill would.
"""

import pathlib

import nbclient
import nbformat

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "inspect_enhancement_factors.ipynb"


def _inject_parameters(nb, **params):
  index = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
  source = "\n".join(f"{k} = {v!r}" for k, v in params.items())
  cell = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
  nb.cells.insert(index + 1, cell)
  return nb


def _outputs(nb):
  return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def test_notebook_is_clean_and_parameterised():
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
  assert len(params) == 1
  namespace = {}
  exec(params[0].source, namespace)  # noqa: S102 (our own three assignments)
  assert (namespace["WORKDIR"], namespace["WEIGHTS"], namespace["NUM_IMAGES"]) == (None, None, 3)
  # Stored without outputs: results come from running it, never from the repository.
  assert not _outputs(nb)


def test_notebook_runs_with_released_weights(conformance_dir, tmp_path):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  weights = str(conformance_dir / "weights" / "sgz_epoch99.npz")
  _inject_parameters(nb, WEIGHTS=weights, NUM_IMAGES=1)
  client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()  # Raises CellExecutionError on the first failing cell.

  outputs = _outputs(nb)
  assert not [o for o in outputs if o.output_type == "error"]
  images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.data]
  # One image: factor panel, histograms, brightness scatter.
  assert len(images) == 3
  text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  assert f"SGZ from {weights}; EFE scale factor 12; 1 test image(s)" in text
  assert "|x_r| Spearman" in text
