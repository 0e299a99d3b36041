"""VoiceFleet data plane: the per-pod TTS inference server, its engines, and the router."""
