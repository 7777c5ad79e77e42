"""tfp_esc.objective."""
