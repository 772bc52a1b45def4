"""Two concurrency rules every layer shares: compute once per key, import heavy packages once.

Nothing here knows the demo: ``fl_training``, ``fhe_model``, ``story`` and ``ui`` all
import it, and it imports none of them.
"""
