"""Studies: the only code that takes a `Suite`; one module per notebook.

`suite` (the run: profile, paths, cached backbones, heads, embeddings, TVE pre-training and
`Suite.make_explainer`), `transfer` (01/02), `fidelity` and `fastshap` (03), `ablations` and
`scaling` (03b), `throughput` and `throughput_runs` (04), `ltx` (05), `xvec` and `xvec_eval` (06),
`explorer` (08), `yourdata` (09), `distributed` (TVE pre-training under torchrun).
"""
