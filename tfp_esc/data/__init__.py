"""tfp_esc.data."""
