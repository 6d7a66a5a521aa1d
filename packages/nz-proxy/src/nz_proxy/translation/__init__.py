"""Translation and framing: what goes to the backend and what comes back to the client.

* :mod:`~nz_proxy.translation.requests`: OpenAI request bodies as native ones;
* :mod:`~nz_proxy.translation.native`: native bodies as admission sees them (the
  completion cap, the size of every input);
* :mod:`~nz_proxy.translation.replies`: whole native answers as OpenAI ones;
* :mod:`~nz_proxy.translation.streams`: native streams as server-sent events, and the
  tap that counts a native stream passed through;
* :mod:`~nz_proxy.translation.framing`: NDJSON lines in, SSE events out, at byte level;
* :mod:`~nz_proxy.translation.answers`: one request's answer, streamed or whole, and the
  tokens it used;
* :mod:`~nz_proxy.translation.responses`: writing responses on the raw ASGI interface.

Everything but ``answers`` and ``responses`` is pure: no I/O, no clock, no logging.
"""
