"""The API with one route that fails unexpectedly, for tests/integration/api/test_errors.py."""

from api.app import create_app

app = create_app()


@app.get("/boom")
def boom() -> None:
    raise RuntimeError("secret internal detail")
