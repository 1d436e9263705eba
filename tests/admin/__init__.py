"""What admins do: the allowlist, the two-person rule, the register, the audit trail and quarantine."""
