"""`lightmoe serve --replicas K`: serving past one server, with requests routed by expert affinity.

Why: one server that holds every task's experts in turn must move its resident set whenever its traffic mixes,
and it can only batch requests of one task together. A fleet need not: if each replica keeps a few tasks and
requests go to the replica that serves their task, each replica sees fewer tasks (larger groups, fewer moves)
and still serves every request with its own task's set.

- router.py (pure): which replicas serve which task (by load), and where one request goes (affinity, the
  least-loaded replica past a queue bound, or round-robin as the baseline);
- sim.py (pure): a discrete-event model of a fleet with the same routers, for sizes this machine cannot run;
- ray_app.py: the Ray Serve application (an ingress that detects and routes, K replicas of the single server).
"""
