"""tfp_esc.posterior."""
