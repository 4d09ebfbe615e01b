"""inferstack: OpenAI-compatible gateway, vLLM engine simulator and load-test tooling."""

__version__ = "0.1.0"
