"""Load shapes, one per file: ``-f loadtest/locustfile.py,loadtest/shapes/<name>.py``.

Nothing is imported here on purpose: Locust uses the first LoadTestShape subclass it finds in
the files given with ``-f``, so each file must bring exactly one.
"""
