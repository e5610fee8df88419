"""Helpers of the test suite (not tests, and not part of the package): synthetic slides and
stores, tiny training set-ups, the windows of in-memory arrays (`windows.py`), and
`slide_rank_process.py`, the script that test_slide.py runs as one rank of a multi-process slide
job."""
