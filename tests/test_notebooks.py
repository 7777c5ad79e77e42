"""The notebooks in colab/ run top to bottom at small size and show figures.

Each notebook is executed with nbclient in a fresh kernel (the ipykernel of
the interpreter running pytest), with TFP_ESC_NOTEBOOK_SMALL=1 so every size
is shrunk, and with a temporary working directory so nothing is written into
the repository. Needs nbclient, nbformat and ipykernel; skipped without them.
"""

import os
import pathlib

import pytest

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')
kernelspec = pytest.importorskip('ipykernel.kernelspec')

_REPO = pathlib.Path(__file__).resolve().parent.parent
_NOTEBOOKS = sorted((_REPO / 'colab').glob('*.ipynb'))
_CELL_TIMEOUT_S = 300  # Per cell; small-size notebooks take about a minute.


def _source(notebook):
  return '\n'.join(cell.source for cell in notebook.cells
                   if cell.cell_type == 'code')


def test_there_are_notebooks():
  assert _NOTEBOOKS, f'no notebooks in {_REPO / "colab"}'


@pytest.mark.parametrize('path', _NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_well_formed(path):
  """Colab install cell, small-size switch, no stored outputs."""
  notebook = nbformat.read(path, as_version=4)
  nbformat.validate(notebook)
  assert notebook.cells[0].cell_type == 'markdown', 'starts with an intro'
  assert notebook.cells[-1].cell_type == 'markdown', 'ends with a reading'
  source = _source(notebook)
  assert "'google.colab' in sys.modules" in source
  assert 'REPO_URL' in source and 'pip install' in source
  assert 'TFP_ESC_NOTEBOOK_SMALL' in source and 'SMALL' in source
  for cell in notebook.cells:
    if cell.cell_type == 'code':
      assert not cell.outputs and cell.execution_count is None, (
          f'{path.name} is stored with outputs; clear them before '
          'committing.')


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
  """Environment of the notebook kernel: small size, this checkout, tmp dirs.

  A 'python3' kernelspec running this interpreter is written to a temporary
  JUPYTER_PATH (which takes precedence over user and system kernelspecs), so
  the notebooks run against the environment under test even where another
  'python3' kernel is installed.
  """
  jupyter_path = tmp_path / 'jupyter'
  kernelspec.write_kernel_spec(jupyter_path / 'kernels' / 'python3')
  monkeypatch.setenv('JUPYTER_PATH', str(jupyter_path))
  monkeypatch.setenv('JUPYTER_RUNTIME_DIR', str(tmp_path / 'runtime'))
  monkeypatch.setenv('IPYTHONDIR', str(tmp_path / 'ipython'))
  monkeypatch.setenv('MPLCONFIGDIR', str(tmp_path / 'matplotlib'))
  (tmp_path / 'tmp').mkdir()
  monkeypatch.setenv('TMPDIR', str(tmp_path / 'tmp'))  # Notebooks' temp workdirs.
  monkeypatch.setenv('TFP_ESC_NOTEBOOK_SMALL', '1')
  python_path = [str(_REPO)] + [p for p in os.environ.get(
      'PYTHONPATH', '').split(os.pathsep) if p]
  monkeypatch.setenv('PYTHONPATH', os.pathsep.join(python_path))
  workdir = tmp_path / 'cwd'
  workdir.mkdir()
  return workdir


@pytest.mark.parametrize('path', _NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_and_shows_figures(path, kernel_env):
  notebook = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(
      notebook, timeout=_CELL_TIMEOUT_S, kernel_name='python3',
      resources={'metadata': {'path': str(kernel_env)}})
  client.execute()  # Raises CellExecutionError naming the failing cell.
  outputs = [output for cell in notebook.cells if cell.cell_type == 'code'
             for output in cell.outputs]
  assert not [o for o in outputs if o.output_type == 'error']
  images = [o for o in outputs if o.output_type == 'display_data'
            and 'image/png' in o.get('data', {})]
  assert images, f'{path.name} displayed no figure (no image/png output)'
