"""The deterministic simulator of issue 29: a seeded fake cluster (:mod:`.world`, drawn by
:mod:`.scenario`) drives the scheduling core, the invariants (:mod:`.invariants`) are checked
after every event, and :mod:`.breaks` holds cores broken on purpose. Replay a seed with
``python -m tests.sim 1234`` or ``SIM_SEED=1234 pytest tests/test_sim.py -k replay -s``."""
