"""VoiceFleet control plane: kopf handlers reconciling TTSVoice objects, and the autoscaler."""
