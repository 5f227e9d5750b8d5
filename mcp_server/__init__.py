"""MCP server exposing the document store and kNN-LM to LLM clients (stdio and streamable HTTP)."""
