"""Lottery-ticket search: IMP with rewinding, Early-Bird, Early-Time, and baselines.

`edgeprune.config.SearchConfig` says *what* a search is (each method's own settings nested in
it); `methods` is the registry of method names and where each is implemented (`imp`,
`earlybird`, `branches`; `earlytime` picks the T' of the et-* variants); `run` holds what a
method is given and returns; `stage.search` checks a search before any work, runs it against
the artifact store and stores the result. Masks are ranked by the criteria of
edgeprune/criteria.py.
"""
