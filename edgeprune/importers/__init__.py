"""Models brought from elsewhere, rebuilt as edgeprune "sequential" models (a layer list of
edgeprune.layers) so every later stage runs without the user's code.

- usercode.py  load a user's definition (FILE.py:FUNCTION) and weights safely
- code.py      a Python model (nn.Sequential / Norse SequentialState) -> layer list, and the
               user's module run the way its framework runs it; one table per framework:
- norse.py     Norse cells (LIFBoxCell, LIFCell, LICell, LIBoxCell)
- snntorch.py  snnTorch neurons (Leaky, Synaptic)
- nirfile.py   a NIR file read as data -> layer list (dt, conventions, shapes inferred)
- import_stage.py the import stage: rebuild, prove equal / measure fidelity, store model.pt
"""
