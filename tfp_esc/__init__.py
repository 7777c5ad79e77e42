"""tfp_esc: sparse coding with analytic, entropy-based ELBOs in TFP."""

__version__ = '0.1.0'
