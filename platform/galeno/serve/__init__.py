"""Ray Serve endpoints: fill-mask and NER models behind one FastAPI ingress (docs/serve.md).

``galeno.serve.config`` (the config; what a replica computes is ``galeno.inference``),
``galeno.serve.app`` (deployments, ``build_app``), ``galeno.serve.api`` (HTTP schema and checks),
``galeno.serve.cli`` (``jobs/serve.py``). Nothing is imported here: importing ``galeno.serve``
must not import Ray or torch.
"""
