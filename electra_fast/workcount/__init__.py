"""``electra-fast inspect``: per (kernel, pass, shape) the work each launch does, counted in the Triton interpreter,
beside the least work the op needs, the AOT compile figures for sm_90a and a roofline lower bound (a model)
(docs/design.md §7.3).

* ``problems``: ELECTRA's training shapes, each op's passes and the least work each pass needs.
* ``runs``: the launches at those shapes on a scaled-down grid with a GPU's geometry, counted
  (``electra_fast.sanitizer``) and extrapolated exactly to the real grid.
* ``model``: the AOT compile figures of the configurations counted, the occupancy and roofline models.
* ``report``: the records, the table and the command's arguments.
"""
