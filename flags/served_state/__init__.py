"""What a governed environment can serve, judged the same way on every write path.

- `state`: the served state of a flag in an environment as one plain value, and its hash (pure).
- `policy`: whether a change of served state raises risk, and why (pure).
- `guard`: the scope every catalog write runs in; it locks, recomputes and refuses.
"""
