"""Ray Tune searches over the attention variants' parameters (`heat-pipeline tune`): the search
space and scheduler (`space`), one trial (`trial`), the driver's trial bookkeeping (`callbacks`)
and the run of a search config (`runner`). The config side is `pipeline.config.tune`."""
