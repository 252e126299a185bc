"""The evaluation engine's pure side: no Django import anywhere in this package.

For now it holds the shape of targeting data (clauses, rules, splits) and its validation,
shared by the services that store targeting and, later, by the engine that compiles it.
"""
