"""`lightmoe serve`: an OpenAI-compatible HTTP server over a bundle.

Flow: HTTP handlers (app.py) validate and tokenize, then hand a `Job` to the engine (engine.py), whose single
thread owns the model and the runtime. The engine detects each job's task (detect.py), lets the scheduler
(scheduler.py, pure) pick which waiting jobs join the running batch and which task's resident set serves them,
decodes the batch step by step (batch.py merges and splits KV caches), and streams events back to the handlers.
"""
