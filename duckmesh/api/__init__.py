"""The HTTP API: the Quart-Trio app (``app``), shared HTTP plumbing (``http``)
and the OpenAPI document (``openapi.json``). May import every service module;
nothing imports it but the server."""
