"""Models brought from elsewhere, rebuilt as edgeprune "sequential" models (a layer list of
edgeprune.layers) so every later stage runs without the user's code.

- usercode.py  load a user's definition (FILE.py:FUNCTION) and weights safely
- norse.py     a Norse SequentialState / nn.Sequential -> layer list, and the user's own run
- stage.py     the import stage: rebuild, prove equal to the user's module, store model.pt
"""
