"""tfp_esc.inference."""
