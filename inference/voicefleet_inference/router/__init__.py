"""The VoiceFleet router: one OpenAI endpoint for every TTSVoice, queue-aware pod choice.

Modules, from the edge inwards:

* ``cli`` / ``service``: settings → wired parts → uvicorn;
* ``app``: HTTP routes that decode and delegate;
* ``proxy``: send to a pod, stream back, retry while nothing reached the client, hold
  while a voice has no ready pod;
* ``choice``: the pure decision (join the shortest queue of estimated work-seconds);
* ``fleet``: voices, pods and the load view of each pod (event-loop thread only);
* ``discovery``: TTSVoice and pod watches (or static upstreams) into the fleet;
* ``poll``: a long-poll of the compact ``/load`` of each pod the router has not heard from
  lately, answered when its load changes (the others report their load on every
  response) into the fleet;
* ``settings``, ``metrics``, ``errors``: the one place for each.
"""
