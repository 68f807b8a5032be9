"""`parley serve`: the OpenAI-compatible API, the stored-conversation routes and the web chat page.

app.py builds the FastAPI app (create_app) and runs it (run); the engine's driver (parley/batching.py)
batches requests; openai_api.py and conversations_api.py are the routes; web/ is the page.
"""
