"""Data tracing: the statistical test that tells a data owner whether a model was trained on her marked data
(Radioactive data, Sablayrolles 2020). The marking itself is a data manipulation, registered with the attacks
(``attacks/radioactive.py``), so it runs through the same pipeline (crafted, purified, measured)."""

from poisonlab.tracing.test import TraceResult, align, combined_pvalue, cosine_pvalue, trace

__all__ = ["TraceResult", "align", "combined_pvalue", "cosine_pvalue", "trace"]
