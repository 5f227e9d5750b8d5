"""PDF, Word, PowerPoint and notebook files as text with structure, parsed out of process.

Each converter turns a file's bytes into one plain dict (see layout.py): the extracted text that
chunk offsets refer to, its blocks (headings, paragraphs, code), and the positions where its
pages, slides or cells start. PDF and office files are parsed in a sandboxed worker process
(sandbox.py, worker.py) with a time and memory limit; notebooks are JSON and parse in process.
"""
