"""The aggregator's REST API: settings, credentials, dependencies and routes.

Build the application with :func:`aggregator.api.app.create_app`.
"""
