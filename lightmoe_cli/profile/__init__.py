"""Profiling: calibration text in -> router hooks -> per-task, per-layer routing statistics -> a Profile artifact.

`request.run_profile_request` is `lightmoe profile`; `run.run_profile` the library entry; `run.ensure_profile`
the model's default profile, made when missing (the evaluation and the demo use it).
"""
