"""kNN-LM over any Hugging Face causal LM, datastore building, perplexity, generation and RAG answers.

Nothing heavy is imported here: torch and transformers load only when a function needs them.
"""
