"""The OpenAI-compatible HTTP server (``ferrite serve``), on the engine. Needs the ``server``
extra (``pip install 'ferrite-llm[server]'``: Starlette and uvicorn); ``import ferrite`` never
imports this package.

Modules, one concept each: ``protocol`` (request bodies: parsing, validation), ``responses``
(response and chunk shapes), ``errors`` (the OpenAI error body), ``sse`` (event framing),
``pump`` (the engine thread and asyncio), ``metrics`` (Prometheus text), ``app`` (routes), ``cli``
(the command).
"""
