"""The inference server's HTTP layer.

* :mod:`.app` — ``create_app(settings, scheduler, metrics)``: routes, health, metrics.
* :mod:`.openai_routes` — ``POST /v1/audio/speech``; :mod:`.gptsovits_routes` — ``/tts``.
* :mod:`.dataplane` — the one synthesis flow both routes delegate to (admission, waiting,
  encoding, streaming, client disconnects).
* :mod:`.errors` — domain errors and their single mapping to HTTP.
* :mod:`.drain` — SIGTERM handling around uvicorn; :mod:`.runner` — build and serve.

Nothing is imported here on purpose: the scheduler imports :mod:`.errors`, and importing
the app from this package's ``__init__`` would make that a cycle.
"""
