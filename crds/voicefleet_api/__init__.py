"""Names both planes need, in one place: the contracts between operator, server and router.

The operator (control plane) and the inference server and router (data plane) each
import this package; it imports neither of them, so a rename here is one reviewable
change that every reader of the name follows. ``voicefleet_api.scale`` (the one writer
of a voice's replica count) needs the Kubernetes client and is therefore a submodule
that only the operator and router import; everything else here is plain constants.
"""

from __future__ import annotations

from voicefleet_api import crd, engines, env, labels, metric_names, termination

__version__ = "0.1.0"
"""The VoiceFleet release (pyproject reads it): the operator's default server image tag."""

__all__ = ["__version__", "crd", "engines", "env", "labels", "metric_names", "termination"]
