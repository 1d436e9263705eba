"""What admins maintain: the allowlist, the two-person rule and its admins, the register and its reference data."""
