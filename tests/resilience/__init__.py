"""Outages, crashes, two gateways at once, and a daemon under attack: nothing lost, nothing doubled."""
