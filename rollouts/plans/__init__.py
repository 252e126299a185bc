"""Rollout plans: a candidate variation exposed stage by stage, with guardrails that stop
expansion. `design` (what a plan and its stages are, creating one), `transitions` (the
state machine), `measurement` (evidence), `breaches` (the guardrail sweep), `guardrails`
(pure judging), `observers` (what plans do when change control announces something), and the
console: `views`, `pages` (reads), `charts` (SVG). Models live in rollouts/models.py.
"""
