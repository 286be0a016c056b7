"""`relsft ui`: a web page over a served model, and the small backend the page talks to.

    server.py          the backend (FastAPI on uvicorn): holds the API key, calls the vLLM server
                       with relsft's own clients, streams answers and graph updates to the page
    static/            the page (index.html, app.js, style.css) and vendor/, the graph library
                       (cytoscape.js), copied from ui/node_modules at build time (make setup)
"""
