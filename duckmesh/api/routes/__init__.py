"""The API's routes, one Quart blueprint per resource (SPEC §4).

Every route is thin: parse the request (``api.bodies``), call a service,
shape the response. ``api.app.create_app`` registers these blueprints.
"""
