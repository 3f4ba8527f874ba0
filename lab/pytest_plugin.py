"""pytest plugin of the lab harness (fixtures arrive with the lab foundation)."""
