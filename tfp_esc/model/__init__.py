"""tfp_esc.model."""
