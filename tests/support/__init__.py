"""What the tests share: fixtures, a private Dovecot, and the hostile-mail corpus."""
