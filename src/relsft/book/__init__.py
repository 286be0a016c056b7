"""`relsft extract-book`: a whole novel through the served model, merged into one character graph.

    split.py    chapters -> sentences -> passages that fit the model (offsets kept)
    extract.py  passages -> answers: concurrent requests, retries, a resumable answer cache
    graph.py    answers -> one graph (nodes, edges with evidence, conflicts) and its JSON/GraphML/CSV
"""
