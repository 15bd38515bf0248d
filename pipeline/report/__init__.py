"""`heat-pipeline report`: the HEAT paper's tables and claims from the tracked MLflow runs.

It reads the finished child runs of a store (`collect`), takes each variant's best shot per
data set by validation loss (`analysis`), sets them beside the paper's published figures
(`paper`, `tables`), tests each of the paper's claims with a 95% interval from a bootstrap over
seeds or a paired bootstrap over test examples (`stats`), plots searches and quality against
cost (`plots`), writes report.md, a CSV per table and the plots (`build`) and logs them as a
run of experiment `heat-reports` (`publish`). `cli` is the command line
(`add_arguments`, `run`; also `python -m pipeline.report`).

Importing the package imports nothing heavy; the modules import MLflow, sacrebleu and
matplotlib themselves.
"""
