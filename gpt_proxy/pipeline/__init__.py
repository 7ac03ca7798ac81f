"""The pipeline every door's request goes through: the request value and its validation,
roles and the history budget, admission and settlement around the upstream, the relay
(heartbeats, cancellation, the hand-over of a resumable reply) and the access line.

`stages` (what every door shares: the turn, admission, opening the upstream, settlement, the
access line), `validation` (bodies and their text), `roles` (role files and message
assembly), `relay` (the read loop and the `Framer` every door's framing extends).

Must not know: any door, or how a door frames its replies and errors.
"""
