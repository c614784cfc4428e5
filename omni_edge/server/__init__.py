"""The OpenAI-compatible server (`omni-edge serve`): `create_app(model)` is the FastAPI app."""
