"""The paper's comparison on seeds, with baselines and controls: `make demo-compare`, launch/compare.py.

    protocol = Protocol.read("recipes/compare/protocol.yaml")     # methods, seeds, datasets, criteria
    run_protocol(protocol, {"nsd": "shards/nsd", "hcp": "shards/hcp"}, "out/compare", jobs=2)

OUT/<dataset>/<method>/s<seed>/ is one training run (OUT/.../s<seed>/<subject>/ for one-model-per-subject
methods) with eval.json, the test metrics of its validation-selected best/ export, and reliance.json for
methods that ask for the token-reliance check; OUT/<dataset>/ridge/ and OUT/<dataset>/chance/ hold the
baselines' eval.json; OUT/protocol.json the protocol as run. Reruns skip what has its eval.json.
"""

from mused_fm.compare.protocol import Criterion, Method, Protocol, Run
from mused_fm.compare.runner import run_protocol

__all__ = ["Criterion", "Method", "Protocol", "Run", "run_protocol"]
