"""Hostile input: the mail corpus, the fuzzer, impostors, bounds, and output no hostile value can break."""
