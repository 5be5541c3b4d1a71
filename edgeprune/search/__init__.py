"""Lottery-ticket search: IMP with rewinding, Early-Bird, Early-Time, and baselines.

`edgeprune.config.SearchConfig` says *what* a search is; `stage.search` runs it against the
artifact store; `methods` holds one entry per method. The mechanics (round schedule, stop rule,
timestep scoring) are pure functions in their own modules so they can be tested on constructed
cases.
"""
