"""The ceiling for ``make bench``: a bare Flask app answering ``{"hello": "world"}``.

bench/run.py serves it with the same gunicorn settings (workers, threads, worker class,
no access log) as polymicro, so every read figure can be put next to what Flask plus
gunicorn can do at all on this machine.
"""

from flask import Flask

app = Flask(__name__)


@app.get("/")
def hello():
    return {"hello": "world"}
