"""The synthetic data generator: its raw inputs (`inputs.py`) and the passages composed from them (`passages.py`)."""
