"""Installs tfp_esc: sparse coding with analytic, entropy-based ELBOs in TFP."""
import pathlib
import re

import setuptools

_HERE = pathlib.Path(__file__).parent
_VERSION = re.search(r"__version__ = '([^']+)'",
                     (_HERE / 'tfp_esc' / '__init__.py').read_text()).group(1)

setuptools.setup(
    name='tfp_esc',
    version=_VERSION,
    description='Sparse coding with analytic, entropy-based ELBOs in '
                'TensorFlow Probability.',
    long_description=(_HERE / 'README.md').read_text(),
    long_description_content_type='text/markdown',
    packages=setuptools.find_packages(include=['tfp_esc', 'tfp_esc.*']),
    python_requires='>=3.10',
    # TFP 0.25 refuses TF < 2.18 and needs tf-keras at import; tf-keras 2.21
    # wants TF 2.21.x, so the three are pinned together.
    install_requires=[
        'tensorflow==2.21.*',
        'tensorflow-probability[tf]==0.25.*',
        'tf-keras==2.21.*',
        'keras>=3.10,<4',
        'numpy>=1.26',
        'scipy>=1.11',
        'matplotlib>=3.8',
        'absl-py>=2.0',
        'scikit-image>=0.22',
        # tfp_esc.SparseCoding; 1.6 brought validate_data and
        # __sklearn_tags__, which it uses.
        'scikit-learn>=1.6',
    ],
    extras_require={
        # nbclient, nbformat and ipykernel execute the colab/ notebooks;
        # pytest-xdist runs the suite on every core (README's test command).
        'test': ['pytest>=8', 'hypothesis>=6.100', 'pytest-xdist>=3.5',
                 'nbclient>=0.10', 'nbformat>=5.10', 'ipykernel>=6.29'],
        # MAP / l1 dictionaries (tfp_esc.evaluation.map_baseline); scikit-learn
        # is now in the core install, the extra stays for old commands.
        'baselines': [],
        # TF 2.21 no longer installs TensorBoard; only its callback needs it.
        'tensorboard': ['tensorboard>=2.20'],
        # benchmarks/restoration.py: the BM3D anchor (skimage is core).
        'benchmarks': ['bm3d>=4.0'],
    },
)
