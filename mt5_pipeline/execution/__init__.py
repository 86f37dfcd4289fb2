"""The execution contract: what a signal says and the rules the EA side obeys."""
