"""The multi-scale layer: a pyramid's contexts (``context``), level geometry (``levels``), Pyramidal Flow Matching's
stages (``flow``) and the layouts that put them together (``layouts``). The top of the math: it may use everything
below, nothing below uses it."""
