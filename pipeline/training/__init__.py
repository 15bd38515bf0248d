"""The worker side of the train stage: DeepSpeed engine, training loop, checkpoints, rank-0 logs.

`pipeline.stages.train` holds the configs and the driver (`train_and_evaluate`); everything here
runs inside Ray Train workers.
"""
