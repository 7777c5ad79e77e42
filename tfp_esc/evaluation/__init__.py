"""tfp_esc.evaluation."""
