"""TTS engines. Each engine satisfies :class:`voicefleet_inference.engines.base.Engine`."""
