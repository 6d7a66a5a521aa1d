"""Several Ollama nodes behind one gateway (SPEC §4.10): the nodes and their state
(:mod:`.node`), what each has loaded (:mod:`.residency`), requests in flight per node
shared by replicas (:mod:`.inflight`), and the fleet that routes (:mod:`.fleet`, by the
rule in :mod:`nz_core.routing`)."""
