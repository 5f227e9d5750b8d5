"""The web page: collections, search, ask, the kNN-LM explorer, generation and index jobs in a browser.

Served by the MCP HTTP server itself (`knnrag serve --transport http`, `knnrag ui`): the same process,
the same loaded store and models (ServerState), the same Host/Origin checks and bearer token.
One static page with plain JavaScript and CSS (package data, no build step, nothing from outside).
"""
