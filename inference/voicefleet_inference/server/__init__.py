"""The inference server's HTTP layer.

* :mod:`.app` — ``create_app(settings, scheduler, metrics)``: routes, health, metrics.
* :mod:`.openai_routes` — ``POST /v1/audio/speech``; :mod:`.gptsovits_routes` — ``/tts``.
* :mod:`.dataplane` — the one synthesis flow both routes delegate to (admission, waiting,
  encoding, streaming, client disconnects).
* :mod:`.errors` — the single mapping of the core's domain errors to HTTP.
* :mod:`.drain` — SIGTERM handling around uvicorn; :mod:`.runner` — build and serve.
"""
