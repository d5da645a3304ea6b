"""Benchmarks that print ratios measured side by side in one run (`python -m bench.NAME`).

Both sides of every comparison run with OpenMP's passive wait policy, as tunetrack's own
processes do (see `tunetrack.models`): set here, before any benchmark imports torch.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
