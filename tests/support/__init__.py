"""What the tests share: fixtures, the mail they send and how they read what comes back, and the hostile-mail corpus."""
